"""Unicode normalisation that defeats evasion, run before every tier-0 detector and
before the ML classifier.

Why: a word filter, a PII recogniser or a classifier that reads raw text is beaten by
text a person reads the same way but the code does not: a zero-width space inside a
word, a Cyrillic "р" for a Latin "p", fullwidth or mathematical letters, letters
spaced out, or the whole thing base64- or hex-encoded. `normalize` undoes those, once
per request, and reports which tricks it saw (`signals`) so policy can act on the
trick itself.

Forms produced (see `Normalized`):

* `text`   NFKC, invisible characters removed, homoglyphs folded *inside words that
           look spoofed* (mixed script, or all-lookalike words in mostly-Latin text),
           whitespace runs collapsed. Case and genuine non-Latin text are kept, so this
           is what the classifier reads.
* `folded` `text` with every confusable folded to Latin, case folded, generic
           diacritics stripped and all whitespace as single spaces. Only for matching:
           blocklist terms go through the same function, so matching is symmetric.
* `payloads` / `decoded`  base64, base64url, hex, percent-encoded, `\\uXXXX` and HTML
           numeric-entity runs found in the text, and what invisible Unicode tag
           characters spell ("ASCII smuggling"), decoded and normalised themselves
           (recursively up to `max_depth`, within `max_decoded_bytes` in all), so that
           they are screened too; and rewrites of the whole text that undo letter-level
           tricks (letters spaced out, leetspeak, ROT13), when it clearly reads as one.
* `view`   the original text with only invisible characters removed and per-character
           NFKC applied, with an offset map back to the original. PII detectors scan
           it and report spans in the *original* text, so masking works on what the
           caller sent. The whitespace-collapsed `text` has no offset map: it is for
           matching and classification, never for masking.

Nothing here logs, and `repr()` of these objects shows lengths and signals only, never
content, so that they can't leak a prompt into a log line by accident.
"""

from __future__ import annotations

import json
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from services.enforcer.detectors.decoding import REWRITES, Budget, find_payloads, find_rewrites, tag_payloads
from services.enforcer.detectors.tricks import Signal

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MappedText",
    "Normalized",
    "Payload",
    "Signal",
    "fold_for_matching",
    "mapped_view",
    "non_ascii_runs",
    "normalize",
    "classifier_texts",
    "screening_texts",
    "warm_up",
]

#: Total bytes of decoded payload kept per call, all depths together.
DEFAULT_MAX_DECODED_BYTES = 64 * 1024
#: 1 = decode payloads found in the text; 2 = also payloads found inside those.
DEFAULT_MAX_DEPTH = 2


# --------------------------------------------------------------------------- invisibles

_ZERO_WIDTH_BMP = "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200d\u2060-\u2064\u3164\ufeff\uffa0"
_ZERO_WIDTH_CHARS = _ZERO_WIDTH_BMP + "\U0001d173-\U0001d17a"  # + musical invisible format controls
_BIDI_CHARS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_TAG_RANGE = "\U000e0000-\U000e007f"
_VS_RANGES = "\ufe00-\ufe0f\U000e0100-\U000e01ef\u180b-\u180d\u180f"
# C0 except \t \n \r and the whitespace-like \x0b \x0c; DEL; C1 except NEL (\x85).
_CONTROL_RANGES = "\x00-\x08\x0e-\x1f\x7f\x80-\x84\x86-\x9f"

_INVISIBLE_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (Signal.ZERO_WIDTH, re.compile(f"[{_ZERO_WIDTH_CHARS}]")),
    (Signal.BIDI, re.compile(f"[{_BIDI_CHARS}]")),
    (Signal.TAG, re.compile(f"[{_TAG_RANGE}]")),
    (Signal.VARIATION_SELECTOR, re.compile(f"[{_VS_RANGES}]")),
    (Signal.CONTROL, re.compile(f"[{_CONTROL_RANGES}]")),
)
_INVISIBLE_RE = re.compile(f"[{_ZERO_WIDTH_CHARS}{_BIDI_CHARS}{_TAG_RANGE}{_VS_RANGES}{_CONTROL_RANGES}]")
# The same without astral characters: a class with astral ranges is scanned ~10x slower.
_INVISIBLE_BMP_RE = re.compile(f"[{_ZERO_WIDTH_BMP}{_BIDI_CHARS}\ufe00-\ufe0f\u180b-\u180d\u180f{_CONTROL_RANGES}]")

