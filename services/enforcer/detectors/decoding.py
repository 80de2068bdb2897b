"""Finding and decoding encoded payloads in text (base64, base64url, hex, percent
escapes, `\\uXXXX`-style escapes, HTML numeric entities, and the ASCII that invisible
Unicode tag characters spell), for `textnorm.normalize`, which screens what they decode
to like the text itself; and rewrites of the whole text that undo letter-level tricks
(letters spaced out, leetspeak, ROT13 of the whole text or of stretches inside English),
screened the same way.

Every search is linear in the text and every decode is bounded by a shared `Budget`
(bytes and count): a hostile wall of candidate tokens costs its length, not more.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import unquote

from services.enforcer.detectors.tricks import Signal

#: Upper bound on payloads per call, whatever their size (many tiny tokens are work too).
MAX_PAYLOADS = 64
MIN_BASE64_CHARS = 16
MIN_HEX_DIGITS = 16


_B64_CHARS = "A-Za-z0-9+/_-"
# The reference definition of a candidate token; `_b64_candidates` finds the same spans faster.
_B64_TOKEN_RE = re.compile(f"(?<![{_B64_CHARS}])[{_B64_CHARS}]{{{MIN_BASE64_CHARS},}}={{0,2}}(?![={_B64_CHARS}])")
_HEX_RE = re.compile(r"(?:0[xX])?([0-9A-Fa-f]+)")
_PCT_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_ESC_RE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|x([0-9A-Fa-f]{2})|u\{([0-9A-Fa-f]{1,6})\})")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_HTML_NUM_RE = re.compile(r"&#(?:[xX][0-9A-Fa-f]{1,6}|\d{1,7});")
_NON_SPACE_RUN = re.compile(r"\S*")
#: How far an escape run is widened to the token around it, each side. Ordinary tokens
#: (a URL, a word with an escape in it) are far shorter; a hostile one-token wall of
#: text must not make every escape region (and its decoded payload) as long as itself.
_WIDEN_MAX = 256


class Budget:
    """What is left to decode in one `normalize` call (all depths together)."""

    __slots__ = ("bytes_left", "payloads_left", "hit")

    def __init__(self, max_bytes: int) -> None:
        self.bytes_left = max_bytes
        self.payloads_left = MAX_PAYLOADS
        self.hit = False


def _plausible_text(s: str) -> bool:
    """Decoded bytes are screened only if they look like text: printable (tab/newline
    allowed), no NUL, and mostly letters, digits, punctuation and spaces. Random bytes
    (a path, an identifier or a hash read as base64) almost never pass."""
    if not s or "\x00" in s:
        return False
    if not s.isprintable():
        bad = sum(1 for ch in s if not ch.isprintable() and ch not in "\t\n\r")
        if bad * 50 > len(s):
            return False
    if s.isascii():
        return True
    # Mostly ASCII or letters: UTF-8 that happens to decode from junk is mostly symbols.
    good = sum(1 for ch in s if ch.isascii() or ch.isalpha() or ch.isspace())
    return good * 10 >= len(s) * 9


def _utf8(data: bytes, truncated: bool) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # A token cut at the budget may end inside a multi-byte character.
        if truncated and e.start >= len(data) - 3:
            try:
                return data[: e.start].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None


def _decode_token(token: str, budget: Budget) -> tuple[str, str] | None:
    """Decode one base64/base64url/hex candidate token; (kind, text) or None."""
    hexm = _HEX_RE.fullmatch(token)
    if hexm:
        digits = hexm.group(1)
        if len(digits) < MIN_HEX_DIGITS or len(digits) % 2:
            return None
        limit = budget.bytes_left * 2
        truncated = len(digits) > limit
        if truncated:
            budget.hit = True
            digits = digits[: limit - limit % 2]
        if not digits:
            return None
        try:
            data = binascii.unhexlify(digits)
        except (binascii.Error, ValueError):
            return None
        s = _utf8(data, truncated)
        return ("hex", s) if s is not None and _plausible_text(s) else None

    body = token.rstrip("=")
    pad = len(token) - len(body)
    if pad and len(token) % 4:
        return None  # padding present but the length is wrong
    if len(body) % 4 == 1:
        return None  # no valid base64 has this length
    urlsafe = "-" in body or "_" in body
    if urlsafe and ("+" in body or "/" in body):
        return None  # alphabets mixed: not base64
    limit = (budget.bytes_left // 3) * 4
    truncated = len(body) > limit
    if truncated:
        budget.hit = True
        body = body[:limit]
    if not body:
        return None
    body += "=" * (-len(body) % 4)
    try:
        data = base64.urlsafe_b64decode(body) if urlsafe else base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    s = _utf8(data, truncated)
    return ("base64", s) if s is not None and _plausible_text(s) else None


def _word_region(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen [start, end) to whole whitespace-delimited tokens, at most `_WIDEN_MAX`
    characters each way.

    Why not `re.search(r"\\S*$", text, 0, start)`: that retries the match at every
    position of the token before `start` and each try runs to the token's end, so a
    long token before an escape costs the square of its length (a 32,000-character
    prompt shaped "aaa… %41%42" took seconds). Reading the bounded stretch before
    `start` backwards is one linear scan of at most `_WIDEN_MAX` characters.
    """
    lo = max(0, start - _WIDEN_MAX)
    left = _NON_SPACE_RUN.match(text[lo:start][::-1])
    right = _NON_SPACE_RUN.match(text, end, min(len(text), end + _WIDEN_MAX))
    return start - (left.end() if left else 0), (right.end() if right else end)


