"""Evaluate the default models on the held-out test split and write their model cards.

    python -m modelbuild.eval --models build/models [--cache .cache] [--json out.json]

The test split is rebuilt from the same pinned inputs the build used (it is a pure
function of them) and checked against the ``data_hash`` in the manifests.  For the n-gram
model, the fp32 encoder, the int8 encoder and the cascade it reports, per label and per
length band: precision, recall, F1, ROC-AUC and recall at 1% false-positive rate; plus
the fraction of texts the cascade escalates and what int8 costs against fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from modelbuild import manifest as mf
from modelbuild.cascade import run_cascade
from modelbuild.dataset import Dataset, build_dataset
from modelbuild.examples import LABELS
from modelbuild.metrics import flags, label_metrics, unsafe_scores
from modelbuild.model_card import write_cards
from modelbuild.scoring import ModelRunner
from modelbuild.sources import DEBIAN_DOC_DIR, stdlib_dir

log = logging.getLogger("eval")

LENGTH_BANDS = (("<256", 0, 256), ("256-1k", 256, 1024), ("1k-4k", 1024, 4096), (">4k", 4096, 10**12))
CASCADE = "cascade"


def metrics_block(scores: np.ndarray, flagged: np.ndarray, y: list[str]) -> dict:
    """Per-label metrics plus the any-label ``unsafe`` row."""
    labels = list(LABELS)
    out = {
        lab: label_metrics(scores[:, i], flagged[:, i], y, lab).as_dict()
        for i, lab in enumerate(labels)
        if lab != "benign"
    }
    y_unsafe = ["unsafe" if v != "benign" else "benign" for v in y]
    out["unsafe"] = label_metrics(unsafe_scores(scores, labels), flagged.any(axis=1), y_unsafe, "unsafe").as_dict()
    return out


def breakdowns(scores: np.ndarray, flagged: np.ndarray, test) -> dict:
    y = [e.label for e in test]
    lengths = np.array([len(e.text) for e in test])
    by_len = {}
    for name, lo, hi in LENGTH_BANDS:
        sel = np.flatnonzero((lengths >= lo) & (lengths < hi))
        by_len[name] = {
            "n": int(sel.size),
            "n_benign": int(sum(y[i] == "benign" for i in sel)),
            **metrics_block(scores[sel], flagged[sel], [y[i] for i in sel]),
        }
    by_source = {}
    any_flag = flagged.any(axis=1)
    for src, lab in sorted({(e.source, e.label) for e in test}):
        sel = [i for i, e in enumerate(test) if e.source == src and e.label == lab]
        right = [not any_flag[i] if lab == "benign" else bool(flagged[i, LABELS.index(lab)]) for i in sel]
        by_source[f"{src} -> {lab}"] = {
            "label": lab,
            "n": len(sel),
            "flagged_rate": round(float(any_flag[sel].mean()), 4),
            "correct_label_rate": round(float(np.mean(right)), 4),
        }
    return {"overall": metrics_block(scores, flagged, y), "by_length": by_len, "by_source": by_source}


def evaluate(models_dir: Path, cache_dir: Path, dataset: Dataset | None = None, write: bool = True) -> dict:
    models_dir = Path(models_dir)
    manifests = {m: mf.read(models_dir / m) for m in mf.MODELS}
    ds = dataset or build_dataset(Path(cache_dir), stdlib_dir(), DEBIAN_DOC_DIR)
    expected = manifests[mf.ENCODER]["build"]["data_hash"]
    if ds.data_hash != expected:
        log.warning(
            "dataset hash %s differs from the build's %s: inputs changed since the build",
            ds.data_hash[:12],
            expected[:12],
        )
    test = ds.split("test")
    texts = [e.text for e in test]
    y = [e.label for e in test]
    labels = list(LABELS)

    scores, timing = {}, {}
    for name in mf.MODELS:
        runner = ModelRunner(models_dir / name)
        t0 = time.perf_counter()
        scores[name] = runner.score(texts)
        timing[name] = time.perf_counter() - t0
        log.info("scored %d test texts with %s in %.1fs", len(texts), name, timing[name])

    th = {m: manifests[m]["thresholds"] for m in mf.MODELS}
    band = tuple(manifests[mf.NGRAM]["cascade"]["band"])
    cascade = run_cascade(scores[mf.NGRAM], scores[mf.ENCODER], labels, band, th[mf.NGRAM], th[mf.ENCODER])

    results: dict = {
        "data_hash": ds.data_hash,
        "n_test": len(test),
        "test_label_counts": {lab: y.count(lab) for lab in labels},
        "models": {},
    }
    for name in mf.MODELS:
        results["models"][name] = {
            "thresholds": th[name],
            "seconds_on_test": round(timing[name], 2),
            **breakdowns(scores[name], flags(scores[name], labels, th[name]), test),
        }
    results["models"][CASCADE] = {
        "band": list(band),
        "escalated_fraction": round(cascade.escalated_fraction, 4),
        "escalated_fraction_benign": round(float(cascade.escalated[np.asarray(y) == "benign"].mean()), 4),
        "seconds_on_test_estimate": round(timing[mf.NGRAM] + cascade.escalated_fraction * timing[mf.ENCODER], 2),
        **breakdowns(cascade.scores, cascade.flagged, test),
    }
    f32, i8 = scores[mf.ENCODER], scores[mf.ENCODER_INT8]
    results["int8_vs_fp32"] = {
        "max_abs_prob_diff": round(float(np.abs(f32 - i8).max()), 4),
        "mean_abs_prob_diff": round(float(np.abs(f32 - i8).mean()), 5),
        "decision_agreement": round(
            float((flags(f32, labels, th[mf.ENCODER]) == flags(i8, labels, th[mf.ENCODER_INT8])).all(axis=1).mean()), 4
        ),
        "size_mb": {
            m: round((models_dir / m / "1" / "model.onnx").stat().st_size / 1e6, 1)
            for m in (mf.ENCODER, mf.ENCODER_INT8)
        },
        "speedup_on_test": round(timing[mf.ENCODER] / max(timing[mf.ENCODER_INT8], 1e-9), 2),
    }
    results["dataset_summary"] = ds.summary()
    if write:
        write_cards(models_dir, results, manifests)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelbuild.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="model repository to evaluate")
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="download cache used by the build")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    results = evaluate(args.models, args.cache)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results["models"].items():
        row = r["overall"]["unsafe"]
        print(
            f"{name:28s} unsafe P={row['precision']:.3f} R={row['recall']:.3f} F1={row['f1']:.3f} "
            f"AUC={row['auc']:.3f} R@1%FPR={row['recall_at_1pct_fpr']:.3f}"
            + (f" escalated={r['escalated_fraction']:.1%}" if name == CASCADE else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