# Whitespace: a single " " or "\n" stays; every other run becomes one "\n" if it holds a
# line break, else one " ". Only irregular runs reach the Python callback.
_WS_IRREGULAR_RE = re.compile(r"\s{2,}|[^\S \n]")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x85\u2028\u2029")

# Generic combining diacritics (what "zalgo" text and accents use); script-specific marks
# (Devanagari vowel signs...) are not in these blocks and are kept.
_DIACRITICS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_DIACRITIC_RE = re.compile(f"[{_DIACRITICS}]")
_ZALGO_RE = re.compile(f"[{_DIACRITICS}]{{3,}}")


# --------------------------------------------------------------------------- confusables


@dataclass(frozen=True, slots=True)
class _ConfusableTables:
    #: char -> ASCII letter/digit of the same case (used in `text`, where case is kept).
    cased: dict[int, str]
    #: char -> lower-case ASCII (used in `folded`).
    lower: dict[int, str]
    #: matches any BMP character in the tables (a bitmap class: fast).
    bmp_re: re.Pattern[str]

    def present(self, text: str) -> bool:
        """Does `text` hold any character these tables fold?"""
        if self.bmp_re.search(text):
            return True
        # Astral characters one by one (emoji are astral; a class of ~900 scattered
        # astral code points would cost ~300 ns a character over the whole text).
        return any(ord(m.group()) in self.cased for m in _ASTRAL_RE.finditer(text))


def _ranges_class(codepoints: list[int]) -> str:
    cps = sorted(codepoints)
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = re.escape(chr(cps[i])), re.escape(chr(cps[j]))
        parts.append(lo if i == j else f"{lo}-{hi}")
        i = j + 1
    return "[" + "".join(parts) + "]"


@lru_cache(maxsize=1)
def _confusables() -> _ConfusableTables:
    """Build char -> Latin tables from the Unicode confusables data (UTS #39
    confusables.txt, as shipped by the `confusable-homoglyphs` package).

    The data groups lookalikes around a prototype. We union the groups, keep only
    single characters, and map every non-ASCII letter or number of a group that holds
    an ASCII letter/digit to that ASCII character, choosing by the source's case and
    kind: 'Ι' (Greek capital iota) -> 'I', 'ӏ' -> 'l', '০' (Bengali zero) -> '0',
    'р' (Cyrillic er) -> 'p'. Symbols (∣, ⏽...) are left alone: they are not letters in
    words, and folding them would only add false matches.
    """
    with resources.files("confusable_homoglyphs").joinpath("confusables.json").open("rb") as f:
        data: dict[str, list[dict[str, str]]] = json.load(f)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for key, entries in data.items():
        k = key.replace("\u200e", "")
        if len(k) != 1:
            continue
        parent.setdefault(k, k)
        for entry in entries:
            c = entry["c"].replace("\u200e", "")
            if len(c) == 1:
                parent.setdefault(c, c)
                ra, rb = find(k), find(c)
                if ra != rb:
                    parent[ra] = rb
    groups: dict[str, list[str]] = {}
    for ch in parent:
        groups.setdefault(find(ch), []).append(ch)

    cased: dict[int, str] = {}
    for members in groups.values():
        ascii_targets = sorted(m for m in members if m.isascii() and m.isalnum())
        if not ascii_targets:
            continue
        for ch in members:
            if ch.isascii() or unicodedata.category(ch)[0] not in "LN":
                continue
            target = _pick_target(ch, ascii_targets)
            cased[ord(ch)] = target
    for ch, target in _EXTRA_LOOKALIKES.items():
        cased.setdefault(ord(ch), target)
    lower = {cp: t.lower() for cp, t in cased.items()}
    return _ConfusableTables(
        cased=cased,
        lower=lower,
        bmp_re=re.compile(_ranges_class([cp for cp in cased if cp < 0x10000])),
    )


_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


