"""Evaluate the default models on the held-out test split and write their model cards.

    python -m modelbuild.eval --models build/models [--cache .cache] [--json out.json]

The test split is rebuilt from the same pinned inputs the build used (it is a pure
function of them) and checked against the ``data_hash`` in the manifests.  For the n-gram
model, the fp32 encoder, the int8 encoder and the cascade it reports, per label and per
length band: precision, recall, F1, ROC-AUC and recall at 1% false-positive rate; plus
the fraction of texts the cascade escalates and what int8 costs against fp32.

Per slice (``modelbuild.slices``): each benign slice's false-positive rate and each attack
slice's recall at the manifest thresholds (chosen on validation so every benign slice
meets its false-positive target), plus the test attacks embedded in benign text at
several depths and obfuscated nine ways (raw, and after ``services.enforcer.detectors.textnorm`` as
the enforcer screens them).  Everything is written to ``<models>/eval.json``;
``gate()`` compares that with the committed baseline (``make eval``; a unit test fails a
build whose recall on any slice drops more than ``GATE_TOLERANCE`` below it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelbuild import completions, variants
from modelbuild import manifest as mf
from modelbuild.cascade import run_cascade
from modelbuild.dataset import SEED, Dataset, build_dataset
from modelbuild.examples import LABELS
from modelbuild.metrics import flags, label_metrics, recall_at_fpr, unsafe_scores
from modelbuild.model_card import write_cards
from modelbuild.scoring import ModelRunner
from modelbuild.slices import (
    ATTACK_SLICES,
    BENIGN_TARGET_FPR,
    OUTPUT_ATTACK_SLICES,
    OUTPUT_BENIGN_TARGET_FPR,
    output_slice_of,
    slice_of,
)
from modelbuild.sources import DEBIAN_DOC_DIR, stdlib_dir
from services.classifier import manifest as serving_manifest
from services.classifier import segment
from services.enforcer.detectors import textnorm

log = logging.getLogger("eval")

LENGTH_BANDS = (("<256", 0, 256), ("256-1k", 256, 1024), ("1k-4k", 1024, 4096), (">4k", 4096, 10**12))
CASCADE = "cascade"
EVAL_JSON = "eval.json"
BASELINE = Path(__file__).resolve().parent / "eval_baseline.json"
#: A build fails the gate when a slice's recall drops, or a benign slice's false-positive
#: rate rises, by more than this against the committed baseline.
GATE_TOLERANCE = 0.02


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
    return {
        "overall": metrics_block(scores, flagged, y),
        "by_length": by_len,
        "by_source": by_source,
        "by_slice": by_slice(scores, flagged, test),
    }


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

    scores, rows, timing = {}, {}, {}
    for name in mf.MODELS:
        runner = ModelRunner(models_dir / name)
        t0 = time.perf_counter()
        scores[name], rows[name] = runner.score_rows(texts)
        timing[name] = time.perf_counter() - t0
        log.info("scored %d test texts with %s in %.1fs", len(texts), name, timing[name])

    th = {m: manifests[m]["thresholds"] for m in mf.MODELS}
    band = tuple(manifests[mf.NGRAM]["cascade"]["band"])
    scorer = CascadeScorer(models_dir, manifests)
    scorer.remember(texts, (scores[mf.NGRAM], rows[mf.NGRAM]), (scores[mf.ENCODER], rows[mf.ENCODER]))
    # The cascade as served: windows and segments (when its manifest names them).
    served = scorer.run(texts)
    cascade = run_cascade(served.first, served.second, labels, band, th[mf.NGRAM], th[mf.ENCODER])
    # The same models and thresholds on windows only: what segments change.
    plain = scorer.run(texts, segments=False)
    windows_only = run_cascade(plain.first, plain.second, labels, band, th[mf.NGRAM], th[mf.ENCODER])

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
        "segments": scorer.segments_block(),
        "rows_per_text": served.rows_per_text(),
        **breakdowns(cascade.scores, cascade.flagged, test),
        "windows_only": {
            "escalated_fraction": round(windows_only.escalated_fraction, 4),
            "rows_per_text": plain.rows_per_text(),
            "overall": metrics_block(windows_only.scores, windows_only.flagged, y),
            "by_slice": by_slice(windows_only.scores, windows_only.flagged, test),
        },
    }
    if BASELINE.is_file():
        results["models"][CASCADE]["baseline_by_slice"] = json.loads(BASELINE.read_text())["models"][CASCADE][
            "by_slice"
        ]
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
    if all((models_dir / m / "manifest.yaml").is_file() for m in mf.OUTPUT_MODELS):
        results["output"] = evaluate_output(models_dir, ds)
    t0 = time.perf_counter()
    results["variants"] = variant_metrics(scorer, test)
    log.info("scored the embedded and obfuscated variants in %.1fs", time.perf_counter() - t0)
    results["dataset_summary"] = ds.summary()
    if write:
        write_cards(models_dir, results, manifests)
        (models_dir / EVAL_JSON).write_text(json.dumps(results, indent=2) + "\n")
    return results


def by_slice(scores: np.ndarray, flagged: np.ndarray, test) -> dict:
    """Benign slices: false-positive rate (any label flagged). Attack slices: recall (any
    label flagged) and recall at 1% FPR against all benign test texts."""
    labels = list(LABELS)
    sl = np.array([slice_of(e) for e in test])
    is_benign = np.array([e.label == "benign" for e in test])
    anyf = flagged.any(axis=1)
    u = unsafe_scores(scores, labels)
    out = {}
    for name in [*BENIGN_TARGET_FPR, *ATTACK_SLICES]:
        sel = sl == name
        if not sel.any():
            continue
        if name in BENIGN_TARGET_FPR:
            out[name] = {
                "kind": "benign",
                "n": int(sel.sum()),
                "fpr": round(float(anyf[sel].mean()), 4),
                "target_fpr": BENIGN_TARGET_FPR[name],
            }
        else:
            out[name] = {
                "kind": "attack",
                "n": int(sel.sum()),
                "recall": round(float(anyf[sel].mean()), 4),
                "recall_at_1pct_fpr": round(recall_at_fpr(u[sel], u[is_benign]), 4),
            }
    return out


@dataclass
class CascadeRun:
    """What a cascade computed for some texts, as the server computes it."""

    first: np.ndarray  # [texts, labels]: the first stage's scores (windows and segments)
    second: np.ndarray  # [texts, labels]: the second stage's, for escalated texts (zeros elsewhere)
    escalated: np.ndarray  # [texts] bool
    rows_first: np.ndarray  # [texts]: model rows the first stage ran
    rows_second: np.ndarray  # [texts]: model rows the second stage ran (0 when not escalated)

    def rows_per_text(self) -> dict:
        n = max(len(self.escalated), 1)
        esc = max(int(self.escalated.sum()), 1)
        return {
            "first_stage": round(float(self.rows_first.sum()) / n, 3),
            "second_stage": round(float(self.rows_second.sum()) / n, 3),
            "second_stage_per_escalated_text": round(float(self.rows_second.sum()) / esc, 3),
        }


class CascadeScorer:
    """The n-gram model, the fp32 encoder, the band and the segment spec, scoring any
    texts exactly like serving (``services.classifier.pipeline``): the first stage scores
    windows and segments, escalated texts get the encoder on their windows and on the
    ``top_k`` segments the first stage found most unsafe.  Window scores are kept per
    text, so scoring the same texts with and without segments runs each window once."""

    def __init__(self, models_dir: Path, manifests: dict) -> None:
        self.ngram = ModelRunner(models_dir / mf.NGRAM)
        self.encoder = ModelRunner(models_dir / mf.ENCODER)
        self.th = {m: manifests[m]["thresholds"] for m in (mf.NGRAM, mf.ENCODER)}
        self.band = tuple(manifests[mf.NGRAM]["cascade"]["band"])
        # Read by the server's own parser: the eval segments texts exactly as served.
        cascade = models_dir / mf.CASCADE
        self.spec = serving_manifest.load(cascade).segments if (cascade / "manifest.yaml").is_file() else None
        self.floors = self.spec.floors if self.spec else {}
        self._memo: dict[str, dict[str, tuple[np.ndarray, int]]] = {"ngram": {}, "encoder": {}}

    def segments_block(self) -> dict | None:
        return None if self.spec is None else mf.segments_dict(self.spec)

    def remember(self, texts: list[str], ngram: tuple, encoder: tuple) -> None:
        """Window scores (and row counts) already computed for ``texts``."""
        for name, (sc, rows) in (("ngram", ngram), ("encoder", encoder)):
            memo = self._memo[name]
            for t, v, r in zip(texts, sc, rows, strict=True):
                memo[t] = (v, int(r))

    def _windows(self, name: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        memo, runner = self._memo[name], self.ngram if name == "ngram" else self.encoder
        missing = list(dict.fromkeys(t for t in texts if t not in memo))
        if missing:
            sc, rows = runner.score_rows(missing)
            for t, v, r in zip(missing, sc, rows, strict=True):
                memo[t] = (v, int(r))
        if not texts:
            return np.zeros((0, len(runner.labels)), np.float32), np.zeros(0, np.int64)
        return np.stack([memo[t][0] for t in texts]), np.array([memo[t][1] for t in texts], np.int64)

    def run(self, texts: list[str], segments: bool = True) -> CascadeRun:
        labels = list(LABELS)
        spec = self.spec if segments else None
        first, rows1 = self._windows("ngram", texts)
        pieces, owners = segment.segment_texts(texts, spec) if spec else ([], np.zeros(0, np.int64))
        seg1 = np.zeros((0, len(labels)), np.float32)
        if pieces:
            seg1, seg_rows = self.ngram.score_rows(pieces)
            first = segment.fold(first, seg1, owners, labels, self.floors.get(mf.NGRAM))
            rows1 = rows1 + np.bincount(owners, weights=seg_rows, minlength=len(texts)).astype(np.int64)
        u = unsafe_scores(first, labels) if len(texts) else np.zeros(0)
        esc = np.flatnonzero((u >= self.band[0]) & (u <= self.band[1]))
        second = np.zeros_like(first)
        rows2 = np.zeros(len(texts), np.int64)
        if esc.size:
            enc, enc_rows = self._windows("encoder", [texts[i] for i in esc])
            top = segment.top_segments(seg1, owners, labels, spec.top_k if spec else 0, esc)
            if top.size:
                rank = np.full(len(texts), -1, np.int64)
                rank[esc] = np.arange(esc.size)
                seg2, seg2_rows = self.encoder.score_rows([pieces[i] for i in top])
                enc = segment.fold(enc, seg2, rank[owners[top]], labels, self.floors.get(mf.ENCODER))
                enc_rows = enc_rows + np.bincount(rank[owners[top]], weights=seg2_rows, minlength=esc.size).astype(
                    np.int64
                )
            second[esc], rows2[esc] = enc, enc_rows
        escalated = np.zeros(len(texts), bool)
        escalated[esc] = True
        return CascadeRun(first, second, escalated, rows1, rows2)

    def flagged(self, texts: list[str], segments: bool = True) -> np.ndarray:
        """Per text: any label flagged by the cascade."""
        if not texts:
            return np.zeros(0, bool)
        r = self.run(texts, segments)
        res = run_cascade(r.first, r.second, list(LABELS), self.band, self.th[mf.NGRAM], self.th[mf.ENCODER])
        return res.flagged.any(axis=1)

    def flagged_screened(self, texts: list[str]) -> np.ndarray:
        """Like the enforcer: what ``textnorm.classifier_texts`` gives for each text (the
        normalised text, what was decoded and rewritten from it), any flagged."""
        return self.flagged_any([screened_texts(t) for t in texts])

    def flagged_any(self, groups: list[list[str]]) -> np.ndarray:
        """Per group of texts: any of them flagged."""
        owner = [i for i, g in enumerate(groups) for _ in g]
        f = self.flagged([t for g in groups for t in g])
        out = np.zeros(len(groups), bool)
        np.logical_or.at(out, np.asarray(owner, dtype=np.int64), f)
        return out


def screened_texts(text: str) -> list[str]:
    """What the enforcer's classifier call screens for ``text``."""
    return textnorm.classifier_texts(textnorm.normalize(text))