def _decode_escapes(region: str) -> str:
    def repl(m: re.Match[str]) -> str:
        hexdigits = next(g for g in m.groups() if g is not None)
        cp = int(hexdigits, 16)
        return chr(cp) if cp <= 0x10FFFF else m.group()

    s = _ESC_RE.sub(repl, region)
    # Re-pair UTF-16 surrogates written as two \\u escapes; lone ones stay as they are.
    return _SURROGATE_PAIR_RE.sub(
        lambda m: chr(0x10000 + ((ord(m.group()[0]) - 0xD800) << 10) + (ord(m.group()[1]) - 0xDC00)), s
    )


# Byte mask for finding base64/hex candidate tokens at C speed: alphabet -> "a",
# "=" -> "=", everything else (non-ASCII too, after encode(errors="replace")) -> " ".
_B64_MASK = bytes(
    0x61 if (chr(i).isascii() and chr(i).isalnum()) or chr(i) in "+/_-" else (0x3D if i == 0x3D else 0x20)
    for i in range(256)
)
_B64_RUN = b"a" * MIN_BASE64_CHARS
# The rest of a run and its padding, at C speed (a Python loop per byte of a 256 KB
# base64 wall costs tens of milliseconds).
_MASK_RUN = re.compile(rb"a*")
_MASK_PAD = re.compile(rb"=*")


def _b64_candidates(text: str) -> Iterator[tuple[int, int]]:
    """Spans of maximal runs of >= 16 base64/base64url/hex characters, with up to two
    "=" of padding, not glued to further "=" or alphabet characters — the same tokens
    `_B64_TOKEN_RE` matches, found with bytes.find instead of a regex walk."""
    if len(text) < MIN_BASE64_CHARS:
        return
    mask = text.encode("ascii", "replace").translate(_B64_MASK)  # one byte per character
    n = len(mask)
    pos = 0
    while (i := mask.find(_B64_RUN, pos)) >= 0:
        # The token starts after the last separator before `i`, looked for back to
        # `pos` only (where the previous candidate ended, after its separator or
        # padding): looking back to 0 cost the whole prefix per candidate, quadratic on
        # a wall of "AAAA…A===" tokens with no space in it.
        start = max(pos, mask.rfind(b" ", pos, i) + 1, mask.rfind(b"=", pos, i) + 1)
        end = _MASK_RUN.match(mask, i + MIN_BASE64_CHARS).end()
        pad = _MASK_PAD.match(mask, end).end()
        pos = pad
        if pad - end > 2 or (pad < n and mask[pad] == 0x61):
            continue  # "===" or "abc=def": not a base64 token
        yield start, pad


