"""The evaluation gate: per-slice recall and false-positive rates against the committed
baseline (modelbuild/eval_baseline.json), and the built models held to it."""

from __future__ import annotations

import copy
import json

import pytest

from modelbuild import eval as evaluation
from tests.unit.classifier.builtmodels import BUILD_TIMEOUT_S

BASE = {
    "models": {
        "cascade": {
            "by_slice": {
                "short_chat": {"kind": "benign", "n": 500, "fpr": 0.004},
                "jailbreak": {"kind": "attack", "n": 100, "recall": 0.97},
            }
        }
    },
    "output": {"models": {"output_guard": {"by_slice": {"harmful_completion": {"n": 50, "recall": 0.96}}}}},
}


def test_gate_passes_equal_and_small_changes():
    now = copy.deepcopy(BASE)
    now["models"]["cascade"]["by_slice"]["jailbreak"]["recall"] = 0.955  # within 2 points
    now["models"]["cascade"]["by_slice"]["short_chat"]["fpr"] = 0.02  # within 2 points
    assert evaluation.gate(now, BASE) == []


@pytest.mark.parametrize(
    ("path", "key", "value", "needle"),
    [
        (("models", "cascade", "by_slice", "jailbreak"), "recall", 0.94, "prompt/jailbreak: recall"),
        (("models", "cascade", "by_slice", "short_chat"), "fpr", 0.03, "prompt/short_chat: FPR"),
        (("output", "models", "output_guard", "by_slice", "harmful_completion"), "recall", 0.9, "output/harmful"),
    ],
)
def test_gate_fails_a_drop_of_more_than_two_points(path, key, value, needle):
    now = copy.deepcopy(BASE)
    node = now
    for p in path:
        node = node[p]
    node[key] = value
    failures = evaluation.gate(now, BASE)
    assert len(failures) == 1 and failures[0].startswith(needle)


def test_gate_fails_a_slice_that_disappeared():
    now = copy.deepcopy(BASE)
    del now["models"]["cascade"]["by_slice"]["jailbreak"]
    assert evaluation.gate(now, BASE) == ["prompt/jailbreak: slice missing from the evaluation"]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_built_models_hold_the_committed_baseline(built_models):
    """CI's gate: the build writes eval.json; no slice may regress past the baseline. A
    deliberate data change updates the baseline with `make eval-baseline` in the same commit."""
    results = json.loads((built_models / evaluation.EVAL_JSON).read_text())
    baseline = json.loads(evaluation.BASELINE.read_text())
    if baseline["data_hash"] != results["data_hash"]:
        # The benign corpora include this machine's /usr/share/doc: a machine with other
        # Debian packages trains on other data, to which the baseline's small slices do
        # not apply. A deliberate data change refreshes the baseline (make eval-baseline).
        pytest.skip(f"built from other data ({results['data_hash'][:12]}) than the baseline's")
    assert evaluation.gate(results, baseline) == []
