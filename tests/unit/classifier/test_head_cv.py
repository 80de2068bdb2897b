"""tools.head_cv: folds keep a template group together, and the per-fold measure reports
recall at the per-slice operating point and the saturated shares it exists to show."""

from __future__ import annotations

import numpy as np

from modelbuild.examples import LABELS
from tools.head_cv import SATURATED, evaluate, fold_of


def test_a_group_always_lands_in_the_same_fold_and_the_folds_are_all_used() -> None:
    groups = [f"generated/harmful:{i}" for i in range(400)]
    folds = [fold_of(g, 4) for g in groups]
    assert folds == [fold_of(g, 4) for g in groups]
    assert set(folds) == {0, 1, 2, 3}
    assert min(folds.count(f) for f in range(4)) > 60  # roughly even


def _scores(unsafe: list[float], label: str) -> np.ndarray:
    rows = np.zeros((len(unsafe), len(LABELS)), np.float32)
    rows[:, LABELS.index(label)] = unsafe
    rows[:, LABELS.index("benign")] = 1.0 - np.asarray(unsafe, np.float32)
    return rows


def test_recall_is_measured_where_every_benign_slice_meets_its_target() -> None:
    rng = np.random.default_rng(0)
    benign = rng.uniform(0.0, 0.5, 300).tolist()
    harmful = [0.9] * 30 + [0.3] * 10  # the last 10 sit among benign scores
    scores = np.vstack([_scores(benign, "harmful"), _scores(harmful, "harmful")])
    y = ["benign"] * 300 + ["harmful"] * 40
    slices = ["short_chat"] * 300 + ["harmful"] * 40
    res = evaluate(scores, y, slices)
    assert res["harmful"] == 0.75
    assert res["fpr"] <= 0.01
    assert res["sat_benign"] == 0.0 and res["sat_attack"] == 0.0


def test_scores_piled_up_at_one_are_reported_as_saturated() -> None:
    scores = np.vstack([_scores([0.1] * 200, "jailbreak"), _scores([1.0] * 20 + [0.5] * 20, "jailbreak")])
    res = evaluate(scores, ["benign"] * 200 + ["jailbreak"] * 40, ["code"] * 200 + ["jailbreak"] * 40)
    assert res["sat_attack"] == 0.5 and 1.0 > SATURATED
    assert res["jailbreak"] == 1.0
