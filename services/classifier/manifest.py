"""The serving side's reading of a model manifest (``DIR/<model>/manifest.yaml``).

The manifest is the contract between whoever builds a model and this service (Triton's
``config.pbtxt`` in spirit): output label order, how text becomes the graph's inputs,
thresholds, the batching policy and the version policy.  Parsing is strict and every
error names the file and the field, because a model that fails to load is reported to
operators through ``ListModels`` and the logs with exactly this message.

Two platforms:

* ``onnxruntime``: an ONNX graph per version directory;
* ``cascade``: a virtual model with no version directories that runs ``stages[0]`` and
  escalates texts whose unsafe score (max non-benign probability) falls inside ``band``
  to ``stages[1]``.  Optional ``segments: {max_segments, min_chars, min_words, top_k, max_text_chars,
  floors: {stage: {label: floor}}}``: each text's
  segments (sentences, lines) are scored too, so benign context cannot dilute an attack
  (``services.classifier.segment``); absent, texts are scored by their windows only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.classifier.segment import SegmentSpec
from services.common.errors import ConfigError

MANIFEST = "manifest.yaml"
MODEL_FILE = "model.onnx"
ONNXRUNTIME = "onnxruntime"
CASCADE = "cascade"
TOKEN_IDS = "token_ids"
TEXT = "text"
BENIGN = "benign"


@dataclass(frozen=True)
class InputSpec:
    kind: str  # TOKEN_IDS or TEXT
    names: tuple[str, ...]
    max_sequence_length: int
    window_stride: int
    tokenizer: str | None = None  # file name inside the version directory (token_ids only)


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int
    max_queue_delay_ms: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_rows: int | None = None  # admission bound for this model (default: --queue-capacity)


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version policy: serve the ``latest`` N versions present, or ``specific`` ones."""

    latest: int | None = None
    specific: tuple[int, ...] | None = None

    def select(self, present: Iterable[int]) -> list[int]:
        versions = sorted(set(present))
        if self.specific is not None:
            return [v for v in versions if v in self.specific]
        return versions[-(self.latest or 1) :]

    def describe(self) -> str:
        return f"specific {list(self.specific)}" if self.specific is not None else f"latest {self.latest}"


@dataclass(frozen=True)
class ModelManifest:
    name: str
    labels: tuple[str, ...]
    inputs: InputSpec
    probabilities: str  # output name holding [batch, len(labels)] probabilities
    thresholds: dict[str, float]
    batching: BatchingSpec
    version_policy: VersionPolicy
    shadow_models: tuple[str, ...] = ()
    platform: str = ONNXRUNTIME


@dataclass(frozen=True)
class CascadeManifest:
    name: str
    stages: tuple[str, str]
    band: tuple[float, float]
    shadow_models: tuple[str, ...] = ()
    platform: str = CASCADE
    segments: SegmentSpec | None = None  # None: windows only


Manifest = ModelManifest | CascadeManifest