def variant_metrics(scorer: CascadeScorer, test) -> dict:
    """Cascade recall on the test attacks alone, embedded, and obfuscated (per label too);
    the embedded ones also on windows only (segments off, same thresholds), with the
    model rows each text cost."""
    out: dict = {"embedded": {}, "obfuscated": {}}
    for depth, rows in variants.embedded(test).items():
        texts = [e.text for e in rows]
        served, plain = scorer.run(texts), scorer.run(texts, segments=False)
        flagged = {}
        for key, r in (("segments", served), ("windows_only", plain)):
            res = run_cascade(r.first, r.second, list(LABELS), scorer.band, scorer.th[mf.NGRAM], scorer.th[mf.ENCODER])
            flagged[key] = res.flagged.any(axis=1)
        out["embedded"][depth] = {
            **_recall_rows(flagged["segments"], rows),
            "rows_per_text": served.rows_per_text(),
            "windows_only": {**_recall_rows(flagged["windows_only"], rows), "rows_per_text": plain.rows_per_text()},
        }
    for name, rows in variants.obfuscated(test).items():
        texts = [e.text for e in rows]
        out["obfuscated"][name] = {
            "raw": _recall_rows(scorer.flagged(texts), rows),
            "after_textnorm": _recall_rows(scorer.flagged_screened(texts), rows),
        }
    out["benign_screened"] = benign_screened(scorer, test)
    return out


