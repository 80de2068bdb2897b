"""ONNX Runtime set-up: the execution provider is chosen once by a clear rule, sessions
are tuned, and a version whose graph does not match its manifest (or does not compute
probabilities) is refused with the reason before it can serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.classifier import manifest as mf
from services.classifier.__main__ import wait_for_batch
from services.classifier.pipeline import ModelRef, parse_model_ref
from services.classifier.runtime import CPU, CUDA, OnnxModel, RuntimeOptions, choose_provider, session_options
from services.common.errors import ConfigError, InvalidArgument
from tests.unit.classifier_serving.tinymodel import build_prob_model, build_sum_model


def manifest(**inputs) -> mf.ModelManifest:
    return mf.ModelManifest(
        name="tiny",
        labels=("benign", "jailbreak"),
        inputs=mf.InputSpec(
            **({"kind": "text", "names": ("x",), "max_sequence_length": 16, "window_stride": 8} | inputs)
        ),
        probabilities="y",
        thresholds={"jailbreak": 0.5},
        batching=mf.BatchingSpec(4, 0.0, (2,)),
        version_policy=mf.VersionPolicy(latest=1),
    )


@pytest.mark.parametrize(
    ("preference", "available", "chosen"),
    [
        ("auto", [CUDA, CPU], CUDA),
        ("auto", [CPU], CPU),
        ("cpu", [CUDA, CPU], CPU),
        ("cuda", [CUDA, CPU], CUDA),
    ],
)
def test_execution_provider_is_cuda_when_offered_and_allowed(preference, available, chosen) -> None:
    assert choose_provider(preference, available) == chosen


def test_asking_for_cuda_without_it_fails_at_start_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"--execution-provider cuda: onnxruntime offers no CUDAExecutionProvider"):
        choose_provider("cuda", ["AzureExecutionProvider", CPU])


def test_this_machine_picks_a_provider_it_has() -> None:
    assert choose_provider("auto") in ort.get_available_providers()


def test_batches_wait_for_companions_on_gpus_but_not_on_cpus() -> None:
    assert wait_for_batch("auto", CUDA) is True
    assert wait_for_batch("auto", CPU) is False
    assert wait_for_batch("manifest", CPU) is True
    assert wait_for_batch("eager", CUDA) is False


def test_sessions_are_tuned() -> None:
    so = session_options(RuntimeOptions(intra_op_threads=2))
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.enable_mem_pattern and so.enable_cpu_mem_arena
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1


def test_a_matching_model_loads_warms_up_and_scores(tmp_path: Path) -> None:
    build_prob_model(tmp_path / "1" / "model.onnx")
    m = OnnxModel(manifest(), tmp_path / "1", RuntimeOptions())
    m.warm_up()
    assert m.provider == CPU
    w = m.featurizer.windows(["abc", "a" * 40])
    assert list(m.featurizer.lengths(w)) == [3, 16, 16, 16, 16]  # 40 chars: windows of 16, stride 8
    out = m.infer(dict(w.arrays))
    assert out.shape == (5, 2) and np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("build", "spec", "message"),
    [
        (
            build_prob_model,
            {"names": ("codepoints",)},
            "manifest inputs ['codepoints'] are not graph inputs (graph has ['x'])",
        ),
        (
            lambda p: build_prob_model(p, output_name="probs"),
            {},
            "outputs.probabilities 'y' is not a graph output ['probs']",
        ),
    ],
)
def test_a_graph_that_does_not_match_its_manifest_is_refused(tmp_path: Path, build, spec, message: str) -> None:
    build(tmp_path / "1" / "model.onnx")
    with pytest.raises(ConfigError) as err:
        OnnxModel(manifest(**spec), tmp_path / "1", RuntimeOptions())
    assert str(err.value) == message


def test_warm_up_refuses_a_graph_that_does_not_output_probabilities(tmp_path: Path) -> None:
    build_sum_model(tmp_path / "1" / "model.onnx")
    m = OnnxModel(manifest(), tmp_path / "1", RuntimeOptions())
    with pytest.raises(ConfigError, match=r"warm-up: output is not probabilities"):
        m.warm_up()


def test_corrupt_or_missing_model_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    with pytest.raises(ConfigError, match=r"^1/model.onnx is missing$"):
        OnnxModel(manifest(), tmp_path / "1", RuntimeOptions())
    (tmp_path / "1" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"^cannot load 1/model.onnx: .*(INVALID_PROTOBUF|Protobuf parsing failed)"):
        OnnxModel(manifest(), tmp_path / "1", RuntimeOptions())


def test_model_references_are_name_or_name_colon_version() -> None:
    assert parse_model_ref("m") == ModelRef("m", None)
    assert parse_model_ref("m:3") == ModelRef("m", 3)
    for bad, msg in [
        ("m:abc", "version must be a positive integer"),
        ("m:0", "version must be a positive integer"),
        (":3", "expected NAME or NAME:VERSION"),
        ("", "expected NAME or NAME:VERSION"),
    ]:
        with pytest.raises(InvalidArgument, match=msg):
            parse_model_ref(bad)