def load(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/manifest.yaml``; ConfigError says what is wrong."""
    path = model_dir / MANIFEST
    where = f"{model_dir.name}/{MANIFEST}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML: {_first_line(exc)}") from None
    return parse(data, model_dir.name, where)


def parse(data: Any, dir_name: str, where: str = MANIFEST) -> Manifest:
    f = _Fields(where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    name = f.string(data, "name", default=dir_name)
    if name != dir_name:
        raise ConfigError(f"{where}: name {name!r} does not match its directory {dir_name!r}")
    platform = f.string(data, "platform", default=ONNXRUNTIME)
    shadows = tuple(f.string_list(data, "shadow_models", default=[]))
    if name in shadows:
        raise ConfigError(f"{where}: shadow_models: a model cannot shadow itself")
    if platform == CASCADE:
        stages = f.string_list(data, "stages")
        if len(stages) != 2:
            raise ConfigError(f"{where}: stages: expected [first_model, escalation_model], got {len(stages)} names")
        if name in stages:
            raise ConfigError(f"{where}: stages: a cascade cannot contain itself")
        band = f.number_list(data, "band")
        if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ConfigError(f"{where}: band: expected [lo, hi] with 0 <= lo <= hi <= 1, got {band}")
        segments = None
        if data.get("segments") is not None:
            seg = f.mapping(data, "segments")
            fs = _Fields(f"{where}: segments")
            d = SegmentSpec()
            floors: dict[str, dict[str, float]] = {}
            raw = fs.mapping(seg, "floors", default={})
            for model in raw:
                per = _Fields(f"{where}: segments: floors").mapping(raw, model)
                fl = _Fields(f"{where}: segments: floors: {model}")
                floors[str(model)] = {str(k): fl.number(per, k, minimum=0.0) for k in per}
            segments = SegmentSpec(
                max_segments=fs.integer(seg, "max_segments", default=d.max_segments, minimum=2),
                min_chars=fs.integer(seg, "min_chars", default=d.min_chars, minimum=1),
                min_words=fs.integer(seg, "min_words", default=d.min_words, minimum=0),
                top_k=fs.integer(seg, "top_k", default=d.top_k, minimum=0),
                max_text_chars=fs.integer(seg, "max_text_chars", default=d.max_text_chars, minimum=0),
                floors=floors,
            )
        return CascadeManifest(name, (stages[0], stages[1]), (band[0], band[1]), shadows, segments=segments)
    if platform != ONNXRUNTIME:
        raise ConfigError(f"{where}: platform: {platform!r} is not supported (onnxruntime or cascade)")

    labels = f.string_list(data, "labels")
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: labels: expected a non-empty list of distinct names")
    inputs = f.mapping(data, "inputs")
    fi = _Fields(f"{where}: inputs")
    kind = fi.string(inputs, "kind")
    names = fi.string_list(inputs, "names")
    max_len = fi.integer(inputs, "max_sequence_length", minimum=1)
    stride = fi.integer(inputs, "window_stride", default=max_len, minimum=1)
    tokenizer = None
    if kind == TOKEN_IDS:
        if len(names) != 2:
            raise ConfigError(f"{where}: inputs.names: token_ids models take [input_ids, attention_mask]")
        if max_len < 3:
            raise ConfigError(f"{where}: inputs.max_sequence_length: must leave room for [CLS] and [SEP]")
        tokenizer = fi.string(inputs, "tokenizer", default="tokenizer.json")
        if "/" in tokenizer or tokenizer.startswith("."):
            raise ConfigError(f"{where}: inputs.tokenizer: must be a file name inside the version directory")
    elif kind == TEXT:
        if len(names) != 1:
            raise ConfigError(f"{where}: inputs.names: text models take one input (code points)")
    else:
        raise ConfigError(f"{where}: inputs.kind: {kind!r} is not supported (token_ids or text)")

    outputs = f.mapping(data, "outputs")
    probabilities = _Fields(f"{where}: outputs").string(outputs, "probabilities")

    thresholds_raw = f.mapping(data, "thresholds", default={})
    thresholds: dict[str, float] = {}
    for label, value in thresholds_raw.items():
        if label not in labels:
            raise ConfigError(f"{where}: thresholds: {label!r} is not one of the labels {labels}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{where}: thresholds.{label}: expected a number in [0, 1], got {value!r}")
        thresholds[str(label)] = float(value)

    batching_raw = f.mapping(data, "batching", default={})
    fb = _Fields(f"{where}: batching")
    max_batch = fb.integer(batching_raw, "max_batch_size", default=8, minimum=1)
    delay = fb.number(batching_raw, "max_queue_delay_ms", default=0.0, minimum=0.0)
    preferred = tuple(int(v) for v in fb.number_list(batching_raw, "preferred_batch_sizes", default=[]))
    if any(p < 1 or p > max_batch for p in preferred):
        raise ConfigError(f"{where}: batching.preferred_batch_sizes: each must be in [1, max_batch_size]")
    max_queue_rows = None
    if batching_raw.get("max_queue_rows") is not None:
        max_queue_rows = fb.integer(batching_raw, "max_queue_rows", minimum=1)

    policy_raw = f.mapping(data, "version_policy", default={"latest": 1})
    fp = _Fields(f"{where}: version_policy")
    if set(policy_raw) == {"latest"}:
        policy = VersionPolicy(latest=fp.integer(policy_raw, "latest", minimum=1))
    elif set(policy_raw) == {"specific"}:
        versions = fp.number_list(policy_raw, "specific")
        if not versions or any(v != int(v) or v < 1 for v in versions):
            raise ConfigError(f"{where}: version_policy.specific: expected a non-empty list of versions >= 1")
        policy = VersionPolicy(specific=tuple(sorted({int(v) for v in versions})))
    else:
        raise ConfigError(f"{where}: version_policy: expected {{latest: N}} or {{specific: [versions]}}")

    return ModelManifest(
        name=name,
        labels=tuple(labels),
        inputs=InputSpec(kind, tuple(names), max_len, stride, tokenizer),
        probabilities=probabilities,
        thresholds=thresholds,
        batching=BatchingSpec(max_batch, delay, preferred, max_queue_rows),
        version_policy=policy,
        shadow_models=shadows,
    )


class _Fields:
    """Typed field access whose errors name the file and the field."""

    _MISSING = object()

    def __init__(self, where: str) -> None:
        self.where = where

    def _get(self, data: dict, key: str, default: Any) -> Any:
        if key in data and data[key] is not None:
            return data[key]
        if default is self._MISSING:
            raise ConfigError(f"{self.where}: {key}: required field is missing")
        return default

    def string(self, data: dict, key: str, default: Any = _MISSING) -> str:
        value = self._get(data, key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where}: {key}: expected a non-empty string, got {value!r}")
        return value

    def integer(self, data: dict, key: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        value = self._get(data, key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.where}: {key}: expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.where}: {key}: must be >= {minimum}, got {value}")
        return value

    def number(self, data: dict, key: str, default: Any = _MISSING, minimum: float | None = None) -> float:
        value = self._get(data, key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.where}: {key}: expected a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.where}: {key}: must be >= {minimum}, got {value}")
        return float(value)

    def mapping(self, data: dict, key: str, default: Any = _MISSING) -> dict:
        value = self._get(data, key, default)
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}: {key}: expected a mapping, got {type(value).__name__}")
        return value

    def string_list(self, data: dict, key: str, default: Any = _MISSING) -> list[str]:
        value = self._get(data, key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}: {key}: expected a list of names, got {value!r}")
        return list(value)

    def number_list(self, data: dict, key: str, default: Any = _MISSING) -> list[float]:
        value = self._get(data, key, default)
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{self.where}: {key}: expected a list of numbers, got {value!r}")
        return [float(v) for v in value]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