def benign_screened(scorer: CascadeScorer, test) -> dict:
    """What screening as the enforcer does (``flagged_screened``: the normalised text and
    what was decoded or rewritten from it) costs on the benign test texts, per benign
    slice: the false-positive rate raw and after textnorm, and the share of texts that
    the classifier screens as more than one text."""
    benign = [e for e in test if e.label == "benign"]
    texts = [e.text for e in benign]
    groups = [screened_texts(t) for t in texts]
    raw, screened = scorer.flagged(texts), scorer.flagged_any(groups)
    more = np.array([len(g) > 1 for g in groups], bool)
    sl = np.array([slice_of(e) for e in benign])
    out = {}
    for name in ["all", *BENIGN_TARGET_FPR]:
        sel = np.ones(len(benign), bool) if name == "all" else sl == name
        if not sel.any():
            continue
        out[name] = {
            "n": int(sel.sum()),
            "fpr_raw": round(float(raw[sel].mean()), 4),
            "fpr_after_textnorm": round(float(screened[sel].mean()), 4),
            "more_than_one_text": round(float(more[sel].mean()), 4),
        }
    return out


def _recall_rows(flagged: np.ndarray, rows) -> dict:
    out = {"n": len(rows), "recall": round(float(flagged.mean()), 4) if len(rows) else None}
    for lab in sorted({e.label for e in rows}):
        sel = np.array([e.label == lab for e in rows])
        out[lab] = round(float(flagged[sel].mean()), 4)
    return out