def find_payloads(text: str, budget: Budget) -> list[tuple[str, int, int, str]]:
    """Encoded payloads in `text`: (kind, start, end, decoded) with spans in `text`."""
    found: list[tuple[str, int, int, str]] = []
    for start, end in _b64_candidates(text):
        if budget.payloads_left <= 0 or budget.bytes_left <= 0:
            budget.hit = True
            break
        dec = _decode_token(text[start:end], budget)
        if dec is None:
            continue
        kind, s = dec
        budget.payloads_left -= 1
        budget.bytes_left -= len(s.encode("utf-8", "surrogatepass"))
        found.append((kind, start, end, s))
    for kind, gate, rx, min_count, decoder in (
        (Signal.PERCENT, "%", _PCT_RE, 2, lambda r: unquote(r, errors="strict")),
        (Signal.UNICODE_ESCAPE, "\\", _ESC_RE, 1, _decode_escapes),
        (Signal.HTML_ENTITY, "&#", _HTML_NUM_RE, 1, html.unescape),
    ):
        if gate not in text:
            continue
        if budget.payloads_left <= 0 or budget.bytes_left <= 0:
            break
        first = rx.search(text)
        if first is None:
            continue
        hits = rx.findall(text)
        if len(hits) < min_count:
            continue
        last_end = first.end()
        for last in rx.finditer(text, first.start()):
            last_end = last.end()
        start, end = _word_region(text, first.start(), last_end)
        region = text[start:end]
        if len(region) > budget.bytes_left:
            budget.hit = True
            region = region[: budget.bytes_left]
        try:
            s = decoder(region)
        except (UnicodeDecodeError, ValueError):
            continue
        if s == region or not s.strip():
            continue
        budget.payloads_left -= 1
        budget.bytes_left -= len(s.encode("utf-8", "surrogatepass"))
        found.append((kind, start, end, s))
    return found


_TAG_TEXT_RE = re.compile("[\U000e0020-\U000e007e]+")


def tag_payloads(original: str, budget: Budget) -> list[tuple[str, int, int, str]]:
    """Tag characters (U+E0020..E007E) mirror printable ASCII and render as nothing:
    "ASCII smuggling" hides instructions in them. Removing them is not enough; what
    they spell is screened as a payload."""
    found: list[tuple[str, int, int, str]] = []
    for m in _TAG_TEXT_RE.finditer(original):
        if budget.payloads_left <= 0 or budget.bytes_left <= 0:
            budget.hit = True
            break
        s = "".join(chr(ord(ch) - 0xE0000) for ch in m.group()[: budget.bytes_left])
        if not s.strip():
            continue
        budget.payloads_left -= 1
        budget.bytes_left -= len(s)
        found.append((Signal.TAG, m.start(), m.end(), s))
    return found


# --------------------------------------------------------------------------- rewrites
#
# Tricks that change letters rather than encode bytes: the text spaced out letter by
# letter, written in leetspeak, or ROT13'd. What they hide is a reading of the whole
# text, not a token inside it, so each is emitted (at most once per text searched) as
# the whole text rewritten: the classifier reads the trick undone, in its context (ROT13
# stretches inside English text are emitted alone, read back, one per line: the English
# around them is screened as the text itself, and would dilute them). Each
# is gated by a C-speed byte scan, so ordinary text costs a translate and a find; each
# rewrites only when the text clearly reads as the trick, and costs a few linear passes.

#: A run of at least this many single-character tokens is read as spaced-out letters.
MIN_SPACED_TOKENS = 6
#: Leetspeak: at least this many leet words, making up at least `LEET_SHARE` of the words.
MIN_LEET_WORDS = 3
LEET_SHARE = 0.25
#: ROT13: its rotation has at least this many different common English words, at least
#: twice as many in all as the text itself, making up at least `ROT13_SHARE` of the words.
MIN_ROT13_HITS = 2
ROT13_SHARE = 0.15

