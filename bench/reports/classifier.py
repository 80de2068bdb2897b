"""The classifier service's report (bench.classifier's block in bench/RESULTS.md): the
machine's matmul rate, raw ONNX Runtime per model and batch, the service under load, and
the two compared."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.reports import num

MINILM, INT8, NGRAM, CASCADE = "prompt_guard_minilm", "prompt_guard_minilm_int8", "prompt_guard_ngram", "prompt_guard"


@dataclass
class RawResult:
    model: str
    batch: int
    iters: int
    mean_s: float  # per batch
    min_s: float
    p50_s: float
    rows_per_s: float
    tokens_per_row: int
    fp32_ops_per_row: float
    int8_ops_per_row: float

    @property
    def tokens_per_s(self) -> float:
        return self.rows_per_s * self.tokens_per_row

    @property
    def ops_per_s(self) -> float:
        return self.rows_per_s * (self.fp32_ops_per_row + self.int8_ops_per_row)


@dataclass
class Step:
    model: str
    loadgen: str  # h2load | python
    clients: int
    streams: int
    duration_s: float
    warmup_s: float
    req_per_s: float = 0.0
    answered: int = 0  # h2load: HTTP 200 in the measured window; python: OK answers
    ok_server: int = 0  # grpc_server_handled_total{OK} over the whole step (warm-up included)
    grpc_codes: dict[str, int] = field(default_factory=dict)
    non_ok: int = 0
    client_failures: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    batch: dict[str, float] = field(default_factory=dict)  # model stage -> mean rows per batch
    queue_ms: dict[str, float] = field(default_factory=dict)
    infer_ms: dict[str, float] = field(default_factory=dict)
    padding: dict[str, float] = field(default_factory=dict)  # share of positions that were padding
    answered_by: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    rejected: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    threads: list[tuple[str, float]] = field(default_factory=list)  # busiest service threads, % of a core
    error_sample: str = ""

    @property
    def level(self) -> str:
        return f"py c={self.clients}" if self.loadgen == "python" else f"{self.clients}x{self.streams}"

    @property
    def in_flight(self) -> int:
        return self.clients * max(1, self.streams)

    @property
    def verified(self) -> bool:
        return self.non_ok == 0 and self.client_failures == 0 and self.ok_server >= self.answered > 0

    @property
    def escalated(self) -> float:
        total = sum(self.answered_by.values())
        return self.answered_by.get(MINILM, 0) / total if total else float("nan")


def _f(v: float, digits: int = 1) -> str:
    return num(v, digits)


def peak(mm: list[dict], kind: str, numpy_default: bool = False) -> float:
    rows = [r for r in mm if r["kind"] == kind]
    if numpy_default:
        rows = [r for r in rows if r["what"].startswith("numpy") and "default" in r["what"]]
    return max((r["flops"] for r in rows), default=float("nan"))


def utilisation(r: RawResult, fp32_peak: float, int8_peak: float) -> float:
    """Time the MatMul work would take at the measured matmul rates / time it took."""
    ideal = r.fp32_ops_per_row / fp32_peak + (r.int8_ops_per_row / int8_peak if r.int8_ops_per_row else 0.0)
    return ideal * r.rows_per_s


def render(run: dict) -> str:
    m = run["machine"]
    mm: list[dict] = run["matmul"]
    raw: list[RawResult] = run["raw"]
    info = run["raw_info"]
    steps: list[Step] = run["steps"]
    fp32_best, int8_best = peak(mm, "fp32"), peak(mm, "int8")
    fp32_np = peak(mm, "fp32", numpy_default=True)
    lines: list[str] = []
    add = lines.append
    lw = run["load"]
    add(f"Generated {m['date']} by `python -m bench.classifier {' '.join(run['argv'])}` in {run['elapsed_s']:.0f} s.")
    add("")
    add(
        f"**Machine:** {m['nproc']} cores ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']}, "
        f"onnxruntime {run['versions']['onnxruntime']}, numpy {run['versions']['numpy']} "
        f"({run['versions']['blas']}), {run['versions']['h2load']}. Execution provider: "
        f"**{run['provider']}**. **No GPU was lent to this task, so the CUDA / fp16 table could not be measured.**"
    )
    add("")
    add(
        f"**Load:** load average {lw['start']:.2f} at start; {'below' if lw['quiet'] else 'still not below'} "
        f"{lw['max_load']} after {lw['waited_s']:.0f} s of waiting ({lw['loadavg']} then), "
        f"{lw['loadavg_end']} at the end. The service, h2load and the harness share the 2 cores, and "
        "other sessions' jobs (tests, builds) may run on the same box: *CPU other* in every table shows "
        "what the rest of the box used during that step (100% = one core)."
    )
    if not lw["quiet"]:
        add("")
        add(
            f"> **Warning:** the 1-minute load average was still {lw['end']:.2f} (≥ {lw['max_load']}) after "
            f"{lw['waited_s']:.0f} s; the run went ahead anyway, so the numbers below are pessimistic."
        )
    if lw["busy"]:
        add("")
        add("Busiest other processes at start: " + ", ".join(f"`{n}` {p:.0f}%" for n, p in lw["busy"]) + ".")
    add("")
    add(
        f"Input: one English prompt of {run['prompt_chars']} characters (`PROMPT` in bench/classifier.py, also in "
        f"bench/ghz/classifier.json) = {info[MINILM]['row_width']} tokens for the encoders (one full window) and "
        f"{info[NGRAM]['row_width']} code points for the n-gram model (one window)."
    )
    add("")
    add("### Matrix multiply (the machine's measured FLOP/s)")
    add("")
    n = run["matmul_n"]
    add(f"{n}×{n} operands, best of 10 after a warm-up; one fresh process per numpy environment.")
    add("")
    add("| kernel | threads | time (ms) | GFLOP/s (int8: GOP/s) |")
    add("|---|---:|---:|---:|")
    for r in mm:
        add(f"| {r['what']} | {r['threads']} | {r['seconds'] * 1e3:.2f} | {r['flops'] / 1e9:,.0f} |")
    add("")
    add(
        f"Reference below: **fp32 {fp32_best / 1e9:,.0f} GFLOP/s** (best measured fp32 matmul, all cores) and "
        f"**int8 {int8_best / 1e9:,.0f} GOP/s** (MatMulInteger); numpy's default OpenBLAS kernel gives only "
        f"{fp32_np / 1e9:,.0f} GFLOP/s here (see the notes)."
    )
    add("")
    add("### Raw ONNX Runtime (no service)")
    add("")
    g = info[MINILM]["graph_ops"]
    gi = info[INT8]["graph_ops"]
    add(
        "Same session options and featurizer as the service (`services.classifier.runtime.OnnxModel`, "
        "`RuntimeOptions()`: all graph optimisations, sequential, intra-op threads = ORT default, no spinning); "
        "the prompt's row repeated to the batch size; mean over ≥ 3 runs and ≥ "
        f"{run['raw_seconds']:g} s per cell after one warm-up run."
    )
    add("")
    add(
        f"FLOPs per row (L = {info[MINILM]['row_width']}): formula 6 × [2·L·(4·H² + 2·H·I) + 2·2·L²·H] + head "
        f"(2·384·256 + 2·256·4), H = 384, I = 1536 → **{info[MINILM]['formula_flops'] / 1e9:.3f} GFLOP**; counted "
        f"from the graph's {g['nodes']} MatMul nodes (ONNX shape inference at batch 1) → "
        f"{g['fp32'] / 1e9:.3f} GFLOP. int8 model: {gi['int8'] / 1e9:.3f} G int8 ops (MatMulInteger: Q, K, V, "
        f"output and FFN-up) + {gi['fp32'] / 1e9:.3f} GFLOP fp32 (attention, FFN-down and head stay fp32). "
        "Softmax, GELU, LayerNorm and embeddings are not counted."
    )
    add("")
    add(
        "| model | batch | ms/batch | rows/s | tokens/s | GOP/s achieved | of fp32 peak | of numpy default | "
        "MatMul utilisation |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in raw:
        if r.model == NGRAM:
            add(
                f"| {r.model} | {r.batch} | {r.mean_s * 1e3:.2f} | {r.rows_per_s:,.0f} | {r.tokens_per_s:,.0f} chars/s "
                "| – | – | – | – |"
            )
            continue
        add(
            f"| {r.model} | {r.batch} | {r.mean_s * 1e3:.1f} | {r.rows_per_s:,.1f} | {r.tokens_per_s:,.0f} "
            f"| {r.ops_per_s / 1e9:,.0f} | {r.ops_per_s / fp32_best:.0%} | {r.ops_per_s / fp32_np:.0%} "
            f"| {utilisation(r, fp32_best, int8_best):.0%} |"
        )
    add("")
    add(
        "*GOP/s achieved* counts fp32 FLOPs plus int8 ops per second. *MatMul utilisation* is the time the "
        "counted MatMul work would take at the measured matmul rates (fp32 part at the fp32 reference, int8 "
        "part at the int8 reference) divided by the time it took; for the fp32 model it equals *of fp32 peak*."
    )
    mix = run.get("raw_mix")
    if mix:
        add("")
        add(
            f"Raw cascade on the benign mix ({mix['texts']} texts, one text per row for the n-gram stage): "
            f"{mix['escalated']} texts ({mix['escalated'] / mix['texts']:.0%}) have an n-gram unsafe score in the "
            f"band [{mix['band'][0]:g}, {mix['band'][1]:g}] and go to MiniLM; the whole mix takes "
            f"{mix['pass_ms']:.1f} ms (length-sorted batches of ≤ 32) = **{mix['texts_per_s']:,.0f} texts/s**."
        )
    add("")
    add("### The service under gRPC load (h2load, one text per request)")
    add("")
    add(
        f"`python -m services.classifier` (all models loaded, default settings: batch wait `auto` = eager on CPU, "
        f"intra-op threads = ORT default) ready in {run['service_start_s']:.1f} s. h2load runs in its own process: "
        f"`-c CLIENTS -m STREAMS --warm-up-time {run['warmup']:g}s -D SECONDS`; 1×1 runs "
        f"{run['low_duration']:g} s, sweep steps {run['duration']:g} s. *verified*: the service's "
        '`grpc_server_handled_total{grpc_code="OK"}` grew by at least the answers h2load counted, and no other '
        "code appeared (apart from ≤ 1 CANCELLED per open stream when h2load stops). *batch*: mean rows per "
        "inference, from `classifier_batch_size` (cascade: n-gram / MiniLM)."
    )
    add("")
    add(
        "| model | load | req/s | p50 ms | p99 ms | max ms | batch | queue ms | infer ms/batch | verified "
        "| CPU service | CPU h2load | CPU other | busiest service threads |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for s in steps:
        batch = " / ".join(f"{v:.1f}" for v in s.batch.values()) or "–"
        queue = " / ".join(f"{v:.1f}" for v in s.queue_ms.values()) or "–"
        infer = " / ".join(f"{v:.1f}" for v in s.infer_ms.values()) or "–"
        ver = "yes" if s.verified else f"**no** {s.grpc_codes} fail={s.client_failures}"
        thr = ", ".join(f"{n} {p}%" for n, p in s.threads[:3])
        name = s.model + (" (mix)" if s.loadgen == "python" else "")
        add(
            f"| {name} | {s.level} | {s.req_per_s:,.1f} | {_f(s.p50_ms, 2)} | {_f(s.p99_ms, 2)} | {_f(s.max_ms, 0)} "
            f"| {batch} | {queue} | {infer} | {ver} | {s.cpu.get('service')}% | {s.cpu.get('loadgen')}% "
            f"| {s.cpu.get('other')}% | {thr} |"
        )
    add("")
    add("### Service vs raw ONNX Runtime")
    add("")
    add(
        "Saturation: the best verified req/s of the sweep (one row per request, so req/s = rows/s) against "
        "raw batch-32 rows/s and against the best raw batch size (target ≥ 0.8). Low load: 1×1 p50/p99 "
        "against the mean time of one raw batch-1 inference (target p99 ≤ 2×). *GOP/s in service*: the "
        "saturated rate × ops per row."
    )
    add("")
    add(
        "| model | saturated req/s (at) | raw b32 rows/s | ratio | best raw rows/s (batch) | ratio | GOP/s in service "
        "| 1×1 p50 / p99 ms | raw b1 ms | p50 / p99 ratio |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in run["summary"]:
        add(
            f"| {row['model']} | {row['sat']:,.1f} ({row['sat_at']}) | {row['raw32']:,.1f} | **{row['ratio32']:.2f}** "
            f"| {row['raw_best']:,.1f} (b{row['raw_best_b']}) | {row['ratio_best']:.2f} | {row['gops']} "
            f"| {row['p50']:.2f} / {row['p99']:.2f} | {row['raw1_ms']:.2f} | {row['p50_ratio']:.2f} / "
            f"**{row['p99_ratio']:.2f}** |"
        )
    add("")
    sn = run["sanity"]
    p = sn["prompt"]
    add(
        "Sanity pass (Python gRPC client, before the load): the prompt is "
        + "; ".join(
            f"`{k}` unsafe {v['unsafe']:.2f}{' flagged ' + ','.join(v['flagged']) if v['flagged'] else ''}"
            f"{' answered by ' + v['answered_by'] if v['answered_by'] else ''}, {v['windows']} window"
            for k, v in p.items()
        )
        + f". Benign mix through `{CASCADE}` one text per request: answered by "
        + ", ".join(f"`{k}` {v}" for k, v in sorted(sn["mix"].items()))
        + f" → escalated {sn['mix'].get(MINILM, 0) / max(1, sum(sn['mix'].values())):.0%}; "
        f"{sn['mix_flagged']} of {run['mix_texts']} benign texts flagged."
    )
    mixed = [s for s in steps if s.loadgen == "python"]
    if mixed:
        add("")
        add(
            "Cascade on the benign mix under load (Python grpc.aio driver in a separate process, "
            f"cycling the {run['mix_texts']} texts; `answered_by` read from every response): "
            + "; ".join(
                f"c={s.clients}: {s.req_per_s:,.1f} req/s, p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms, "
                f"escalated {s.escalated:.0%}" + (f" ({s.req_per_s / mix['texts_per_s']:.2f} of raw)" if mix else "")
                for s in mixed
            )
            + ". The driver costs more client CPU per request than h2load (see *CPU h2load*)."
        )
    add("")
    add("### Reproduce")
    add("")
    add("```sh")
    add("apt-get install -y nghttp2-client   # h2load")
    add(f".venv/bin/python -m bench.classifier {' '.join(run['argv'])}".rstrip())
    add("# the service alone, and ghz (reflection) for users:")
    add(".venv/bin/python -m services.classifier --plaintext --listen 127.0.0.1:50052 --models build/models")
    add("ghz --config bench/ghz/classifier.json")
    add("```")
    return "\n".join(lines)