def evaluate_output(models_dir: Path, ds: Dataset) -> dict:
    """The output models on the completion test split: harmful recall, recall at 1% FPR,
    false-positive rate per benign completion slice, and how many harmful completions the
    n-gram stage alone passes as confidently benign (below the band)."""
    labels = list(completions.LABELS)
    ex = completions.build_output_examples(ds.examples, salt=f"output-split:{SEED}")
    test = [e for e in ex if e.split == "test"]
    texts, y = [e.text for e in test], [e.label for e in test]
    sl = np.array([output_slice_of(e) for e in test])
    manifests = {m: mf.read(models_dir / m) for m in mf.OUTPUT_MODELS}
    th = {m: manifests[m]["thresholds"] for m in mf.OUTPUT_MODELS}
    scores = {m: ModelRunner(models_dir / m).score(texts) for m in mf.OUTPUT_MODELS}
    band = tuple(manifests[mf.OUTPUT_NGRAM]["cascade"]["band"])
    cas = run_cascade(
        scores[mf.OUTPUT_NGRAM], scores[mf.OUTPUT_ENCODER], labels, band, th[mf.OUTPUT_NGRAM], th[mf.OUTPUT_ENCODER]
    )
    harmful = np.asarray(y) == "harmful"
    out: dict = {"n_test": len(test), "band": list(band), "models": {}}
    for name, sc, fl in [
        *((m, scores[m], flags(scores[m], labels, th[m])) for m in mf.OUTPUT_MODELS),
        (mf.OUTPUT_CASCADE, cas.scores, cas.flagged),
    ]:
        anyf = fl.any(axis=1)
        block = {"harmful": label_metrics(sc[:, 1], fl[:, 1], y, "harmful").as_dict(), "by_slice": {}}
        for name_s in [*OUTPUT_BENIGN_TARGET_FPR, *OUTPUT_ATTACK_SLICES]:
            sel = sl == name_s
            if sel.any():
                key = "recall" if name_s in OUTPUT_ATTACK_SLICES else "fpr"
                block["by_slice"][name_s] = {"n": int(sel.sum()), key: round(float(anyf[sel].mean()), 4)}
        out["models"][name] = block
    u = scores[mf.OUTPUT_NGRAM][:, 1]
    out["models"][mf.OUTPUT_CASCADE]["escalated_fraction"] = round(cas.escalated_fraction, 4)
    out["models"][mf.OUTPUT_CASCADE]["harmful_below_band"] = round(float(np.mean(u[harmful] < band[0])), 4)
    out["dataset_summary"] = {
        f"{src} -> {lab}": {
            sp: sum(1 for e in ex if e.source == src and e.label == lab and e.split == sp)
            for sp in ("train", "val", "test")
        }
        for src, lab in sorted({(e.source, e.label) for e in ex})
    }
    return out