# Whitespace -> " ", anything else -> "x" (after encode(errors="replace")).
_SPACE_MASK = bytes(0x20 if chr(i) in " \t\n\r\x0b\x0c" else 0x78 for i in range(256))
# A run of single-character tokens, separated by whitespace. Deterministic: a token is
# one non-space character, a separator only whitespace, so a failed start costs at
# most MIN_SPACED_TOKENS tokens and a match consumes its run.
_SPACED_RUN_RE = re.compile(rf"(?<!\S)\S(?:\s+\S(?!\S)){{{MIN_SPACED_TOKENS - 1},}}")
_SEPARATOR_RE = re.compile(r"\s+")


def _rejoin(run: str) -> str | None:
    """ "h o w  t o" -> "how to": a single space inside a word, two or more (or a line
    break) between words; with no wider gap the letters are joined into one word.
    None when the run holds too few letters to be spaced-out writing."""
    tokens = run.split()
    letters = sum(1 for t in tokens if t.isalpha())
    if letters < MIN_SPACED_TOKENS - 1 or letters * 3 < len(tokens) * 2:
        return None  # "- - - - - -", "1 2 3 4 5 6", "x = a * b + c": not spaced-out words
    seps = _SEPARATOR_RE.findall(run)
    if not any(len(s) > 1 or s != " " for s in seps):
        return "".join(tokens)
    out = [tokens[0]]
    for sep, tok in zip(seps, tokens[1:], strict=True):
        out.append(tok if sep == " " else " " + tok)
    return "".join(out)


def letter_spacing(text: str) -> str | None:
    """`text` with each run of >= MIN_SPACED_TOKENS spaced-out characters rejoined
    ("tell me h o w  t o  m a k e  i t" -> "tell me how to make it"), or None if there
    is none. A spaced-out word shows as " x x " in a whitespace mask: found with
    bytes.find before any regex runs."""
    if text.encode("ascii", "replace").translate(_SPACE_MASK).find(b" x x ") < 0:
        return None
    changed = False

    def repl(m: re.Match[str]) -> str:
        nonlocal changed
        joined = _rejoin(m.group())
        if joined is None:
            return m.group()
        changed = True
        return joined

    out = _SPACED_RUN_RE.sub(repl, text)
    return out if changed else None


_LEET_TABLE = str.maketrans({"4": "a", "@": "a", "3": "e", "1": "i", "0": "o", "5": "s", "$": "s", "7": "t"})
_LEET_CHARS = frozenset("4@3105$7")
# ASCII letters -> "a", leet characters -> "1", other digits -> "9", the rest -> " ".
_LEET_MASK = (
    bytes(
        0x61 if chr(i).isalpha() else 0x31 if chr(i) in _LEET_CHARS else 0x39 if chr(i).isdigit() else 0x20
        for i in range(128)
    )
    + b" " * 128
)
_LEET_TOKEN_RE = re.compile(r"[A-Za-z0-9@$]+")
# Tokens for counting: letters, digits, "@", "$" and "." kept, the rest -> " ". A dot
# keeps a domain, an address, a version or a file name in one token ("a@b.co", "v1.2.3",
# "m5.large"), which is then no leet word.
_LEET_COUNT_TOKENS = bytes(i if chr(i).isalnum() or chr(i) in "@$." else 0x20 for i in range(128)) + b" " * 128
_HEX_TOKEN_RE = re.compile(rb"(?:0[xX])?[0-9A-Fa-f]+")
_MAX_LEET_WORD = 24


def _leet_word(word: bytes) -> bool:
    """A word written in leetspeak: letters and leet characters alternating at least
    twice ("b0mb", "m4k3", "7h3"). Not the shapes of ordinary technical words: one
    letter block and one digit block ("sha256", "ipv4", "h264", "x1", "3d"), a dimension
    ("4x4"), hexadecimal ("3f5a1e", "0x1F"), long tokens (hashes, base64)."""
    mask = word.translate(_LEET_MASK)
    if b"1" not in mask or len(word) > _MAX_LEET_WORD:
        return False
    letters = mask.count(b"a")
    if not letters or (letters == 1 and word.lower().count(b"x")) or _HEX_TOKEN_RE.fullmatch(word):
        return False
    flat = mask.replace(b"9", b"1")
    return flat.count(b"a1") + flat.count(b"1a") >= 2


