"""Dynamic int8 quantisation of the encoder for CPU serving.

Settings were picked by measuring embedding drift against fp32 on real text (cosine
similarity of sentence embeddings): per-tensor int8 weights drift badly (mean cosine
~0.84), per-channel weights bring it to ~0.99, and keeping the feed-forward down
projections (whose GELU inputs have heavy-tailed activations) and the small
classification head in fp32 brings it to ~0.997 at a small size and speed cost.  The
model card reports what is left of the quality gap on the test split.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic


def _fp32_matmuls(model_path: Path) -> list[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    keep = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and any(i.endswith("ffn2.weight_t") or i.startswith("head.") for i in node.input):
            keep.append(node.name)
    return keep


@contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice for every node through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_encoder(src: Path, dst: Path) -> None:
    with _quiet_root_logger():
        _quantize(src, dst)


def _quantize(src: Path, dst: Path) -> None:
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=_fp32_matmuls(src),
    )
