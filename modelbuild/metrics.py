"""Classification metrics in numpy, and the threshold / cascade-band choices made from them.

Conventions (stated in every model card):

* ROC-AUC and recall at 1% FPR for label L: positives are texts labelled L, negatives are
  benign texts -- "how many L attacks are caught while flagging at most 1% of ordinary
  traffic".  Other attack labels are left out so that, say, a jailbreak scored as
  prompt injection is not counted as a false alarm.
* Precision, recall and F1 for label L: one-vs-rest over all texts at the manifest
  threshold, so confusing attack types does count against precision.
* ``unsafe``: any non-benign label, scored by the maximum non-benign score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TARGET_FPR = 0.01


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def threshold_at_fpr(neg: np.ndarray, fpr: float = TARGET_FPR) -> float:
    """The lowest threshold t with ``mean(neg >= t) <= fpr`` (flag when score >= t)."""
    if len(neg) == 0:
        return 0.5
    s = np.sort(np.asarray(neg, np.float64))[::-1]
    k = int(np.floor(fpr * len(s)))  # number of negatives allowed at or above t
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = TARGET_FPR) -> float:
    if len(pos) == 0:
        return float("nan")
    return float(np.mean(pos >= threshold_at_fpr(neg, fpr)))


@dataclass(frozen=True)
class LabelMetrics:
    n_pos: int
    precision: float
    recall: float
    f1: float
    auc: float
    recall_at_1pct_fpr: float
    fpr_on_benign: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def prf(flagged: np.ndarray, positive: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(flagged & positive))
    fp = float(np.sum(flagged & ~positive))
    fn = float(np.sum(~flagged & positive))
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f = 2 * p * r / (p + r) if p + r and not np.isnan(p) and not np.isnan(r) else float("nan")
    return p, r, f


def label_metrics(
    scores: np.ndarray, flagged: np.ndarray, y: list[str], label: str, benign: str = "benign"
) -> LabelMetrics:
    """Metrics for one label from per-text ``scores`` and the decisions ``flagged``."""
    y_arr = np.asarray(y)
    pos = y_arr == label
    neg_benign = y_arr == benign
    p, r, f = prf(flagged, pos)
    return LabelMetrics(
        n_pos=int(pos.sum()),
        precision=p,
        recall=r,
        f1=f,
        auc=roc_auc(scores[pos], scores[neg_benign]),
        recall_at_1pct_fpr=recall_at_fpr(scores[pos], scores[neg_benign]),
        fpr_on_benign=float(flagged[neg_benign].mean()) if neg_benign.any() else float("nan"),
    )


def unsafe_scores(scores: np.ndarray, labels: list[str], benign: str = "benign") -> np.ndarray:
    cols = [i for i, lab in enumerate(labels) if lab != benign]
    return scores[:, cols].max(axis=1)


def choose_thresholds(
    scores: np.ndarray, y: list[str], labels: list[str], fpr: float = TARGET_FPR, benign: str = "benign"
) -> dict[str, float]:
    """Per-label thresholds such that at most ``fpr`` of benign texts trip *any* label.

    Starts from ``fpr`` per label and tightens all labels together until the union meets
    the target, so adding labels does not quietly multiply the false-positive rate.
    """
    neg = scores[np.asarray(y) == benign]
    cols = [i for i, lab in enumerate(labels) if lab != benign]
    per = fpr
    while True:
        th = {labels[i]: threshold_at_fpr(neg[:, i], per) for i in cols}
        union = np.zeros(len(neg), bool)
        for i in cols:
            union |= neg[:, i] >= th[labels[i]]
        if union.mean() <= fpr or per <= fpr / 64:
            # Rounded up (never loosened), at least 0.05, and within [0, 1] for the manifest.
            return {k: min(max(math.ceil(v * 1e6) / 1e6, 0.05), 1.0) for k, v in th.items()}
        per *= 0.85


#: A benign slice with fewer validation texts than this cannot show a false-positive rate
#: of a few percent (one text is already more), so such slices are pooled for the choice.
MIN_SLICE_N = 50


def _benign_groups(
    y: np.ndarray, slices: np.ndarray, targets: dict[str, float], benign: str
) -> list[tuple[np.ndarray, float]]:
    """(mask over texts, target) for each benign slice with at least ``MIN_SLICE_N``
    texts, the smaller ones pooled (with the strictest of their targets), and all benign
    texts together (the strictest target of all)."""
    groups: list[tuple[np.ndarray, float]] = [(y == benign, min(targets.values(), default=TARGET_FPR))]
    small = np.zeros(len(y), bool)
    small_target = 1.0
    for name, target in sorted(targets.items()):
        sel = (y == benign) & (slices == name)
        if not sel.any():
            continue
        if sel.sum() < MIN_SLICE_N:
            small |= sel
            small_target = min(small_target, target)
        else:
            groups.append((sel, target))
    if small.any():
        groups.append((small, small_target))
    return groups


def choose_slice_thresholds(
    scores: np.ndarray,
    y: list[str],
    slices: list[str],
    labels: list[str],
    targets: dict[str, float],
    benign: str = "benign",
) -> dict[str, float]:
    """Per-label thresholds such that *every* benign slice meets its own false-positive
    target (any label flagged counts), catching as many of the attack texts in ``scores``
    as that allows.

    First the union rule of :func:`choose_thresholds` applied to each slice alone, and the
    strictest threshold per label: feasible, but it gives every label the same share of
    each slice's budget, so a slice where one label's benign scores run high holds every
    label back. Then, when there are attack texts, each slice's unused budget is spent
    greedily (:func:`_spend_budget`): a label's threshold is lowered to just above the
    next benign scores that would trip it while every slice stays within its target, the
    label that catches the most attacks per false positive first.  Slices with fewer than
    ``MIN_SLICE_N`` benign validation texts are pooled into one (with the strictest of
    their targets): with 12 texts a 2% target would mean "none at all", set by whichever
    one text scores highest. Slices absent from ``scores`` are skipped."""
    y_arr, s_arr = np.asarray(y), np.asarray(slices)
    groups = _benign_groups(y_arr, s_arr, targets, benign)
    out: dict[str, float] = {}
    for i, (sel, target) in enumerate(groups):
        th = choose_thresholds(scores[sel], [benign] * int(sel.sum()), labels, target, benign)
        out = th if i == 0 else {k: max(out[k], th[k]) for k in out}
    if not (y_arr != benign).any():
        return out
    return _spend_budget(scores, y_arr != benign, groups, labels, out, benign)


#: Lowest threshold any label gets (as in :func:`choose_thresholds`).
MIN_THRESHOLD = 0.05
#: How many benign texts one greedy step may look past for a label (a step that trips
#: one more may catch nothing while the next would catch many).
LOOKAHEAD = 3


def _spend_budget(
    scores: np.ndarray,
    attack: np.ndarray,
    groups: list[tuple[np.ndarray, float]],
    labels: list[str],
    start: dict[str, float],
    benign: str,
) -> dict[str, float]:
    """Lower ``start``'s thresholds greedily while every group stays within its target:
    a step takes one label's threshold down to just above the next unflagged benign score
    of that label (free when that trips no new benign text; else it costs the benign
    texts it trips) and is chosen by attacks newly caught per benign text tripped; it
    stops when no step within budget catches anything more."""
    cols = {lab: i for i, lab in enumerate(labels) if lab != benign and lab in start}
    allowed = [int(np.floor(target * sel.sum())) for sel, target in groups]
    masks = np.stack([sel for sel, _t in groups]) if groups else np.zeros((0, len(scores)), bool)
    t = dict(start)

    def tripped(th: dict[str, float]) -> np.ndarray:
        hit = np.zeros(len(scores), bool)
        for lab, c in cols.items():
            hit |= scores[:, c] >= th[lab]
        return hit

    hit = tripped(t)
    while True:
        best: tuple[float, int, dict[str, float], np.ndarray] | None = None
        for lab, c in cols.items():
            below = scores[~attack & ~hit, c]
            levels = np.unique(below[below < t[lab]])[::-1][: LOOKAHEAD + 1]
            # Just above each of the next benign scores (the first trips none), then the floor.
            candidates = [float(np.nextafter(v, np.inf)) for v in levels] + [MIN_THRESHOLD]
            for cand in candidates:
                cand = max(cand, MIN_THRESHOLD)
                if cand >= t[lab]:
                    continue
                trial = {**t, lab: cand}
                new = tripped(trial)
                counts = (masks & (new & ~attack)).sum(axis=1)
                if any(int(n) > a for n, a in zip(counts, allowed, strict=True)):
                    break  # lower only trips more
                gained = int((new & attack & ~hit).sum())
                cost = int((new & ~attack & ~hit).sum())
                if gained == 0:
                    continue
                rate = gained / max(cost, 0.5)  # a free step beats any paid one
                if best is None or rate > best[0] or (rate == best[0] and cost < best[1]):
                    best = (rate, cost, trial, new)
        if best is None:
            break
        _rate, _cost, t, hit = best
    return {k: min(max(math.ceil(v * 1e6) / 1e6, MIN_THRESHOLD), 1.0) for k, v in t.items()}


def flags(scores: np.ndarray, labels: list[str], thresholds: dict[str, float]) -> np.ndarray:
    """Boolean ``[texts, labels]`` decisions; the benign column is never flagged."""
    out = np.zeros(scores.shape, bool)
    for i, lab in enumerate(labels):
        if lab in thresholds:
            out[:, i] = scores[:, i] >= thresholds[lab]
    return out


def choose_segment_floors(
    seg_scores: np.ndarray,
    owners: np.ndarray,
    n_texts: int,
    y: list[str],
    slices: list[str],
    labels: list[str],
    targets: dict[str, float],
    counted: tuple[str, ...],
    benign: str = "benign",
) -> dict[str, float]:
    """Per-label floors for segment scores (``services.classifier.segment.fold``): the
    :func:`choose_slice_thresholds` rule applied to each validation text's highest segment
    score, so that in every benign slice at most its target of texts has any segment that
    counts.  Only the ``counted`` labels get a floor (the others' segments never count)."""
    top = np.zeros((n_texts, len(labels)), np.float32)
    for j in range(len(labels)):
        np.maximum.at(top[:, j], np.asarray(owners, dtype=np.int64), np.asarray(seg_scores)[:, j])
    sel = np.asarray(y) == benign
    th = choose_slice_thresholds(
        top[sel], [benign] * int(sel.sum()), list(np.asarray(slices)[sel]), labels, targets, benign
    )
    return {lab: th[lab] for lab in counted}