def _deleet_token(m: re.Match[str]) -> str:
    word = m.group()
    has_letter = any(c.isalpha() for c in word)
    if has_letter or (len(word) <= 4 and all(c in _LEET_CHARS for c in word)):
        return word.translate(_LEET_TABLE)
    return word


def leetspeak(text: str) -> str | None:
    """`text` with its words de-leeted ("h0w 70 m4k3 4 b0mb" -> "how to make a bomb")
    when at least MIN_LEET_WORDS words, and LEET_SHARE of the words, are leetspeak;
    else None. Gated in a byte mask: a letter next to a leet character somewhere, and
    letter/leet alternations enough for MIN_LEET_WORDS words."""
    raw = text.encode("ascii", "replace")
    mask = raw.translate(_LEET_MASK)
    if mask.find(b"a1") < 0 and mask.find(b"1a") < 0:
        return None
    flat = mask.replace(b"9", b"1")
    if flat.count(b"a1") + flat.count(b"1a") < 2 * MIN_LEET_WORDS:
        return None
    words = leet = 0
    for token in raw.translate(_LEET_COUNT_TOKENS).split():
        if token.isdigit():
            continue
        words += 1
        word = token.strip(b".")
        if b"." not in word:
            leet += _leet_word(word)
    if leet < MIN_LEET_WORDS or leet < LEET_SHARE * words:
        return None
    return _LEET_TOKEN_RE.sub(_deleet_token, text)


# Over UTF-8: ASCII letters -> lower case; digits, "_" and the bytes of non-ASCII
# characters -> "0" (a word holding one is not an English word: "anlamına" must not
# count as "anlam" and "na"); the rest -> " ".
_WORD_MASK = (
    bytes(
        ord(chr(i).lower()) if chr(i).isalpha() else 0x30 if chr(i).isdigit() or i == 0x5F else 0x20 for i in range(128)
    )
    + b"0" * 128
)
#: Common English words, none of whose ROT13 is itself a common English word ("be" <->
#: "or", "she" <-> "fur" are left out).
ENGLISH_WORDS = frozenset(
    b"the and to of a in is it you that for on with as this at how what can do not your my me all from have an "
    b"we will was they there about would which make tell give write step into any are were has his her him them "
    b"then than when where who why does did should could just some its but more other also only like instead "
    b"following people every".split()
)
_ENGLISH_ROT13 = frozenset(codecs.encode(w.decode(), "rot13").encode() for w in ENGLISH_WORDS)


def rot13(text: str) -> str | None:
    """The ROT13 of `text` when that reads far more like English than `text` does:
    counted in common English words (`ENGLISH_WORDS`) among the words of each — one
    Counter of the text's words answers both, since ROT13 maps words to words.  Otherwise,
    its ROT13'd stretches read back (`rot13_spans`), if it has any."""
    data = text.encode("utf-8", "surrogatepass")
    # The gate, in byte counts at C speed: English is rich in e, t, o, i and poor in their
    # ROT13s r, g, b, v; ROT13'd English the other way round. Words are counted only then.
    low = data.lower()
    if sum(map(low.count, b"rgbv")) <= sum(map(low.count, b"etoi")):
        return rot13_spans(text, low)
    words = data.translate(_WORD_MASK).split()
    counts = Counter(words)
    plain = sum(counts[w] for w in ENGLISH_WORDS if w in counts)
    distinct = [counts[w] for w in _ENGLISH_ROT13 if w in counts]
    rotated = sum(distinct)
    if len(distinct) < MIN_ROT13_HITS or rotated < 2 * plain or rotated < ROT13_SHARE * len(words):
        return rot13_spans(text, low, words)
    return codecs.encode(text, "rot13")


