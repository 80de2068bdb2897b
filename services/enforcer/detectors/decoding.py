"""Finding and decoding encoded payloads in text (base64, base64url, hex, percent
escapes, `\\uXXXX`-style escapes, HTML numeric entities, and the ASCII that invisible
Unicode tag characters spell), for `textnorm.normalize`, which screens what they decode
to like the text itself.

Every search is linear in the text and every decode is bounded by a shared `Budget`
(bytes and count): a hostile wall of candidate tokens costs its length, not more.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from collections.abc import Iterator
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
