"""Segments: a text cut at sentence ends, line breaks and paragraphs, so that an attack
inside benign text (after one benign sentence, mid-document, in one message of a long
chat) is also scored on its own, where benign context cannot dilute it.

A cascade that names ``segments`` in its manifest scores each text's windows *and* its
segments with its first (cheap) stage, and takes the maximum over both (the minimum for
``benign``); when a text is escalated, the second stage scores its windows plus only the
``top_k`` segments the first stage found most unsafe.  The serving code
(``services.classifier.pipeline``), the model build's calibration and the evaluation
(``modelbuild``) all call these functions, so thresholds are chosen on the very scores
the server computes.

Cost is bounded: :func:`spans` returns at most ``max_segments`` segments, none shorter
than ``min_chars`` (short sentences run on into the ones after them) or with fewer than
``min_words`` words, and takes time linear in the text (one regex search per segment,
each starting where the last ended, with patterns that never backtrack).  Together the
segments hold about twice the text (lines and sentences), so the first stage's work is
about that of scoring the text twice more; a text that is one segment adds no rows.

Two levels, both from the same budget: *lines* (cut at line breaks and blank lines:
paragraphs, chat messages, a pasted block) and *sentences* (cut at line breaks and at
sentence ends followed by whitespace); rule lines (``=====``) are separators.  Lines
keep a multi-sentence attack whole when it sits in its own paragraph or message;
sentences pull it out of a benign paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

BENIGN = "benign"
_WORD = re.compile(r"\w+")

#: A line break and the whitespace after it, or a rule (``=====``, ``-----``: a run of
#: four or more), which is markup, not text: separators belong to no segment.  The run
#: after a separator's first character always succeeds (its two alternatives are
#: disjoint and nothing follows them), so matching never backtracks, whatever the input.
_RULE = r"[=\-_*#~+]{4,}"
_SEP = r"(?:\s|" + _RULE + r")*"
_LINE = re.compile(r"\n" + _SEP + "|" + _RULE + _SEP)
#: The same, or whitespace after sentence-ending punctuation (ASCII and CJK).  The
#: look-behind is one character; a run of dots without whitespace never matches.
_SENTENCE = re.compile(r"\n" + _SEP + r"|(?<=[.!?;\u3002\uff01\uff1f])\s" + _SEP + "|" + _RULE + _SEP)


@dataclass(frozen=True)
class SegmentSpec:
    """How a cascade segments texts (``segments`` in its manifest)."""

    max_segments: int = 64  # per text, both levels together
    min_chars: int = 16  # shorter sentences run on into the next
    min_words: int = 3  # pieces with fewer words (headings, "4.6.", long tokens) are no segment
    top_k: int = 2  # segments the second stage scores per escalated text
    #: Texts longer than this are not segmented (0: no limit). Their windows already cost
    #: the encoder more than the default 50 ms budget, so a segment that escalates one only
    #: turns its full first-stage verdict into a PARTIAL one (bench/RESULTS.md, fail-safe:
    #: every 4-16 KB benign document FLAGged at rest without this limit); they keep the
    #: windows' scores. A completion's screening window (2,000 characters) stays under it.
    max_text_chars: int = 4096
    #: Per stage model, per label: the score a segment must reach to count (see ``fold``).
    floors: dict[str, dict[str, float]] = field(default_factory=dict)

    def floors_of(self, model: str) -> dict[str, float] | None:
        return self.floors.get(model)

    def __post_init__(self) -> None:
        if self.max_segments < 2 or self.min_chars < 1 or self.min_words < 0 or self.top_k < 0:
            raise ValueError("segments: max_segments >= 2, min_chars >= 1, min_words >= 0, top_k >= 0")
        if self.max_text_chars < 0:
            raise ValueError("segments: max_text_chars >= 0")


def _cut(text: str, pattern: re.Pattern[str], spec: SegmentSpec, max_segments: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``text`` cut at ``pattern``, each at least ``target``
    characters long (shorter sentences run on to a later boundary; a short last piece
    joins the one before), so there are at most ``max_segments`` of them.  A piece with
    fewer than ``spec.min_words`` words (a heading, ``4.6.``, a rule line's remains, a
    long token) is no segment: the text's windows still cover it.  One search per piece,
    each from where the last ended; every character is word-counted at most once."""
    n = len(text)
    target = max(spec.min_chars, -(-n // max(max_segments, 1)))
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        m = pattern.search(text, start + target)
        if m is None or m.end() >= n:
            break
        if _count_words(text, start, m.start(), spec.min_words) >= spec.min_words:
            out.append((start, m.start()))
        start = m.end()
    if start < n and _count_words(text, start, n, spec.min_words) >= spec.min_words:
        if out and n - start < target:
            out[-1] = (out[-1][0], n)
        else:
            out.append((start, n))
    return out


def _count_words(text: str, start: int, end: int, enough: int) -> int:
    """Words in ``text[start:end]``, counting no further than ``enough``."""
    return sum(1 for _ in islice(_WORD.finditer(text, start, end), enough))


def spans(text: str, spec: SegmentSpec = SegmentSpec()) -> list[tuple[int, int]]:
    """The segments of ``text`` as ``[start, end)`` spans: its lines, then its sentences
    (those that are not already a line), at most ``spec.max_segments`` in all; ``[]``
    when the text is a single segment (its windows already cover it) or longer than
    ``spec.max_text_chars``."""
    if spec.max_text_chars and len(text) > spec.max_text_chars:
        return []
    lines = _cut(text, _LINE, spec, spec.max_segments // 2)
    if len(lines) < 2:
        lines = []
    sentences = _cut(text, _SENTENCE, spec, spec.max_segments - len(lines))
    if len(sentences) < 2:
        sentences = []
    seen = set(lines)
    out = lines + [s for s in sentences if s not in seen]
    return [(a, b) for a, b in out if not text[a:b].isspace()]


def segment_texts(texts: Sequence[str], spec: SegmentSpec) -> tuple[list[str], np.ndarray]:
    """Every text's segments, in text order, and the index of the text each belongs to."""
    pieces: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        for a, b in spans(text, spec):
            pieces.append(text[a:b])
            owners.append(i)
    return pieces, np.asarray(owners, dtype=np.int64)


def fold(
    text_scores: np.ndarray,
    seg_scores: np.ndarray,
    owners: np.ndarray,
    labels: Sequence[str],
    floors: dict[str, float] | None = None,
) -> np.ndarray:
    """Per-text scores that also count their segments: the maximum over a text's own
    scores and its segments' for non-benign labels, the minimum for ``benign``.

    ``floors`` (per label): a segment's score for a label counts only when it reaches
    that label's floor (a label without one: never).  A short piece of a long benign
    text, out of context, can look like an attack; the floors (chosen on validation so
    few benign texts have any segment above them) keep the many segments of long texts
    from raising every benign text's score, and so every threshold.  ``benign`` then
    takes the minimum over the segments that count for some label."""
    out = np.array(text_scores, dtype=np.float32, copy=True)
    if not len(owners):
        return out
    seg = np.asarray(seg_scores, dtype=np.float32)
    counts = np.zeros(len(seg), bool)
    for j, label in enumerate(labels):
        if label == BENIGN:
            continue
        col = seg[:, j]
        if floors is not None:
            ok = col >= floors.get(label, np.inf)
            counts |= ok
            col = np.where(ok, col, 0.0).astype(np.float32)
        np.maximum.at(out[:, j], owners, col)
    for j, label in enumerate(labels):
        if label == BENIGN:
            sel = counts if floors is not None else slice(None)
            np.minimum.at(out[:, j], owners[sel], seg[sel, j])
    return out


def unsafe(scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The maximum non-benign score of each row."""
    cols = [j for j, label in enumerate(labels) if label != BENIGN]
    if not cols or not len(scores):
        return np.zeros(len(scores), dtype=np.float32)
    return np.asarray(scores)[:, cols].max(axis=1)


def top_segments(
    seg_scores: np.ndarray, owners: np.ndarray, labels: Sequence[str], k: int, texts: Sequence[int] | None = None
) -> np.ndarray:
    """Indices of the ``k`` segments with the highest unsafe score of each text (of
    ``texts`` only, when given), in segment order; ties go to the earlier segment."""
    if k <= 0 or not len(owners):
        return np.zeros(0, dtype=np.int64)
    u = unsafe(seg_scores, labels)
    keep = np.ones(len(owners), bool) if texts is None else np.isin(owners, np.asarray(texts, dtype=np.int64))
    idx = np.flatnonzero(keep)
    # Sort by owner, then by descending score (stable: earlier segment first on ties).
    order = idx[np.lexsort((-u[idx], owners[idx]))]
    if not order.size:
        return order.astype(np.int64)
    first = np.r_[True, owners[order][1:] != owners[order][:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    rank = np.arange(order.size) - group_start
    return np.sort(order[rank < k]).astype(np.int64)
