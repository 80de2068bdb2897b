"""Model manifests: the shipped ones parse, cascades parse, and every kind of mistake is
rejected with a message that names the file and the field (operators read it in
ListModels and the logs, so its exact text is part of the contract)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.classifier import manifest as mf
from services.common.errors import ConfigError

GOOD = {
    "name": "m",
    "platform": "onnxruntime",
    "labels": ["benign", "jailbreak"],
    "inputs": {"kind": "text", "names": ["codepoints"], "max_sequence_length": 1024, "window_stride": 512},
    "outputs": {"probabilities": "probabilities"},
    "thresholds": {"jailbreak": 0.5},
    "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "preferred_batch_sizes": [8, 32]},
    "version_policy": {"latest": 1},
}


def with_(path: str, value) -> dict:
    data = copy.deepcopy(GOOD)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()


def test_a_good_manifest_parses_into_typed_fields() -> None:
    m = mf.parse(GOOD, "m")
    assert isinstance(m, mf.ModelManifest)
    assert m.labels == ("benign", "jailbreak")
    assert m.inputs == mf.InputSpec("text", ("codepoints",), 1024, 512, None)
    assert m.batching == mf.BatchingSpec(32, 2.0, (8, 32), None)
    assert mf.parse(with_("batching.max_queue_rows", 64), "m").batching.max_queue_rows == 64
    assert m.thresholds == {"jailbreak": 0.5}
    assert m.version_policy.select([3, 1, 2]) == [3]


def test_version_policies_select_latest_n_or_specific_versions() -> None:
    assert mf.VersionPolicy(latest=2).select([1, 5, 3]) == [3, 5]
    assert mf.VersionPolicy(specific=(1, 4)).select([1, 2, 3]) == [1]
    assert mf.VersionPolicy(latest=1).select([]) == []


def test_a_cascade_manifest_parses() -> None:
    m = mf.parse({"name": "pg", "platform": "cascade", "stages": ["a", "b"], "band": [0.2, 0.7]}, "pg")
    assert m == mf.CascadeManifest("pg", ("a", "b"), (0.2, 0.7))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_("name", "other"), "manifest.yaml: name 'other' does not match its directory 'm'"),
        (with_("platform", "tensorflow"), "manifest.yaml: platform: 'tensorflow' is not supported"),
        (with_("labels", _DELETE), "manifest.yaml: labels: required field is missing"),
        (with_("labels", ["a", "a"]), "manifest.yaml: labels: expected a non-empty list of distinct names"),
        (with_("inputs.kind", "image"), "manifest.yaml: inputs.kind: 'image' is not supported (token_ids or text)"),
        (with_("inputs.max_sequence_length", 0), "manifest.yaml: inputs: max_sequence_length: must be >= 1, got 0"),
        (with_("inputs.names", ["a", "b"]), "manifest.yaml: inputs.names: text models take one input (code points)"),
        (with_("outputs", {}), "manifest.yaml: outputs: probabilities: required field is missing"),
        (with_("thresholds", {"harmful": 0.5}), "manifest.yaml: thresholds: 'harmful' is not one of the labels"),
        (with_("thresholds", {"jailbreak": 2}), "manifest.yaml: thresholds.jailbreak: expected a number in [0, 1]"),
        (with_("batching.max_batch_size", 0), "manifest.yaml: batching: max_batch_size: must be >= 1, got 0"),
        (
            with_("batching.preferred_batch_sizes", [64]),
            "manifest.yaml: batching.preferred_batch_sizes: each must be in [1, max_batch_size]",
        ),
        (
            with_("version_policy", {"latest": 1, "specific": [1]}),
            "manifest.yaml: version_policy: expected {latest: N} or {specific: [versions]}",
        ),
        (
            with_("version_policy", {"specific": [0]}),
            "manifest.yaml: version_policy.specific: expected a non-empty list of versions >= 1",
        ),
        (with_("batching.max_queue_rows", 0), "manifest.yaml: batching: max_queue_rows: must be >= 1, got 0"),
        (with_("shadow_models", ["m"]), "manifest.yaml: shadow_models: a model cannot shadow itself"),
        (
            {"name": "m", "platform": "cascade", "stages": ["a"], "band": [0.1, 0.2]},
            "manifest.yaml: stages: expected [first_model, escalation_model], got 1 names",
        ),
        (
            {"name": "m", "platform": "cascade", "stages": ["a", "b"], "band": [0.8, 0.2]},
            "manifest.yaml: band: expected [lo, hi] with 0 <= lo <= hi <= 1, got [0.8, 0.2]",
        ),
        ([1, 2], "manifest.yaml: expected a mapping at the top level"),
    ],
)
def test_bad_manifests_are_rejected_with_the_field_and_the_reason(data, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        mf.parse(data, "m")
    assert str(err.value).startswith(message), str(err.value)


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "manifest.yaml").write_text("labels: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^broken/manifest.yaml: not valid YAML: "):
        mf.load(d)


def test_the_built_models_manifests_parse() -> None:
    root = Path(__file__).resolve().parents[3] / "build" / "models"
    dirs = [d for d in sorted(root.glob("*")) if (d / "manifest.yaml").is_file()] if root.is_dir() else []
    if not dirs:
        pytest.skip("no built models in build/models (python -m modelbuild --out build/models)")
    for d in dirs:
        m = mf.load(d)
        assert m.name == d.name
        if isinstance(m, mf.ModelManifest):
            assert m.labels[0] == "benign"
            assert set(m.thresholds) <= set(m.labels)
            yaml.safe_load((d / "manifest.yaml").read_text())