# Lookalikes used to dodge filters that confusables.txt maps to a non-Latin prototype
# (small capitals, kra, Cyrillic/Greek letters that read as Latin ones in lower case).
_EXTRA_LOOKALIKES: dict[str, str] = {
    "к": "k", "м": "m", "т": "t", "н": "h", "в": "b", "ь": "b", "п": "n", "ш": "w",
    "κ": "k", "τ": "t", "η": "n", "ε": "e", "χ": "x", "ω": "w", "μ": "u", "β": "B",
    "ĸ": "k", "ı": "i", "ȷ": "j", "ɩ": "i",
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ғ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s",
    "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
}  # fmt: skip


# Lookalikes that NFKC would turn into a letter that no longer looks Latin (lunate
# sigma "ϲ" -> final sigma "ς"): folded before NFKC.
_PRE_NFKC = {ord("ϲ"): "c", ord("Ϲ"): "C", ord("ͺ"): "i"}
_PRE_NFKC_RE = re.compile("[ϲϹͺ]")


def _pick_target(ch: str, targets: list[str]) -> str:
    digits = [t for t in targets if t.isdigit()]
    letters = [t for t in targets if t.isalpha()]
    if unicodedata.category(ch).startswith("N") and digits:
        return digits[0]
    if not letters:
        return digits[0]
    if ch.isupper():
        pick = next((t for t in letters if t.isupper()), letters[0])
        return pick.upper()
    if ch.islower():
        pick = next((t for t in letters if t.islower()), letters[0])
        return pick.lower()
    # Caseless letters (Cherokee, Lisu, Tifinagh...): lower case if there is one.
    return next((t for t in letters if t.islower()), letters[0])


# --------------------------------------------------------------------------- view (offsets)


