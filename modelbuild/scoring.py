"""Offline batch scoring of a built model directory: text -> windows -> ONNX -> max.

The build (validation scores for thresholds) and the evaluation use this; it follows the
manifest contract exactly as the serving code must (same tokenize module, same windowing
parameters, same output name), but without queues or deadlines.  Rows are sorted by
length before batching so short texts are not padded to the longest one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from services.classifier import tokenize

BATCH = 32


def session(model: bytes | str | Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def row_lengths(arrays: dict[str, np.ndarray]) -> np.ndarray:
    if "attention_mask" in arrays:
        return arrays["attention_mask"].sum(axis=1)
    return (arrays["codepoints"] > 0).sum(axis=1)


def run_rows(
    sess: ort.InferenceSession,
    arrays: dict[str, np.ndarray],
    output: str,
    rows: np.ndarray | None = None,
    batch: int = BATCH,
) -> np.ndarray:
    """``output`` for the selected rows (all by default), in the order given."""
    lengths = row_lengths(arrays)
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    order = rows[np.argsort(lengths[rows], kind="stable")]
    results: dict[int, np.ndarray] = {}
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        width = max(int(lengths[idx].max()), 1)
        feed = {k: np.ascontiguousarray(v[idx, :width]) for k, v in arrays.items()}
        out = sess.run([output], feed)[0]
        for i, r in enumerate(idx):
            results[int(r)] = out[i]
    if not rows.size:
        return np.zeros((0, sess.get_outputs()[0].shape[-1] or 0), np.float32)
    return np.stack([results[int(r)] for r in rows])


class EmbeddingCache:
    """Encoder outputs per window, keyed by the hash of the window's token ids, kept in one
    ``.npz`` under the build cache (named after the encoder wheel's hash and ``FORMAT``),
    so a rebuild after a data change embeds only the new windows.

    Missing windows are run one at a time: ONNX Runtime's result for a row depends in
    its last float bits on the batch it ran in (the kernels' blocking follows the
    batch's shape), and which windows are missing together depends on the cache's
    history.  Batched, a warm rebuild and a cold one (CI's) gave
    heads whose per-slice thresholds differed by enough to move harmful recall 4 points;
    one row per run makes each window's output a function of its tokens alone, so every
    build of the same inputs is the same build.  It costs about a fifth more time on a
    cold cache (a batch barely helps an encoder on a CPU)."""

    FORMAT = "rowwise"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[bytes, np.ndarray] = {}
        self.dirty = False
        if path.is_file():
            try:
                with np.load(path) as z:
                    keys = z["keys"]
                    if keys.dtype != np.uint8 or keys.ndim != 2:
                        raise ValueError("old key format")  # fixed-width bytes lost trailing zeros
                    self.table = dict(zip((k.tobytes() for k in keys), z["values"], strict=True))
            except (OSError, ValueError, KeyError):
                self.table = {}

    @staticmethod
    def _key(arrays: dict[str, np.ndarray], r: int, n: int) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(arrays["input_ids"][r, :n]).tobytes()).digest()

    def run(self, sess, arrays: dict[str, np.ndarray], output: str, rows: np.ndarray | None = None) -> np.ndarray:
        lengths = row_lengths(arrays)
        rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
        keys = [self._key(arrays, int(r), int(lengths[r])) for r in rows]
        missing = np.asarray([i for i, k in enumerate(keys) if k not in self.table], dtype=np.int64)
        if missing.size:
            out = run_rows(sess, arrays, output, rows[missing], batch=1)
            for i, v in zip(missing, out, strict=True):
                self.table[keys[i]] = v
            self.dirty = True
        if not rows.size:
            return run_rows(sess, arrays, output, rows)
        return np.stack([self.table[k] for k in keys])

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        # Keys as raw uint8 rows: a fixed-width bytes dtype ("S20") drops trailing zero
        # bytes, so a digest ending in 0x00 would never be found again.
        keys = np.frombuffer(b"".join(self.table), dtype=np.uint8).reshape(len(self.table), 20)
        np.savez(tmp, keys=keys, values=np.stack(list(self.table.values())))
        tmp.replace(self.path)
        self.dirty = False


class ModelRunner:
    """One model directory (``manifest.yaml`` + ``<version>/model.onnx``) scoring texts."""

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        self.dir = Path(model_dir)
        self.manifest = yaml.safe_load((self.dir / "manifest.yaml").read_text())
        version = str(self.manifest.get("version_policy", {}).get("latest", 1))
        self.version_dir = self.dir / version
        self.labels: list[str] = list(self.manifest["labels"])
        self.output = self.manifest["outputs"]["probabilities"]
        self.inputs = self.manifest["inputs"]
        self.session = session(self.version_dir / "model.onnx", threads)
        self.tokenizer = None
        if self.inputs["kind"] == "token_ids":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.version_dir / self.inputs["tokenizer"]))

    def windows(self, texts: Sequence[str]) -> tokenize.Windows:
        max_len, stride = int(self.inputs["max_sequence_length"]), int(self.inputs["window_stride"])
        if self.tokenizer is not None:
            return tokenize.token_windows(self.tokenizer, texts, max_len, stride)
        return tokenize.char_windows(texts, max_len, stride)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Per-text scores ``[texts, labels]`` (max over windows for non-benign labels)."""
        return self.score_rows(texts)[0]

    def score_rows(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-text scores, and the number of model rows (windows) each text took."""
        if not len(texts):
            return np.zeros((0, len(self.labels)), np.float32), np.zeros(0, np.int64)
        w = self.windows(texts)
        probs = run_rows(self.session, w.arrays, self.output)
        scores = tokenize.max_over_windows(probs, w.text_index, w.n_texts, self.labels)
        return scores, np.bincount(w.text_index, minlength=w.n_texts).astype(np.int64)
