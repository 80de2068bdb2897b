"""ONNX Runtime: the execution provider, tuned session options, one session per model
version, the text -> rows featurizer, and the warm-up that proves a version works
before it is allowed to serve.

The execution provider is chosen once, at start: CUDA when ``onnxruntime`` offers it
(the ``onnxruntime-gpu`` wheel on a machine with a GPU) and the operator allows it, else
CPU.  Deciding once keeps every version of every model on the same device, and makes the
choice something that can be reported (ListModels, the start-up log line, a metric).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.classifier import tokenize
from services.classifier.manifest import MODEL_FILE, TOKEN_IDS, InputSpec, ModelManifest
from services.common.errors import ConfigError

log = logging.getLogger("safeguards.classifier.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
# Benign warm-up text: long enough to exercise the n-gram hashing and a few WordPieces.
WARMUP_TEXT = "Warm-up request: please summarise this short paragraph about the weather."


def choose_provider(preference: str, available: Sequence[str] | None = None) -> str:
    """``auto``: CUDA if available else CPU; ``cuda``: CUDA or a ConfigError; ``cpu``: CPU."""
    offered = list(ort.get_available_providers() if available is None else available)
    if preference == "cpu":
        return CPU
    if CUDA in offered:
        return CUDA
    if preference == "cuda":
        raise ConfigError(
            f"--execution-provider cuda: onnxruntime offers no {CUDA} (it offers {offered}); "
            "install onnxruntime-gpu on a GPU machine, or use auto or cpu"
        )
    return CPU


@dataclass(frozen=True)
class RuntimeOptions:
    provider: str = CPU
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    cuda_device_id: int = 0
    allow_spinning: bool = False


def session_options(opts: RuntimeOptions) -> ort.SessionOptions:
    """Options tuned for a serving process that runs one batch at a time per model.

    All graph optimisations (fusions of attention, GELU, layer norm); sequential execution
    (the graphs are chains, parallelism belongs inside operators); memory pattern and
    arena so repeated shapes reuse buffers; spinning off by default, because on a small
    machine a spinning pool steals the core the event loop needs to accept requests.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.allow_spinning else "0")
    so.log_severity_level = 3  # errors only; load failures are raised and reported by us
    return so


def providers(opts: RuntimeOptions) -> list:
    if opts.provider == CUDA:
        return [(CUDA, {"device_id": opts.cuda_device_id}), CPU]
    return [CPU]


#: WordPiece makes at least one token per this many characters of running text (English
#: prose ~4, code and long words fewer), so ``chars // MAX_CHARS_PER_TOKEN`` is a low
#: estimate of a text's tokens before it is tokenised, and admission on it refuses only
#: work the real rows would not fit either. (Not for text of a few very long words that
#: are single tokens, or of words WordPiece cannot piece, each one [UNK] however long:
#: such a text may be refused where it would have fit; the cascade then answers it with
#: its first stage, PARTIAL.)
MAX_CHARS_PER_TOKEN = 8


class Featurizer:
    """Text -> model rows, cut exactly as the build and the evaluation cut them
    (``services.classifier.tokenize``), under the manifest's input names."""

    def __init__(self, spec: InputSpec, version_dir: Path) -> None:
        self.spec = spec
        self.tokenizer = None
        if spec.kind == TOKEN_IDS:
            from tokenizers import Tokenizer

            path = version_dir / str(spec.tokenizer)
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:
                raise ConfigError(f"cannot load tokenizer {path.name}: {exc}") from None
            tok.no_truncation()  # windowing, not the tokenizer, bounds sequence length
            tok.no_padding()
            self.tokenizer = tok
            pad = tok.token_to_id("[PAD]")
            for special in ("[CLS]", "[SEP]"):
                if tok.token_to_id(special) is None:
                    raise ConfigError(f"tokenizer {path.name} has no {special} token")
            self.pad_values = {spec.names[0]: int(pad or 0), spec.names[1]: 0}
        else:
            self.pad_values = {spec.names[0]: 0}

    def windows(self, texts: Sequence[str]) -> tokenize.Windows:
        spec = self.spec
        if spec.kind == TOKEN_IDS:
            w = tokenize.token_windows(self.tokenizer, texts, spec.max_sequence_length, spec.window_stride)
            arrays = {spec.names[0]: w.arrays["input_ids"], spec.names[1]: w.arrays["attention_mask"]}
        else:
            w = tokenize.char_windows(texts, spec.max_sequence_length, spec.window_stride)
            arrays = {spec.names[0]: w.arrays["codepoints"]}
        return tokenize.Windows(arrays=arrays, text_index=w.text_index, n_texts=w.n_texts)

    def estimate(self, texts: Sequence[str]) -> tuple[int, int]:
        """(tokens, rows) the texts will cost, without tokenising: exact for code points,
        a low estimate for WordPiece (`MAX_CHARS_PER_TOKEN`), so that admission
        on it never refuses what the real rows would fit."""
        spec = self.spec
        per = MAX_CHARS_PER_TOKEN if spec.kind == TOKEN_IDS else 1
        extra = 2 if spec.kind == TOKEN_IDS else 0  # [CLS] and [SEP]
        body = spec.max_sequence_length - extra
        stride = min(spec.window_stride, body)
        tokens = rows = 0
        for text in texts:
            n = len(text) // per
            r = len(tokenize.window_starts(n, body, stride))
            rows += r
            tokens += (n if r == 1 else r * body) + r * extra
        return tokens, rows

    def lengths(self, windows: tokenize.Windows) -> np.ndarray:
        """Real (unpadded) length of every row, so the batcher can re-pad per batch."""
        spec = self.spec
        if spec.kind == TOKEN_IDS:
            return windows.arrays[spec.names[1]].sum(axis=1).astype(np.int64)
        return np.count_nonzero(windows.arrays[spec.names[0]], axis=1).astype(np.int64)