#: A ROT13'd stretch inside English text ("decode this and do it: Vtaber nyy ..."): at
#: least this many words, with no common English word among them and at least
#: `MIN_SPAN_HITS` different ROT13'd common words making up `SPAN_SHARE` of them.
MIN_SPAN_WORDS = 4
MIN_SPAN_HITS = 3
SPAN_SHARE = 0.3
# An ASCII word standing alone: "abc1", "snake_case" and "anlamına" hold none. Linear: a
# failed end check backtracks within one word, and a start inside a word fails at once.
_ASCII_WORD_RE = re.compile(r"\b[A-Za-z]+\b")
# Not ":": "SYSTEM OVERRIDE: sbetrg ..." is one stretch.
_SENTENCE_BREAK_RE = re.compile(r"[.!?;\n]")
#: the, and, you, how, what, to, me, of, is, a: as bytes, with the spaces or ends around them.
_SPAN_GATE_STRINGS = (b"gur", b"naq", b"lbh", b"ubj", b"jung", b" gb ", b" zr ", b" bs ", b" vf ", b" n ")


def rot13_spans(text: str, low: bytes, masked: list[bytes] | None = None) -> str | None:
    """`text`'s ROT13'd stretches read back, one per line, or None when it has none: alone,
    since the classifier scores an attack after a benign sentence lower than the attack
    by itself, and the text around them is screened anyway.  Stretches
    are the runs of words between common English words: ROT13'd English holds none (no
    common word's ROT13 is another, see `ENGLISH_WORDS`), English holds one every few
    words.  A stretch is trimmed to the sentences that hold its ROT13'd words ("Decode
    carefully. Vtaber nyy ..." starts at "Vtaber").  One pass over the words, behind a
    C-speed gate.  `low` is the text's UTF-8 lower-cased, `masked` its masked words when
    `rot13` has split them already."""
    # The gates, at C speed: two of the commonest ROT13'd words' byte strings, then enough
    # different ROT13'd common words anywhere; only then a pass over the words in Python.
    if sum(map(low.count, _SPAN_GATE_STRINGS)) < 2:
        return None
    if masked is None:
        masked = low.translate(_WORD_MASK).split()
    if len(_ENGLISH_ROT13.intersection(masked)) < MIN_SPAN_HITS:
        return None
    spans: list[tuple[int, int]] = []
    start = end = prev_end = words = hit_count = 0
    hits: set[bytes] = set()
    open_sentence = False  # no sentence break since the stretch's last ROT13'd word

    def close() -> None:
        if words >= MIN_SPAN_WORDS and len(hits) >= MIN_SPAN_HITS and hit_count >= SPAN_SHARE * words:
            spans.append((start, end))

    for m in _ASCII_WORD_RE.finditer(text):
        w = m.group().lower().encode()
        broken = _SENTENCE_BREAK_RE.search(text, prev_end, m.start()) is not None
        prev_end = m.end()
        if w in ENGLISH_WORDS:
            close()
            words = hit_count = 0
            hits = set()
            continue
        if words == 0 or (broken and not hits):
            start, words = m.start(), 0  # before the first ROT13'd word: from its sentence on
        if w in _ENGLISH_ROT13:
            hits.add(w)
            hit_count += 1
            open_sentence = True
        elif broken:
            open_sentence = False
        if open_sentence or not hits:
            end = m.end()
            words += 1
    close()
    return "\n".join(codecs.encode(text[s:e], "rot13") for s, e in spans) or None


#: The rewrites, in the order they are tried (each within what the budget has left).
REWRITES: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    (Signal.LETTER_SPACING, letter_spacing),
    (Signal.LEETSPEAK, leetspeak),
    (Signal.ROT13, rot13),
)


def find_rewrites(text: str, budget: Budget) -> list[tuple[str, int, int, str]]:
    """The rewrites of `text` that apply: (kind, 0, len(text), rewritten). A text longer
    than the bytes left in `budget` is rewritten in its first part only (`hit`)."""
    found: list[tuple[str, int, int, str]] = []
    for kind, rewrite in REWRITES:
        if budget.payloads_left <= 0 or budget.bytes_left <= 0:
            budget.hit = True
            break
        source = text[: budget.bytes_left]
        s = rewrite(source)
        if s is None:
            continue
        if len(source) < len(text):
            budget.hit = True
        budget.payloads_left -= 1
        budget.bytes_left -= len(s.encode("utf-8", "surrogatepass"))
        found.append((kind, 0, len(text), s))
    return found
