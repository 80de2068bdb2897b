"""Model manifests (``DIR/<model>/manifest.yaml``): the contract with the serving code.

Field names are fixed -- the classifier service reads ``labels`` (output column order),
``inputs`` (how to turn text into the graph's inputs), ``outputs.probabilities``,
``thresholds``, ``batching``, ``version_policy`` and, on the tier-1 model, ``cascade``.
``build`` is provenance only.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from services.classifier.segment import SegmentSpec

from . import bert_onnx, ngram_onnx
from .examples import LABELS

NGRAM = "prompt_guard_ngram"
ENCODER = "prompt_guard_minilm"
ENCODER_INT8 = "prompt_guard_minilm_int8"
MODELS = (NGRAM, ENCODER, ENCODER_INT8)
# A virtual model (no graph of its own) for servers that expose the cascade as one model
# name; the band is the same as ``cascade.band`` in the n-gram manifest.
CASCADE = "prompt_guard"
# The output direction (model completions): harmful vs benign, its own n-gram tier,
# encoder head and cascade.
OUTPUT_NGRAM = "output_guard_ngram"
OUTPUT_ENCODER = "output_guard_minilm"
OUTPUT_CASCADE = "output_guard"
OUTPUT_MODELS = (OUTPUT_NGRAM, OUTPUT_ENCODER)

MAX_SEQUENCE_LENGTH = 256
WINDOW_STRIDE = 128
NGRAM_MAX_CHARS = 1024
NGRAM_STRIDE = 512
VERSION = 1
#: The prompt cascade scores sentences and lines too (issue 13 item 4: an attack inside
#: benign text scores like the attack alone); the output cascade scores windows only.
SEGMENTS = SegmentSpec()
#: The labels a segment may raise. Prompt injections and harmful requests are short and
#: are what benign context dilutes (recall after one benign sentence: a third of alone);
#: jailbreaks are long role-play framings that windows already catch at every depth, and
#: one sentence of a benign persona prompt ("I am a highly intelligent question answering
#: bot...") scores as a jailbreak out of context.
SEGMENT_LABELS = ("prompt_injection", "harmful")
#: Per benign slice, at most this fraction of validation texts may have a segment whose
#: score counts (its floor, per stage and label).
SEGMENT_FLOOR_FPR = 0.01
BATCHING = {"max_batch_size": 32, "max_queue_delay_ms": 2, "preferred_batch_sizes": [8, 32]}


def encoder_manifest(
    name: str, thresholds: dict[str, float], build: dict, quantized: bool, labels: tuple[str, ...] = LABELS
) -> dict:
    return {
        "name": name,
        "platform": "onnxruntime",
        "labels": list(labels),
        "inputs": {
            "kind": "token_ids",
            "tokenizer": "tokenizer.json",
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "window_stride": WINDOW_STRIDE,
            "names": [bert_onnx.INPUT_IDS, bert_onnx.ATTENTION_MASK],
            "dtype": "int64",
            "windowing": "services.classifier.tokenize.token_windows; per-text score = max over windows "
            "(min for benign): services.classifier.tokenize.max_over_windows",
        },
        "outputs": {"probabilities": bert_onnx.PROBABILITIES, "embeddings": bert_onnx.EMBEDDINGS},
        "thresholds": thresholds,
        "batching": dict(BATCHING),
        "version_policy": {"latest": VERSION},
        "quantization": "dynamic int8 (per-channel weights, onnxruntime.quantization)" if quantized else "none (fp32)",
        "build": build,
    }


def ngram_manifest(
    thresholds: dict[str, float],
    band: tuple[float, float],
    build: dict,
    name: str = NGRAM,
    escalate_to: str = ENCODER,
    labels: tuple[str, ...] = LABELS,
) -> dict:
    return {
        "name": name,
        "platform": "onnxruntime",
        "labels": list(labels),
        "inputs": {
            "kind": "text",
            "encoding": "lower-cased unicode code points, NUL removed, 0-padded (int64)",
            "names": [ngram_onnx.INPUT],
            "max_sequence_length": NGRAM_MAX_CHARS,
            "window_stride": NGRAM_STRIDE,
            "windowing": "services.classifier.tokenize.char_windows; per-text score = max over windows "
            "(min for benign): services.classifier.tokenize.max_over_windows",
            "hashing": {"in_graph": True, **ngram_onnx.hash_params()},
        },
        "outputs": {"probabilities": ngram_onnx.PROBABILITIES},
        "thresholds": thresholds,
        "batching": dict(BATCHING),
        "version_policy": {"latest": VERSION},
        "cascade": {"escalate_to": escalate_to, "band": [float(band[0]), float(band[1])]},
        "build": build,
    }


def cascade_manifest(
    band: tuple[float, float],
    build: dict,
    name: str = CASCADE,
    stages: tuple[str, str] = (NGRAM, ENCODER),
    labels: tuple[str, ...] = LABELS,
    segments: SegmentSpec | None = None,
) -> dict:
    """``segments``: score each text's sentences and lines too (the prompt cascade);
    thresholds and band must then have been chosen on scores computed the same way."""
    out = {
        "name": name,
        "platform": "cascade",
        "labels": list(labels),
        "stages": list(stages),
        "band": [float(band[0]), float(band[1])],
    }
    if segments is not None:
        out["segments"] = segments_dict(segments)
    return {**out, "build": build}


def segments_dict(spec: SegmentSpec) -> dict:
    """A segment spec as the cascade manifest (and the eval's report) spells it."""
    return {
        "max_segments": spec.max_segments,
        "min_chars": spec.min_chars,
        "min_words": spec.min_words,
        "top_k": spec.top_k,
        "max_text_chars": spec.max_text_chars,
        "floors": {m: {k: float(v) for k, v in f.items()} for m, f in spec.floors.items()},
    }


def write(model_dir: Path, manifest: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=100)
    (model_dir / "manifest.yaml").write_text(text)


def read(model_dir: Path) -> dict:
    return yaml.safe_load((model_dir / "manifest.yaml").read_text())
