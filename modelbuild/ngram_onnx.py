"""The tier-1 model: hashed character n-grams and a linear layer, as one ONNX graph.

Input ``codepoints`` (int64 ``[batch, chars]``, lower-cased, 0-padded at the end, see
``services.classifier.tokenize.char_windows``) -> output ``probabilities``
(``[batch, labels]``).  Hashing happens inside the graph, so serving needs no feature
code beyond turning a string into code points, and the model stays one file.

For every n in ``NGRAM_SIZES`` and every position i with a complete n-gram::

    h = n
    for k in 0..n-1:  h = (h * HASH_MULT + cp[i + k]) mod HASH_MOD
    bucket = h mod BUCKETS

The n-gram's weight row ``W[bucket]`` (one weight per label) is averaged over all
n-grams of the row, the bias added, and a softmax taken: multinomial logistic regression
on L1-normalised hashed n-gram counts.  Cost is a few gathers and adds per character,
i.e. microseconds per text.  All int64 arithmetic stays below 2**52, so it cannot wrap.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NGRAM_SIZES = (2, 3, 4, 5)
HASH_MULT = 1_000_003
HASH_MOD = 2_147_483_647  # 2**31 - 1
BUCKETS = 1 << 18
INPUT = "codepoints"
PROBABILITIES = "probabilities"
OPSET = 17
_INT64_MAX = np.iinfo(np.int64).max


def hash_params() -> dict:
    """What the manifest records so another implementation can reproduce the features."""
    return {
        "ngram_sizes": list(NGRAM_SIZES),
        "hash": "h=n; for each code point c of the n-gram: h=(h*mult+c) mod modulus; bucket=h mod buckets",
        "hash_mult": HASH_MULT,
        "hash_modulus": HASH_MOD,
        "buckets": BUCKETS,
        "aggregation": "mean of bucket weight rows over all n-grams of the row, plus bias, softmax",
    }


def ngram_buckets(cps: np.ndarray) -> np.ndarray:
    """Bucket ids of every n-gram of one unpadded code-point row (the training features)."""
    cps = np.asarray(cps, dtype=np.int64)
    out = []
    for n in NGRAM_SIZES:
        m = len(cps) - n + 1
        if m <= 0:
            continue
        h = np.full(m, n, dtype=np.int64)
        for k in range(n):
            h = (h * HASH_MULT + cps[k : k + m]) % HASH_MOD
        out.append(h % BUCKETS)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def build_ngram_graph(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """The ONNX model for trained ``weights [BUCKETS, labels]`` and ``bias [labels]``."""
    if weights.shape[0] != BUCKETS:
        raise ValueError(f"expected {BUCKETS} weight rows, got {weights.shape[0]}")
    n_labels = weights.shape[1]
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(weights.astype(np.float32), "ngram.weight"),
        numpy_helper.from_array(bias.astype(np.float32), "ngram.bias"),
        numpy_helper.from_array(np.array(HASH_MULT, np.int64), "c_mult"),
        numpy_helper.from_array(np.array(HASH_MOD, np.int64), "c_mod"),
        numpy_helper.from_array(np.array(BUCKETS, np.int64), "c_buckets"),
        numpy_helper.from_array(np.array(0, np.int64), "c_zero"),
        numpy_helper.from_array(np.array([1], np.int64), "c_axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "c_axis2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "c_one_f"),
    ]
    counter = [0]

    def op(op_type: str, inputs: list[str], **attrs) -> str:
        counter[0] += 1
        out = f"{op_type.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{counter[0]}_{op_type}", **attrs))
        return out

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    sums, counts = [], []
    for n in NGRAM_SIZES:
        h = const(f"c_seed_{n}", np.array(n, np.int64))
        last = None
        for k in range(n):
            end = k - n + 1  # negative: counted from the end of the row
            starts = const(f"c_s_{n}_{k}", np.array([k], np.int64))
            ends = const(f"c_e_{n}_{k}", np.array([end if end < 0 else _INT64_MAX], np.int64))
            piece = op("Slice", [INPUT, starts, ends, "c_axis1"])
            h = op("Mod", [op("Add", [op("Mul", [h, "c_mult"]), piece]), "c_mod"])
            last = piece
        bucket = op("Mod", [h, "c_buckets"])
        valid = op("Cast", [op("Greater", [last, "c_zero"])], to=TensorProto.FLOAT)  # [B, P]
        rows = op("Gather", ["ngram.weight", bucket], axis=0)  # [B, P, L]
        weighted = op("Mul", [rows, op("Unsqueeze", [valid, "c_axis2"])])
        sums.append(op("ReduceSum", [weighted, "c_axis1"], keepdims=0))  # [B, L]
        counts.append(op("ReduceSum", [valid, "c_axis1"], keepdims=1))  # [B, 1]
    total = sums[0]
    for s in sums[1:]:
        total = op("Add", [total, s])
    count = counts[0]
    for c in counts[1:]:
        count = op("Add", [count, c])
    mean = op("Div", [total, op("Max", [count, "c_one_f"])])
    logits = op("Add", [mean, "ngram.bias"])
    nodes.append(helper.make_node("Softmax", [logits], [PROBABILITIES], name="n_softmax", axis=-1))

    graph = helper.make_graph(
        nodes,
        "hashed_char_ngram_linear",
        [helper.make_tensor_value_info(INPUT, TensorProto.INT64, ["batch", "chars"])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", n_labels])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="safeguards-mesh")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
