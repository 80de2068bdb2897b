"""The two-tier cascade: the n-gram model answers clear cases, the encoder the rest.

A text is escalated when the n-gram model's unsafe score (its maximum non-benign
probability) falls inside the band ``[low, high]``; otherwise the n-gram model's scores
and thresholds decide.  The band is chosen on the validation split as the narrowest one
(fewest escalations) whose decisions stay within a small tolerance of the encoder alone,
both in attacks caught and in benign texts flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import flags, unsafe_scores

RECALL_TOLERANCE = 0.01  # may miss at most 1 point of unsafe recall vs the encoder alone
FPR_TOLERANCE = 0.002  # and flag at most 0.2 points more benign texts (overall and per benign slice)
#: At most this fraction of validation attacks may score below the band (where the n-gram
#: model's "benign" is final and the encoder never looks).
MAX_ATTACKS_BELOW_BAND = 0.005


@dataclass(frozen=True)
class CascadeResult:
    scores: np.ndarray  # per text: the scores of whichever model decided
    flagged: np.ndarray  # per text and label
    escalated: np.ndarray  # per text: True when the encoder decided

    @property
    def escalated_fraction(self) -> float:
        return float(self.escalated.mean()) if self.escalated.size else 0.0


def run_cascade(
    ngram: np.ndarray,
    encoder: np.ndarray,
    labels: list[str],
    band: tuple[float, float],
    ngram_thresholds: dict[str, float],
    encoder_thresholds: dict[str, float],
) -> CascadeResult:
    u = unsafe_scores(ngram, labels)
    esc = (u >= band[0]) & (u <= band[1])
    scores = np.where(esc[:, None], encoder, ngram)
    flagged = np.where(esc[:, None], flags(encoder, labels, encoder_thresholds), flags(ngram, labels, ngram_thresholds))
    return CascadeResult(scores, flagged, esc)


def choose_band(
    ngram: np.ndarray,
    encoder: np.ndarray,
    y: list[str],
    labels: list[str],
    ngram_thresholds: dict[str, float],
    encoder_thresholds: dict[str, float],
    slices: list[str] | None = None,
) -> tuple[float, float]:
    """The band with the fewest escalations that keeps the cascade close to the encoder --
    in unsafe recall, in benign FPR overall and in each benign slice's FPR -- and whose
    low edge leaves at most ``MAX_ATTACKS_BELOW_BAND`` of the attacks below it."""
    y_arr = np.asarray(y)
    benign = y_arr == "benign"
    s_arr = np.asarray(slices) if slices is not None else np.where(benign, "benign", "attack")
    slice_sel = [benign & (s_arr == s) for s in sorted(set(s_arr[benign]))]
    enc_any = flags(encoder, labels, encoder_thresholds).any(axis=1)
    enc_recall = enc_any[~benign].mean()
    enc_fpr = enc_any[benign].mean()
    enc_slice_fpr = [enc_any[sel].mean() for sel in slice_sel]
    u = unsafe_scores(ngram, labels)
    # The low edge may not pass more than MAX_ATTACKS_BELOW_BAND of the attacks as benign.
    max_low = float(np.quantile(u[~benign], MAX_ATTACKS_BELOW_BAND, method="lower")) if (~benign).any() else 1.0
    qs = np.unique(np.r_[0.0, np.quantile(u, np.linspace(0, 1, 61)), max_low, 1.0])
    best = (0.0, 1.0)
    best_frac = 1.0
    for i, low in enumerate(qs):
        if low > max_low or np.mean(u[~benign] < low) > MAX_ATTACKS_BELOW_BAND:
            continue
        for high in qs[i:]:
            res = run_cascade(ngram, encoder, labels, (float(low), float(high)), ngram_thresholds, encoder_thresholds)
            if res.escalated_fraction >= best_frac:
                continue
            anyf = res.flagged.any(axis=1)
            if anyf[~benign].mean() < enc_recall - RECALL_TOLERANCE or anyf[benign].mean() > enc_fpr + FPR_TOLERANCE:
                continue
            if any(anyf[sel].mean() > f + FPR_TOLERANCE for sel, f in zip(slice_sel, enc_slice_fpr, strict=True)):
                continue
            best, best_frac = (float(low), float(high)), res.escalated_fraction
    return math.floor(best[0] * 1e6) / 1e6, math.ceil(best[1] * 1e6) / 1e6
