"""Masking what tier 0 found in one text wherever it occurs in others.

A provider body holds a prompt in many fields (system, messages, content blocks, tool
results); the decision screens them joined into one text. `Redactor` carries that one
tier-0 run's findings (each value and its "[KIND]" label) to every field, so a REDACT
masks the same values the decision saw, under the same policy version, without running
the detectors again. Matching is Aho-Corasick, leftmost-longest: linear in the text
however many values were found.
"""

from __future__ import annotations

from collections.abc import Iterable

import ahocorasick

from services.enforcer.detectors.pii import Finding, merged_spans


class Redactor:
    def __init__(self, text: str, findings: Iterable[Finding]) -> None:
        labels: dict[str, str] = {}
        for start, end, kind in merged_spans(findings):
            value = text[start:end]
            if value:
                labels.setdefault(value, f"[{kind}]")
        self._automaton: ahocorasick.Automaton | None = None
        if labels:
            a = ahocorasick.Automaton()
            for value, label in labels.items():
                a.add_word(value, (len(value), label))
            a.make_automaton()
            self._automaton = a

    def __bool__(self) -> bool:
        return self._automaton is not None

    def __call__(self, text: str) -> str:
        """`text` with every occurrence of a found value replaced by its label."""
        if self._automaton is None or not text:
            return text
        out: list[str] = []
        pos = 0
        for end_index, (length, label) in self._automaton.iter_long(text):
            start = end_index - length + 1
            out.append(text[pos:start])
            out.append(label)
            pos = end_index + 1
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)
