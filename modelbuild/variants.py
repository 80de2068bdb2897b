"""Evaluation-only variants of the test split's attacks: obfuscated and embedded.

* Obfuscation (issue 13, item 6): each attack rewritten with one evasion trick --
  base64, hex, URL escapes, homoglyphs, zero-width characters, letter spacing,
  leetspeak, ROT13, mixed scripts -- so recall on each variant can be reported next to
  the plain text's.
* Embedding (item 4): the attack after one benign sentence, and inside a benign
  document at several depths, so recall "alone" and "embedded" can be compared.

Built from the *test* split only (attacks and benign hosts alike) and never trained on.
"""

from __future__ import annotations

import base64
import codecs
from collections.abc import Callable
from urllib.parse import quote

from .examples import Example, pick, sample

_HOMOGLYPHS = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і"})
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})
_ZW = "\u200b"


def _zero_width(t: str) -> str:
    return " ".join(_ZW.join(w) for w in t.split(" "))


def _spacing(t: str) -> str:
    return "  ".join(" ".join(w) for w in t.split())


def _mixed(t: str) -> str:
    # every other word in lookalike Cyrillic, the rest fullwidth-free Latin
    return " ".join(w.translate(_HOMOGLYPHS) if i % 2 else w for i, w in enumerate(t.split(" ")))


OBFUSCATIONS: dict[str, Callable[[str], str]] = {
    "plain": lambda t: t,
    "base64": lambda t: base64.b64encode(t.encode()).decode(),
    "hex": lambda t: t.encode().hex(),
    "url_escapes": lambda t: quote(t, safe=""),
    "homoglyphs": lambda t: t.translate(_HOMOGLYPHS),
    "zero_width": _zero_width,
    "spacing": _spacing,
    "leetspeak": lambda t: t.lower().translate(_LEET),
    "rot13": lambda t: codecs.encode(t, "rot13"),
    "mixed_scripts": _mixed,
}
MAX_OBFUSCATED_CHARS = 1000
CAP_OBFUSCATED = 150

DEPTHS = ("after_sentence", "doc_start", "doc_middle", "doc_end")
MAX_EMBEDDED_CHARS = 1200
CAP_EMBEDDED = 150
HOST_CHARS = 2000


def obfuscated(test: list[Example], cap: int = CAP_OBFUSCATED) -> dict[str, list[Example]]:
    """``{variant: examples}``, the same attacks (short enough to encode) in every variant."""
    pool = [e for e in test if e.label != "benign" and len(e.text) <= MAX_OBFUSCATED_CHARS]
    chosen = sample(pool, cap, lambda e: e.text, "obfuscate")
    return {
        name: [Example(fn(e.text), e.label, e.source, e.group, e.split) for e in chosen]
        for name, fn in OBFUSCATIONS.items()
    }


def embedded(test: list[Example], cap: int = CAP_EMBEDDED) -> dict[str, list[Example]]:
    """``{depth: examples}``: each attack alone (``alone``), after one benign chat
    sentence, and at the start / middle / end of a ~2 KB benign test document."""
    attacks = sample(
        [e for e in test if e.label != "benign" and len(e.text) <= MAX_EMBEDDED_CHARS and "composite" not in e.source],
        cap,
        lambda e: e.text,
        "embed",
    )
    sentences = [e.text for e in test if e.label == "benign" and 40 <= len(e.text) <= 160 and "\n" not in e.text]
    docs = [e.text[:HOST_CHARS] for e in test if e.label == "benign" and len(e.text) >= HOST_CHARS]
    out: dict[str, list[Example]] = {"alone": list(attacks)}
    for depth in DEPTHS:
        rows = []
        for a in attacks:
            if depth == "after_sentence":
                text = f"{pick(sentences, a.text, 'sentence')} {a.text}"
            else:
                doc = pick(docs, a.text, "doc")
                cut = {"doc_start": 0, "doc_middle": len(doc) // 2, "doc_end": len(doc)}[depth]
                text = f"{doc[:cut]}\n\n{a.text}\n\n{doc[cut:]}".strip()
            rows.append(Example(text, a.label, a.source, a.group, a.split))
        out[depth] = rows
    return out