@dataclass(frozen=True, slots=True, repr=False)
class MappedText:
    """A transformed copy of a text that can map spans back to the original.

    `segments` holds (view_start, view_end, orig_start, orig_end) for each original
    character that changed (removed, or replaced by its NFKC form); between segments the
    two texts are identical, so mapping is a bisect plus an offset.
    """

    text: str
    original_length: int
    segments: tuple[tuple[int, int, int, int], ...] = ()
    _view_starts: tuple[int, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return f"MappedText(len={len(self.text)}, original_length={self.original_length}, changed={len(self.segments)})"

    @property
    def identity(self) -> bool:
        return not self.segments

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map the view span [start, end) to the smallest original span that covers it.
        A span edge inside a replaced character snaps outwards to cover all of it;
        removed (invisible) characters inside the span are covered too."""
        if not self.segments:
            return start, end
        return self._orig_start(start), self._orig_end(end)

    def _orig_start(self, p: int) -> int:
        i = bisect_right(self._view_starts, p) - 1
        if i < 0:
            return p
        vs, ve, os_, oe = self.segments[i]
        if p < ve:
            return os_
        return oe + (p - ve)

    def _orig_end(self, p: int) -> int:
        i = bisect_left(self._view_starts, p) - 1
        if i < 0:
            return p
        vs, ve, os_, oe = self.segments[i]
        if p <= ve:
            return oe
        return oe + (p - ve)


@lru_cache(maxsize=1)
def _view_change_re() -> re.Pattern[str]:
    """Characters that can change in the PII view: controls, invisibles, BMP characters
    whose NFKC form differs, and every astral character (checked one by one: an astral
    range list makes a regex class slow, and astral characters are few in real text).
    Built once (~10 ms): scanning with it skips the characters that stay as they are."""
    cps = [
        c
        for c in range(0x80, 0x10000)
        if not 0xD800 <= c < 0xE000 and (unicodedata.normalize("NFKC", chr(c)) != chr(c) or _INVISIBLE_RE.match(chr(c)))
    ]
    cps += [c for c in range(0x80) if chr(c) not in "\t\n\r" and not 0x20 <= c < 0x7F]
    return re.compile(_ranges_class(cps)[:-1] + "\U00010000-\U0010ffff]")


@lru_cache(maxsize=4096)
def _char_view(ch: str) -> str:
    if _INVISIBLE_RE.match(ch):
        return ""
    return unicodedata.normalize("NFKC", ch)


def mapped_view(text: str) -> MappedText:
    """The PII view of `text`: invisible characters removed and each character replaced
    by its own NFKC form (fullwidth "４" -> "4"), with an offset map to `text`.

    Per-character NFKC keeps the offset map exact; it differs from whole-string NFKC
    only in composing combining sequences, which no PII pattern depends on. Most texts
    need no work at all: printable ASCII, or already-NFKC text with no invisibles.
    """
    n = len(text)
    if text.isascii():
        if not _has_invisibles(text):
            return MappedText(text, n)
    elif unicodedata.is_normalized("NFKC", text) and not _has_invisibles_non_ascii(text):
        return MappedText(text, n)
    pieces: list[str] = []
    segments: list[tuple[int, int, int, int]] = []
    vpos = 0  # length of the view built so far
    last = 0  # original index up to which text was copied
    for m in _view_change_re().finditer(text):
        i = m.start()
        ch = text[i]
        repl = _char_view(ch)
        if repl == ch:
            continue
        if i > last:
            pieces.append(text[last:i])
            vpos += i - last
        pieces.append(repl)
        segments.append((vpos, vpos + len(repl), i, i + 1))
        vpos += len(repl)
        last = i + 1
    if not segments:
        return MappedText(text, n)
    pieces.append(text[last:])
    return MappedText("".join(pieces), n, tuple(segments), tuple(s[0] for s in segments))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True, repr=False)
class Payload:
    """One decoded payload. `start`/`end` is the span, in the original text, of the
    top-level encoded token it came from (nested payloads share their outer token's
    span), so a detector that finds something inside can mask the whole token."""

    kind: str
    start: int
    end: int
    text: str
    folded: str
    depth: int

    def __repr__(self) -> str:
        return f"Payload(kind={self.kind!r}, span=({self.start}, {self.end}), len={len(self.text)}, depth={self.depth})"

    @property
    def rewrite(self) -> bool:
        """A reading of the whole text it came from (letters spaced out, leetspeak,
        ROT13) rather than a decoded token: its span is that whole text, so it is for
        word filters and the classifier, not for locating PII."""
        return self.kind in _REWRITE_KINDS


_REWRITE_KINDS = frozenset(kind for kind, _fn in REWRITES)


@dataclass(frozen=True, slots=True, repr=False)
class Normalized:
    text: str
    folded: str
    decoded: tuple[str, ...]
    signals: frozenset[str]
    payloads: tuple[Payload, ...] = ()
    view: MappedText | None = None

    def __repr__(self) -> str:
        return f"Normalized(len={len(self.text)}, decoded={len(self.decoded)}, signals={sorted(self.signals)})"


def warm_up() -> None:
    """Build the lookalike tables now (~50 ms, once per process) rather than on the
    first request that needs them."""
    _confusables()
    _view_change_re()


def screening_texts(n: Normalized) -> list[str]:
    """Every string a word filter scans: the text and each payload, case-folded."""
    return [n.folded, *(p.folded for p in n.payloads)]


def classifier_texts(n: Normalized) -> list[str]:
    """The texts the ML classifier screens for `n`, the verdict being the worst over
    them: the normalised text first, then each payload's text (decoded tokens and
    rewrites), empty and repeated ones left out. Text with no payloads (nearly all
    traffic) is one text. The enforcer (prompts and completion windows) and the model
    build's evaluation both call this, so what is evaluated is what is served."""
    texts = [n.text]
    if n.payloads:
        seen = {n.text}
        for p in n.payloads:
            if p.text.strip() and p.text not in seen:
                seen.add(p.text)
                texts.append(p.text)
    return texts


# --------------------------------------------------------------------------- pipeline


# Bytes that are fine in ASCII text: printable ASCII plus \t \n \r and the whitespace
# \x0b \x0c. Deleting them from an ASCII text leaves its control characters.
_ASCII_OK = bytes([9, 10, 11, 12, 13, *range(0x20, 0x7F)])


