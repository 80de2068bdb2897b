"""Metric helpers agree with brute-force definitions; thresholds respect the FPR budget."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modelbuild.cascade import MAX_ATTACKS_BELOW_BAND, choose_band, run_cascade
from modelbuild.metrics import (
    choose_slice_thresholds,
    choose_thresholds,
    recall_at_fpr,
    roc_auc,
    threshold_at_fpr,
)

LABELS = ["benign", "jailbreak", "prompt_injection", "harmful"]
scores_st = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]), min_size=1, max_size=40)


@given(pos=scores_st, neg=scores_st)
def test_roc_auc_equals_pairwise_definition(pos, neg):
    p, n = np.array(pos), np.array(neg)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])
    assert abs(roc_auc(p, n) - brute) < 1e-12


@given(neg=st.lists(st.floats(0, 1), min_size=1, max_size=300), fpr=st.sampled_from([0.0, 0.01, 0.05, 0.2]))
def test_threshold_never_exceeds_the_fpr_budget(neg, fpr):
    n = np.array(neg)
    t = threshold_at_fpr(n, fpr)
    assert np.mean(n >= t) <= fpr + 1e-12


def test_recall_at_fpr_on_separable_scores_is_one():
    assert recall_at_fpr(np.array([0.9, 0.95]), np.linspace(0, 0.5, 200)) == 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_union_of_label_thresholds_flags_at_most_one_percent_of_benign(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((500, 4))
    th = choose_thresholds(scores, ["benign"] * 500, LABELS)
    flagged = np.zeros(500, bool)
    for i, lab in enumerate(LABELS[1:], start=1):
        flagged |= scores[:, i] >= th[lab]
    assert flagged.mean() <= 0.01


def test_cascade_uses_encoder_only_inside_the_band():
    ngram = np.array([[0.95, 0.05, 0, 0], [0.5, 0.5, 0, 0], [0.05, 0.95, 0, 0]])
    encoder = np.array([[0.0, 1.0, 0, 0], [0.0, 1.0, 0, 0], [1.0, 0.0, 0, 0]])
    th = {"jailbreak": 0.5, "prompt_injection": 0.5, "harmful": 0.5}
    res = run_cascade(ngram, encoder, LABELS, (0.2, 0.8), th, th)
    assert res.escalated.tolist() == [False, True, False]
    assert res.flagged[:, 1].tolist() == [False, True, True]
    assert abs(res.escalated_fraction - 1 / 3) < 1e-12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_slice_thresholds_hold_every_benign_slice_to_its_target(seed):
    rng = np.random.default_rng(seed)
    n = 900
    scores = rng.random((n, 4))
    slices = ["chat"] * 300 + ["code"] * 500 + ["docs"] * 100
    # one slice scores much higher than the others: a pooled threshold would over-flag it
    scores[800:, 1:] = 0.5 + 0.49 * scores[800:, 1:]
    th = choose_slice_thresholds(scores, ["benign"] * n, slices, LABELS, {"chat": 0.01, "code": 0.01, "docs": 0.02})
    flagged = np.zeros(n, bool)
    for i, lab in enumerate(LABELS[1:], start=1):
        flagged |= scores[:, i] >= th[lab]
    assert flagged[:300].mean() <= 0.01 and flagged[300:800].mean() <= 0.01 and flagged[800:].mean() <= 0.02
    pooled = choose_thresholds(scores, ["benign"] * n, LABELS)
    assert all(th[k] >= pooled[k] for k in pooled)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
@example(seed=2379)
@example(seed=3192)
def test_with_attacks_the_unused_budget_goes_where_it_catches_most_and_every_slice_still_holds(seed):
    """Chat's benign text runs high on harmful, code's on jailbreak. The equal split gives
    each label a third of each slice's budget, so harmful's threshold (set in chat) leaves
    chat's other two thirds unused. With attacks to catch, that budget is spent on
    harmful; every slice (and all benign text) stays within its target."""
    rng = np.random.default_rng(seed)
    n_benign, n_attack = 800, 1000
    scores = rng.random((n_benign + n_attack, 4)) * 0.3
    scores[:300, 3] = rng.random(300)  # chat: harmful-looking benign text
    scores[300:800, 1] = rng.random(500)  # code: jailbreak-looking benign text
    # The attacks: harmful only, and dense where chat's benign scores end. With benign
    # noise on their other labels, lowering prompt_injection past one more benign text
    # sometimes caught more attacks than harmful did (seed 2379); spread over [0.5, 1],
    # the gaps between the top benign harmful scores sometimes held no attack at all
    # within the look-ahead (seed 3192). Checked on 3,334 seeds.
    scores[n_benign:, 3] = 0.9 + 0.1 * rng.random(n_attack)
    scores[n_benign:, :3] = 0.0
    slices = ["chat"] * 300 + ["code"] * 500 + ["-"] * n_attack
    y = ["benign"] * n_benign + ["harmful"] * n_attack
    targets = {"chat": 0.04, "code": 0.04}
    th = choose_slice_thresholds(scores, y, slices, LABELS, targets)
    flagged = np.zeros(len(y), bool)
    for i, lab in enumerate(LABELS[1:], start=1):
        flagged |= scores[:, i] >= th[lab]
    assert flagged[:300].mean() <= 0.04 and flagged[300:800].mean() <= 0.04
    equal = choose_slice_thresholds(scores[:n_benign], y[:n_benign], slices[:n_benign], LABELS, targets)
    assert th["harmful"] < equal["harmful"]
    assert (scores[n_benign:, 3] >= th["harmful"]).sum() > (scores[n_benign:, 3] >= equal["harmful"]).sum()
    assert all(th[k] <= equal[k] for k in equal)  # it only spends what the equal split left unused


def test_band_leaves_at_most_half_a_percent_of_attacks_below_it():
    rng = np.random.default_rng(0)
    n_benign, n_attack = 1000, 1000
    y = ["benign"] * n_benign + ["harmful"] * n_attack
    u = np.r_[rng.random(n_benign) * 0.6, rng.random(n_attack) * 0.8 + 0.2]  # overlapping n-gram scores
    ngram = np.zeros((len(y), 4))
    ngram[:, 3], ngram[:, 0] = u, 1 - u
    encoder = np.zeros((len(y), 4))
    encoder[:n_benign, 0] = 1.0
    encoder[n_benign:, 3] = 1.0  # the encoder is always right
    th = {"jailbreak": 0.99, "prompt_injection": 0.99, "harmful": 0.9}
    low, high = choose_band(ngram, encoder, y, LABELS, th, {"jailbreak": 0.5, "prompt_injection": 0.5, "harmful": 0.5})
    assert np.mean(u[n_benign:] < low) <= MAX_ATTACKS_BELOW_BAND
    assert low <= high


def test_segment_floors_let_at_most_the_target_of_each_benign_slice_through():
    from modelbuild.metrics import choose_segment_floors

    rng = np.random.default_rng(0)
    n = 400
    y = ["benign"] * 300 + ["jailbreak"] * 100
    slices = ["chat"] * 200 + ["docs"] * 100 + ["jailbreak"] * 100
    owners = np.repeat(np.arange(n), 3)  # three segments per text
    seg = rng.random((3 * n, len(LABELS))).astype(np.float32)
    floors = choose_segment_floors(
        seg, owners, n, y, slices, LABELS, {"chat": 0.02, "docs": 0.02}, counted=("prompt_injection", "harmful")
    )
    assert set(floors) == {"prompt_injection", "harmful"}  # jailbreak: no floor, never counts
    top = np.zeros((n, len(LABELS)))
    for j in range(len(LABELS)):
        np.maximum.at(top[:, j], owners, seg[:, j])
    for sl in ("chat", "docs"):
        sel = np.array([s == sl for s in slices])
        counted = np.zeros(sel.sum(), bool)
        for lab, f in floors.items():
            counted |= top[sel, LABELS.index(lab)] >= f
        assert counted.mean() <= 0.02
