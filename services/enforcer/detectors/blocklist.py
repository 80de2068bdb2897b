"""Per-tenant word filters: whole words and phrases, matched case-insensitively on the
normalised forms, so zero-width characters, homoglyphs, fullwidth letters, accents,
letter spacing ("b a d", "b.a.d") and base64/hex payloads don't evade them.

Why Aho-Corasick: a tenant may list thousands of terms, and one pass over the text
finds all of them at once, in time linear in the text (pyahocorasick, in C), instead
of one regex per term. Build a `Blocklist` once per policy load and share it; it is
immutable and safe to use from many threads.

How whole-word matching stays in C: the text is reduced to words separated by single
spaces, padded with a space at each end, and every term is stored the same way, with
its spaces — " bad phrase " — so a hit always starts and ends on a word boundary and
no per-hit check runs in Python. Characters of scripts written without spaces (CJK,
Thai...) are spaced out on both sides, so terms in them match inside running text.

Returned hits are the configured terms. They are policy content a tenant wrote:
report them as reasons, but never log them next to the text they were found in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import ahocorasick

from services.enforcer.detectors.textnorm import Normalized, non_ascii_runs, normalize, screening_texts

__all__ = ["Blocklist"]

# Runs of anything that is not a letter or digit separate words.
_NON_WORD_RE = re.compile(r"[\W_]+")
# Scripts written without spaces between words: each character stands alone.
_NO_SPACE_SCRIPT_RE = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f"
    "\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
)
# Three or more one-character words in a row: "p a s s" / "p.a.s.s" after reduction.
_SPACED_LETTERS_RE = re.compile(r"(?<= )[^\W_](?: [^\W_]){2,}(?= )")


# ASCII fast path of `_NON_WORD_RE.sub(" ", ...)`: letters and digits kept, every other
# byte a space (bytes.translate runs at C speed; a regex walk costs ~30 ns a character).
_ASCII_WORD_TABLE = bytes(i if chr(i).isascii() and chr(i).isalnum() else 0x20 for i in range(256))


def _words(folded: str) -> str:
    """An already folded string as words separated by single spaces, padded with a
    space at each end: "Bad-phrase, here" -> " bad phrase here "."""
    if folded.isascii():
        s = folded.encode("ascii").translate(_ASCII_WORD_TABLE).decode("ascii")
    elif (len(folded) - len(folded.encode("ascii", "ignore"))) * 16 < len(folded):
        s = _words_mostly_ascii(folded)
    else:
        s = _NON_WORD_RE.sub(" ", folded)
    s = " ".join(s.split())
    return f" {s} " if s else " "


def _words_mostly_ascii(folded: str) -> str:
    """`_NON_WORD_RE.sub(" ", folded)` for text with a few non-ASCII characters (an
    emoji, an accented name): the ASCII through the bytes table, then each non-ASCII
    character kept if it is a word character, else a space."""
    mask = folded.encode("ascii", "replace").translate(_ASCII_WORD_TABLE)
    pieces: list[str] = []
    last = 0
    for a, b in non_ascii_runs(folded):
        pieces.append(mask[last:a].decode("ascii"))
        pieces.append("".join(ch if ch.isalnum() else " " for ch in folded[a:b]))
        last = b
    pieces.append(mask[last:].decode("ascii"))
    return "".join(pieces)


def _space_out_scripts(s: str) -> str:
    if s.isascii() or not _NO_SPACE_SCRIPT_RE.search(s):
        return s
    # A translate table for just the characters present: C speed, no per-match callback.
    table = {ord(ch): f" {ch} " for ch in set(_NO_SPACE_SCRIPT_RE.findall(s))}
    spaced = " ".join(s.translate(table).split())
    return f" {spaced} "


# Any character -> "a", space -> " " (after encode(errors="replace"): one byte each).
_LETTER_SPACE_MASK = bytes(0x20 if i == 0x20 else 0x61 for i in range(256))


def _squeeze(words: str) -> str | None:
    """Join runs of single letters ("p a s s w o r d" -> "password"); None if none.
    `words` is in `_words` form, so such a run shows as " a a a " in a byte mask —
    found with bytes.find before any regex runs."""
    if words.encode("ascii", "replace").translate(_LETTER_SPACE_MASK).find(b" a a a ") < 0:
        return None
    return _SPACED_LETTERS_RE.sub(lambda m: m.group().replace(" ", ""), words)


class Blocklist:
    """A compiled set of blocked words and phrases.

    Terms are normalised exactly like the text (`textnorm.normalize(...).folded`), so
    a term written with accents, capitals or lookalike letters matches every spelling
    of it. Punctuation inside a term counts as a word break ("e-mail" == "e mail");
    a term with no letters or digits at all (an emoji, "$$$") is matched on the folded
    text as a plain substring.
    """

    __slots__ = ("_automaton", "_raw_automaton", "_terms", "_size")

    def __init__(self, terms: Iterable[str]) -> None:
        automaton = ahocorasick.Automaton()
        raw = ahocorasick.Automaton()
        by_key: dict[str, list[str]] = {}
        raw_keys: dict[str, list[str]] = {}
        for term in terms:
            if not isinstance(term, str):
                raise TypeError(f"blocklist terms must be str, not {type(term).__name__}")
            folded = normalize(term, max_depth=0).folded
            if not folded.strip():
                continue
            key = _space_out_scripts(_words(folded))
            if key.strip():
                by_key.setdefault(key, []).append(term)
            else:
                raw_keys.setdefault(folded, []).append(term)
        for key, originals in by_key.items():
            automaton.add_word(key, tuple(originals))
        for key, originals in raw_keys.items():
            raw.add_word(key, tuple(originals))
        self._size = sum(len(v) for v in by_key.values()) + sum(len(v) for v in raw_keys.values())
        self._automaton = automaton if by_key else None
        self._raw_automaton = raw if raw_keys else None
        if self._automaton is not None:
            automaton.make_automaton()
        if self._raw_automaton is not None:
            raw.make_automaton()
        self._terms = tuple(t for v in by_key.values() for t in v) + tuple(t for v in raw_keys.values() for t in v)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __repr__(self) -> str:
        # Never the terms themselves: reprs end up in logs.
        return f"Blocklist(terms={self._size})"

    @property
    def terms(self) -> tuple[str, ...]:
        return self._terms

    def match(self, normalized: Normalized) -> tuple[str, ...]:
        """The configured terms found in the text or in any payload decoded from it (or
        rewritten from it: spacing, leetspeak, ROT13), each once, in the order first found."""
        if not self._size:
            return ()
        hits: dict[str, None] = {}
        for folded in screening_texts(normalized):
            self._match_one(folded, hits)
        return tuple(hits)

    def match_text(self, text: str) -> tuple[str, ...]:
        """`match(normalize(text))`, for callers that don't already have it."""
        return self.match(normalize(text)) if self._size else ()

    def _match_one(self, folded: str, hits: dict[str, None]) -> None:
        if self._automaton is not None:
            words = _words(folded)
            variants = [_space_out_scripts(words)]
            squeezed = _squeeze(words)
            if squeezed is not None:
                variants.append(_space_out_scripts(squeezed))
            for variant in variants:
                for _end, originals in self._automaton.iter(variant):
                    for term in originals:
                        hits[term] = None
        if self._raw_automaton is not None:
            for _end, originals in self._raw_automaton.iter(folded):
                for term in originals:
                    hits[term] = None