def _has_invisibles(text: str) -> bool:
    """Any character `normalize` removes? Regex scans cost ~15 ns a character, so
    ASCII text (most prompts) is checked with a C-speed bytes.translate instead."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _ASCII_OK))
    if _INVISIBLE_BMP_RE.search(text):
        return True
    return any(_INVISIBLE_RE.match(m.group()) for m in _ASTRAL_RE.finditer(text))


def _has_invisibles_non_ascii(text: str) -> bool:
    """`_has_invisibles` for non-ASCII text, checking the non-ASCII runs only when
    they are few."""
    if text.encode("ascii", "ignore").translate(None, _ASCII_OK):
        return True
    return _has_invisibles(_islands(text))


def _signals_of_invisibles(text: str, signals: set[str]) -> None:
    for name, rx in _INVISIBLE_CLASSES:
        if rx.search(text):
            signals.add(name)


_IRREGULAR_ASCII_WS = ("  ", "\n\n", " \n", "\n ", "\t", "\r", "\x0b", "\x0c")


# Whitespace that NFKC leaves as it is (it turns the other Unicode spaces into " ").
_OTHER_WS = ("\x85", "\u1680", "\u2028", "\u2029")


def _collapse_ws(text: str, *, after_nfkc: bool = False) -> str:
    """Collapse whitespace runs. `after_nfkc`: the text is NFKC already, so the only
    non-ASCII whitespace left in it is `_OTHER_WS`."""
    if (text.isascii() or (after_nfkc and not any(w in text for w in _OTHER_WS))) and not any(
        w in text for w in _IRREGULAR_ASCII_WS
    ):
        return text.strip()  # only single spaces and newlines: nothing to collapse

    def repl(m: re.Match[str]) -> str:
        return "\n" if _LINE_BREAKS.intersection(m.group()) else " "

    return _WS_IRREGULAR_RE.sub(repl, text).strip()


# ASCII letters -> "a", "?" (what encode(errors="replace") makes of non-ASCII) -> "?",
# everything else -> " ". One byte per character, so positions carry over.
_LETTER_MASK = bytes(
    0x61 if chr(i).isascii() and chr(i).isalpha() else (0x3F if i == 0x3F else 0x20) for i in range(256)
)
_NOT_ASCII_LETTERS = bytes(i for i in range(256) if not (chr(i).isascii() and chr(i).isalpha()))


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"  # what `\w` means in a str pattern


def _word_around(text: str, p: int) -> tuple[int, int]:
    s, e, n = p, p + 1, len(text)
    while s > 0 and _is_word_char(text[s - 1]):
        s -= 1
    while e < n and _is_word_char(text[e]):
        e += 1
    return s, e


def _find_all(haystack: bytes, needle: bytes, offset: int) -> Iterator[int]:
    pos = 0
    while (i := haystack.find(needle, pos)) >= 0:
        yield i + offset
        pos = i + 1


def _fold_words_at(text: str, positions: Iterable[int], fold: Callable[[str], str | None]) -> str:
    """Replace each word that holds one of `positions` (non-ASCII characters) by
    `fold(word)`, unless that returns None."""
    pieces: list[str] = []
    last = 0
    decided_until = 0
    for p in sorted(positions):
        if p < decided_until or ord(text[p]) < 128 or not _is_word_char(text[p]):
            continue
        s, e = _word_around(text, p)
        decided_until = e
        word = text[s:e]
        folded = fold(word)
        if folded is not None and folded != word:
            pieces.append(text[last:s])
            pieces.append(folded)
            last = e
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _fold_spoofed_words(text: str, tables: _ConfusableTables) -> str:
    """Fold lookalikes to Latin in words that look like spoofed Latin words: words that
    mix ASCII letters with lookalikes ("раssword"), then — only if the text is mostly
    Latin after that — words made entirely of lookalikes ("рор"). Genuine Cyrillic,
    Greek... words (which contain letters with no Latin lookalike) are left alone.

    Words are found from the characters that matter (bytes.find over a one-byte-per-
    character mask), not by walking every word: most text has few or none."""
    cased = tables.cased
    mask = text.encode("ascii", "replace").translate(_LETTER_MASK)
    # A mixed word has an ASCII letter right next to a non-ASCII one somewhere.
    positions = {*_find_all(mask, b"a?", 1), *_find_all(mask, b"?a", 0)}
    out = _fold_words_at(text, positions, lambda w: w.translate(cased)) if positions else text
    ascii_only = out.encode("ascii", "ignore")
    ascii_letters = len(ascii_only.translate(None, _NOT_ASCII_LETTERS))
    if ascii_letters <= len(out) - len(ascii_only):
        return out

    def whole(word: str) -> str | None:
        folded = word.translate(cased)
        return folded if folded.isascii() else None

    mask = out.encode("ascii", "replace").translate(_LETTER_MASK)
    return _fold_words_at(out, _find_all(mask, b"?", 0), whole)


def _compat_letters(text: str) -> bool:
    """Does NFKC turn some character into ASCII letters or digits (fullwidth "Ａ",
    mathematical "𝐚", ligature "ﬁ")? That is a way to dodge filters; the fullwidth
    punctuation of ordinary CJK text, which NFKC changes too, is not."""
    for m in _view_change_re().finditer(text):
        ch = m.group()
        if any(c.isascii() and c.isalnum() for c in _char_view(ch)):
            return True
    return False


def non_ascii_runs(text: str) -> list[tuple[int, int]]:
    """Spans of the runs of non-ASCII characters in `text`, found with bytes.find on
    encode(errors="replace") — one byte per character, so positions hold — instead of
    a regex walk over every character. Meant for mostly-ASCII text."""
    raw = text.encode("ascii", "replace")
    runs: list[tuple[int, int]] = []
    pos = 0
    while (i := raw.find(b"?", pos)) >= 0:
        pos = i + 1
        if text[i] == "?":
            continue  # a real question mark
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _islands(text: str) -> str:
    """The text's non-ASCII runs joined by spaces, or the text itself if it is mostly
    non-ASCII. Checks that only non-ASCII characters can trip (invisibles, stacked
    diacritics, lookalikes) run on this: English with a curly quote or an emoji costs
    what English costs, not a regex walk over every character per check."""
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if non_ascii * 8 >= len(text):
        return text
    return " ".join(text[a:b] for a, b in non_ascii_runs(text))


def _normalize_text(text: str, signals: set[str]) -> str:
    """The case-kept normalised form (see module docstring), adding signals."""
    if text.isascii():
        if _has_invisibles(text):
            _signals_of_invisibles(text, signals)
            text = _INVISIBLE_RE.sub("", text)
        return _collapse_ws(text)
    probe = _islands(text)
    if text.encode("ascii", "ignore").translate(None, _ASCII_OK) or _has_invisibles(probe):
        _signals_of_invisibles(text, signals)
        text = _INVISIBLE_RE.sub("", text)
        probe = _islands(text)
    if _ZALGO_RE.search(probe):
        signals.add(Signal.COMBINING_MARKS)
    if _PRE_NFKC_RE.search(probe):
        signals.add(Signal.HOMOGLYPH)
        text = text.translate(_PRE_NFKC)
    if not unicodedata.is_normalized("NFKC", text):
        if _compat_letters(text):
            signals.add(Signal.COMPATIBILITY)
        text = unicodedata.normalize("NFKC", text)
        probe = _islands(text)
    # Whitespace before lookalikes: folding counts characters to tell mostly-Latin
    # text, and must see what the next normalize() would see.
    text = _collapse_ws(text, after_nfkc=True)
    tables = _confusables()
    # Folding can make a new NFKC composition (Cyrillic "а" + U+0301 -> "á"), and that
    # can make a new lookalike: iterate to a fixed point (in practice one round).
    for _ in range(4):
        if not tables.present(probe):
            break
        folded = _fold_spoofed_words(text, tables)
        if folded == text:
            break
        signals.add(Signal.HOMOGLYPH)
        text = unicodedata.normalize("NFKC", folded)
        probe = _islands(text)
    return text


_NON_ASCII_RUN_RE = re.compile(r"[^\x00-\x7f]+")


def _translate_non_ascii(text: str, table: dict[int, str]) -> str:
    """`text.translate(table)` for a table with only non-ASCII keys: only the non-ASCII
    runs go through the per-character dict lookups."""
    return _NON_ASCII_RUN_RE.sub(lambda m: m.group().translate(table), text)


def _fold_non_ascii(text: str, tables: _ConfusableTables) -> str:
    """Lookalikes to Latin, case fold, generic diacritics stripped (no whitespace work)."""
    # Lookalikes first, while case still tells "Η" (-> H) from "η" (-> n).
    f = _translate_non_ascii(text, tables.cased) if tables.present(text) else text
    f = f.casefold()
    f = unicodedata.normalize("NFKD", f)
    f = _DIACRITIC_RE.sub("", f)
    f = unicodedata.normalize("NFKC", f)
    # Casefolding or stripping a diacritic can leave a new lookalike ("Ӓ" -> "а"): a
    # second pass, only when there is one.
    if not f.isascii() and tables.present(f):
        f = _translate_non_ascii(f, tables.lower)
    return f


def fold_for_matching(text: str) -> str:
    """The matching form of an already-normalised `text`: every lookalike folded to
    Latin, case folded, generic diacritics stripped, whitespace as single spaces.
    Blocklist terms must go through `normalize(...).folded` too, so both sides match."""
    if text.isascii():
        return text.lower().replace("\n", " ")
    tables = _confusables()
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if non_ascii * 8 >= len(text):
        f = _fold_non_ascii(text, tables)
    else:
        # Mostly ASCII: lower-case the ASCII as bytes (one byte per character after
        # encode(errors="replace"), so positions hold) and fold each non-ASCII run
        # alone. The same result as folding the whole text: every composition NFKC can
        # make with an ASCII base letter uses a generic diacritic, which is stripped.
        low = text.encode("ascii", "replace").lower()
        pieces: list[str] = []
        last = 0
        for a, b in non_ascii_runs(text):
            pieces.append(low[last:a].decode("ascii"))
            pieces.append(_fold_non_ascii(text[a:b], tables))
            last = b
        pieces.append(low[last:].decode("ascii"))
        f = "".join(pieces).replace("\n", " ")
        # `text` has single spaces only (normalised: no other whitespace, and folding
        # makes none); a run that folded to nothing can leave two.
        if "  " not in f and not f.startswith(" ") and not f.endswith(" "):
            return f
    return " ".join(f.split())


def _decode_all(original: str, view: MappedText, max_depth: int, budget: Budget, signals: set[str]) -> list[Payload]:
    payloads: list[Payload] = []
    if max_depth < 1:
        return payloads
    if not original.isascii() and Signal.TAG in signals:
        for kind, s, e, decoded in tag_payloads(original, budget):
            text = _normalize_text(decoded, set())
            payloads.append(Payload(kind, s, e, text, fold_for_matching(text), 1))
    # Breadth-first: (text to search, depth of what we find there, span of outer token).
    # Rewrites of a text are searched after its encoded tokens (they are heuristic; the
    # decoders are not) and are not searched again themselves: what a token decodes to
    # is rewritten at the next depth, but a rewrite holds the text's own tokens.
    queue: list[tuple[str, int, tuple[int, int] | None]] = [(view.text, 1, None)]
    while queue:
        source, depth, outer = queue.pop(0)
        for kind, s, e, decoded in [*find_payloads(source, budget), *find_rewrites(source, budget)]:
            signals.add(kind)
            if depth > 1:
                signals.add(Signal.NESTED_ENCODING)
            span = outer if outer is not None else view.to_original(s, e)
            sub_signals: set[str] = set()
            text = _normalize_text(decoded, sub_signals)
            # Invisible-character tricks inside a payload count as tricks in the request.
            signals.update(sub_signals)
            payloads.append(Payload(kind, span[0], span[1], text, fold_for_matching(text), depth))
            if kind in _REWRITE_KINDS:
                continue
            if depth < max_depth:
                queue.append((_strip_view(decoded), depth + 1, span))
            elif find_payloads(_strip_view(decoded), Budget(budget.bytes_left)):
                budget.hit = True  # there is more inside, but we stop at the depth limit
    return payloads


def _strip_view(text: str) -> str:
    return mapped_view(text).text


def normalize(
    text: str,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Normalized:
    """Normalise `text` for screening. Pure, and cheap on ordinary text (printable ASCII
    takes a fast path); never raises on any `str`.

    `max_decoded_bytes` bounds the decoded payload bytes kept in all, `max_depth` the
    decoding recursion (0 turns decoding off); hitting either adds `decode_limit`.
    """
    signals: set[str] = set()
    view = mapped_view(text)
    normalized = _normalize_text(text, signals)
    folded = fold_for_matching(normalized)
    budget = Budget(max(0, max_decoded_bytes))
    payloads = _decode_all(text, view, max_depth, budget, signals)
    if budget.hit:
        signals.add(Signal.DECODE_LIMIT)
    return Normalized(
        text=normalized,
        folded=folded,
        decoded=tuple(p.text for p in payloads),
        signals=frozenset(signals),
        payloads=tuple(payloads),
        view=view,
    )