class OnnxModel:
    """One model version: its session, featurizer and checked input/output contract."""

    def __init__(self, manifest: ModelManifest, version_dir: Path, opts: RuntimeOptions) -> None:
        self.manifest = manifest
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise ConfigError(f"{version_dir.name}/{MODEL_FILE} is missing")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(opts), providers=providers(opts)
            )
            # Background work (retro-screening, shadows) on a CPU gets a session of its
            # own with one thread: ONNX Runtime then computes on the calling thread only,
            # which the batcher runs at the lowest OS priority beside the live session.
            # (On a GPU the device serialises both anyway: one session.)
            self.background_session = None
            if opts.provider == CPU:
                self.background_session = ort.InferenceSession(
                    str(path), sess_options=session_options(replace(opts, intra_op_threads=1)), providers=[CPU]
                )
        except Exception as exc:  # ORT raises its own types for corrupt or unsupported graphs
            raise ConfigError(f"cannot load {version_dir.name}/{MODEL_FILE}: {_one_line(exc)}") from None
        self.provider = self.session.get_providers()[0]
        inputs = {i.name: i for i in self.session.get_inputs()}
        wanted = list(manifest.inputs.names)
        missing = [n for n in wanted if n not in inputs]
        if missing:
            raise ConfigError(f"manifest inputs {missing} are not graph inputs (graph has {sorted(inputs)})")
        extra = [n for n in inputs if n not in wanted]
        if extra:
            raise ConfigError(f"graph inputs {extra} are not fed by the manifest's inputs.names")
        self._dtypes = {}
        for n in wanted:
            dtype = _NP_TYPES.get(inputs[n].type)
            if dtype is None:
                raise ConfigError(f"graph input {n!r} has type {inputs[n].type}; expected an integer tensor")
            self._dtypes[n] = dtype
        outputs = {o.name: o for o in self.session.get_outputs()}
        out = outputs.get(manifest.probabilities)
        if out is None:
            raise ConfigError(
                f"outputs.probabilities {manifest.probabilities!r} is not a graph output {sorted(outputs)}"
            )
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != len(manifest.labels):
            raise ConfigError(
                f"output {out.name!r} has {last} columns but the manifest lists {len(manifest.labels)} labels"
            )
        self._outputs = [manifest.probabilities]
        self.featurizer = Featurizer(manifest.inputs, version_dir)
        self.warmup_timings: list[tuple[int, float]] = []  # (padded tokens, seconds), by warm_up

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one padded batch (called on the batcher's thread)."""
        return self._run(self.session, feeds)

    def infer_background(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one background batch on the background session (see __init__)."""
        return self._run(self.background_session or self.session, feeds)

    def _run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, dtype in self._dtypes.items():
            if feeds[name].dtype != dtype:
                feeds[name] = feeds[name].astype(dtype)
        return session.run(self._outputs, feeds)[0]

    def warm_up(self) -> None:
        """Run the batch sizes the batcher will use before serving, and check the answers.

        The first run of a shape allocates and plans memory; doing it here keeps that cost
        out of the first callers' latency, and proves the graph computes sane
        probabilities before the version is allowed to serve.  Each shape's second run is
        timed (``warmup_timings``: padded tokens, seconds), and one full-length window is
        run too, so the batcher's cost model starts from this machine's numbers for short
        and long rows alike instead of admitting blindly until its first batches.
        """
        b = self.manifest.batching
        sizes = sorted({1, *b.preferred_batch_sizes, b.max_batch_size})
        w = self.featurizer.windows([WARMUP_TEXT])
        shapes = [{k: np.repeat(v[:1], size, axis=0) for k, v in w.arrays.items()} for size in sizes]
        long_text = WARMUP_TEXT * (self.manifest.inputs.max_sequence_length // 8 + 1)
        full = self.featurizer.windows([long_text])
        shapes.append({k: v[:1] for k, v in full.arrays.items()})
        timings: list[tuple[int, float]] = []
        for feeds in shapes:
            size = next(iter(feeds.values())).shape[0]
            try:
                out = np.asarray(self.infer(dict(feeds)))
                started = time.perf_counter()
                self.infer(dict(feeds))
                elapsed = time.perf_counter() - started
            except Exception as exc:
                raise ConfigError(f"warm-up inference failed at batch {size}: {_one_line(exc)}") from None
            if out.shape != (size, len(self.manifest.labels)):
                raise ConfigError(
                    f"warm-up: output shape {tuple(out.shape)}, expected ({size}, {len(self.manifest.labels)})"
                )
            if not np.all(np.isfinite(out)) or out.min() < -1e-4 or out.max() > 1 + 1e-4:
                raise ConfigError("warm-up: output is not probabilities (values outside [0, 1] or not finite)")
            timings.append((int(next(iter(feeds.values())).size), elapsed))
        self.warmup_timings = timings


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__