def _gated_slices(results: dict) -> dict[str, dict]:
    """The per-slice blocks the gate compares: the default cascade's, and the output cascade's."""
    out = {f"prompt/{k}": v for k, v in results["models"][CASCADE]["by_slice"].items()}
    if "output" in results:
        out |= {f"output/{k}": v for k, v in results["output"]["models"][mf.OUTPUT_CASCADE]["by_slice"].items()}
    return out


def gate(results: dict, baseline: dict, tolerance: float = GATE_TOLERANCE) -> list[str]:
    """The regressions of ``results`` against ``baseline`` (both eval.json-shaped): attack
    slices whose cascade recall fell, benign slices whose FPR rose, by more than ``tolerance``."""
    failures = []
    now = _gated_slices(results)
    for name, base in _gated_slices(baseline).items():
        cur = now.get(name)
        if cur is None:
            failures.append(f"{name}: slice missing from the evaluation")
        elif "recall" in base and cur["recall"] < base["recall"] - tolerance:
            failures.append(f"{name}: recall {cur['recall']:.3f} < baseline {base['recall']:.3f} - {tolerance}")
        elif "fpr" in base and cur["fpr"] > base["fpr"] + tolerance:
            failures.append(f"{name}: FPR {cur['fpr']:.3f} > baseline {base['fpr']:.3f} + {tolerance}")
    return failures


def baseline_of(results: dict) -> dict:
    """The part of eval.json the gate compares: the cascades' per-slice numbers."""
    base = {
        "data_hash": results["data_hash"],
        "tolerance": GATE_TOLERANCE,
        "models": {CASCADE: {"by_slice": results["models"][CASCADE]["by_slice"]}},
    }
    if "output" in results:
        base["output"] = {
            "models": {mf.OUTPUT_CASCADE: {"by_slice": results["output"]["models"][mf.OUTPUT_CASCADE]["by_slice"]}}
        }
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelbuild.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="model repository to evaluate")
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="download cache used by the build")
    parser.add_argument("--json", type=Path, help="also write the raw results here (always: <models>/eval.json)")
    parser.add_argument(
        "--baseline", type=Path, default=BASELINE, help="committed per-slice baseline to gate on (default: %(default)s)"
    )
    parser.add_argument("--write-baseline", action="store_true", help="replace the baseline with these results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    results = evaluate(args.models, args.cache)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_baseline:
        args.baseline.write_text(json.dumps(baseline_of(results), indent=2) + "\n")
        print(f"baseline written: {args.baseline}")
        return 0
    for name, r in results["models"].items():
        row = r["overall"]["unsafe"]
        print(
            f"{name:28s} unsafe P={row['precision']:.3f} R={row['recall']:.3f} F1={row['f1']:.3f} "
            f"AUC={row['auc']:.3f} R@1%FPR={row['recall_at_1pct_fpr']:.3f}"
            + (f" escalated={r['escalated_fraction']:.1%}" if name == CASCADE else "")
        )
    for name, r in results["models"][CASCADE]["by_slice"].items():
        print(
            f"  cascade {name:24s} n={r['n']:5d} "
            + (f"FPR={r['fpr']:.3f}" if r["kind"] == "benign" else f"recall={r['recall']:.3f}")
        )
    failures = gate(results, json.loads(args.baseline.read_text())) if args.baseline.is_file() else []
    for f in failures:
        print(f"GATE: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
