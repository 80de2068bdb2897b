"""A real, tiny ONNX model for batcher and runtime tests (built with onnx.helper, run
by ONNX Runtime): for each row of int64 ``x`` it outputs ``[sum of the row, count of
non-zero entries]``.  Padding with 0 changes neither, so a test can check that every
caller gets exactly its own rows' answers whatever batch they were padded into."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper


def rows(*lists: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pad lists of ints into the request layout the batcher takes."""
    width = max(len(r) for r in lists)
    x = np.zeros((len(lists), width), dtype=np.int64)
    for i, r in enumerate(lists):
        x[i, : len(r)] = r
    return {"x": x}, np.array([len(r) for r in lists], dtype=np.int64)


def build_sum_model(path: Path, input_name: str = "x", output_name: str = "y") -> Path:
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["xf", "axes"], ["s"], keepdims=1),
        helper.make_node("Cast", [input_name], ["nz_bool"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["nz_bool"], ["nz"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["nz", "axes"], ["c"], keepdims=1),
        helper.make_node("Concat", ["s", "c"], [output_name], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sum_model",
        [helper.make_tensor_value_info(input_name, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 2])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_prob_model(path: Path, input_name: str = "x", output_name: str = "y") -> Path:
    """Like ``build_sum_model`` but softmax-normalised: two "probabilities" per row that
    depend on the row's content, so it passes the runtime's warm-up checks."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [0.001])
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["xf", "axes"], ["s"], keepdims=1),
        helper.make_node("Cast", [input_name], ["nz_bool"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["nz_bool"], ["nz"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["nz", "axes"], ["c"], keepdims=1),
        helper.make_node("Concat", ["s", "c"], ["sc"], axis=1),
        helper.make_node("Mul", ["sc", "scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "prob_model",
        [helper.make_tensor_value_info(input_name, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 2])],
        initializer=[axes, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


MANIFEST = {
    "name": "tiny",
    "platform": "onnxruntime",
    "labels": ["benign", "jailbreak"],
    "inputs": {"kind": "text", "names": ["x"], "max_sequence_length": 64, "window_stride": 32},
    "outputs": {"probabilities": "y"},
    "thresholds": {"jailbreak": 0.9},
    "batching": {"max_batch_size": 4, "max_queue_delay_ms": 0},
    "version_policy": {"latest": 1},
}


def write_model(root: Path, name: str = "tiny", versions=(1,), **overrides) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.yaml").write_text(yaml.safe_dump({**MANIFEST, "name": name, **overrides}))
    for v in versions:
        build_prob_model(d / str(v) / "model.onnx")
    return d
