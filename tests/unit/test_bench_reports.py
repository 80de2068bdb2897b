"""Every bench report renders byte-identical markdown for the same run.

bench/reports/ holds one pure `render(run)` per RESULTS.md block. The builders below
make fixed sample runs (made-up but plausible numbers, chosen to reach every branch of
each renderer: missing values, past-saturation rows, restarts, knob / floor / profile
tables, a box that never went quiet...); tests/unit/bench_reports/*.md are what the
renderers gave for them when they still lived inside the harness modules, so a change
to a report's wording or numbers shows here as a diff to review (and, when meant, the
golden file is rewritten with it).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

NAN = float("nan")
MACHINE = {
    "date": "2026-01-02 03:04 UTC",
    "nproc": "2",
    "cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz",
    "memory": "8 GiB",
    "kernel": "6.1.0-test",
    "python": "3.11.7",
    "loadavg": "0.52 0.61 0.70",
}


def ratelimit(Step, RawResult) -> dict:  # noqa: N803 (classes)
    py = MACHINE["python"]

    def st(kind, workers, clients, streams, dps, **kw):
        base = dict(
            kind=kind, service=f"{workers}w uvloop inflight=4", workers=workers, event_loop="uvloop", inflight=4,
            loadgen="h2load", python=py, clients=clients, streams=streams, duration_s=5.0,
            client_req_per_s=dps * 1.01, decisions_per_s=dps, p50_ms=0.8 * clients, p99_ms=2.1 * streams / 4,
            max_ms=9.5, mean_batch=3.2, redis_rtt_ms=0.41,
            cpu={"service": 97, "redis": 31, "loadgen": 22, "other": 12}, grpc_codes={"OK": int(dps * 5)},
        )  # fmt: skip
        base.update(kw)
        return Step(**base)

    steps = [
        st("sweep", 1, 1, 1, 2100.0),
        st("sweep", 1, 2, 4, 6400.0),
        st("sweep", 1, 4, 32, 7900.0, degraded=3),
        st("rate", 1, 4, 32, 998.0, target_rps=1000),
        st("rate", 1, 4, 32, 4870.0, target_rps=5000, p99_ms=6.3),
        st("tenants", 1, 32, 1, 3100.0, loadgen="python", tenants=1),
        st("tenants", 1, 32, 1, 2950.0, loadgen="python", tenants=5000, client_failures=2),
        st("sweep", 2, 1, 1, 0.0, p50_ms=NAN, p99_ms=NAN, max_ms=NAN, mean_batch=NAN, redis_rtt_ms=NAN),
        st("sweep", 2, 4, 8, 11200.0, worker_cpu=[80, 77], cpu={"service": 157, "redis": 40, "loadgen": 3}),
        st("rate", 2, 4, 32, 1000.5, target_rps=1000),
        st("floor", 1, 4, 16, 0.0, service="floor 1p uvloop", client_req_per_s=15000.0),
        st("floor", 2, 1, 1, 0.0, service="floor 2p uvloop", client_req_per_s=0.0),
        st("knob", 1, 4, 16, 8100.0, service="1w asyncio inflight=4", event_loop="asyncio"),
        st("knob", 1, 4, 16, 8300.0, gc_freeze=True),
        st("knob", 1, 4, 16, 8600.0),
        st("knob", 2, 4, 16, 10100.0, python="3.12.1", service="2w uvloop inflight=4 py3.12.1"),
    ]
    raw = [
        RawResult(1, "1", 50, 150000, 61000.0, 0.7, 1.3, "redis-benchmark -P 1"),
        RawResult(16, "1", 50, 600000, 240000.0, 2.9, 4.1, "redis-benchmark -P 16"),
        RawResult(1, "5000", 50, 150000, 58000.0, 0.8, 1.4, "redis-benchmark -P 1 -r 5000"),
        RawResult(16, "5000", 50, 600000, 221000.0, 3.1, 4.4, "redis-benchmark -P 16 -r 5000"),
    ]
    profile = {
        "1 worker(s), h2load 4x16": {
            "samples": 900,
            "busy_samples": 700,
            "threads": [("main thread (event loop)", 96), ("grpc threads", 7)],
            "buckets": [("grpc C-core / cython", 41.2), ("service Python (interceptor, limiter, pb conversion)", 22.0)],
            "leaves": [("write <- _write", 9.1), ("recv <- -", 4.4)],
        },
        "2 worker(s), h2load 4x16": {"error": "py-spy: permission denied"},
    }
    return {
        "machine": MACHINE,
        "others": [("pytest", 88.0), ("node", 4.0)],
        "versions": {"redis": "Redis server v=7.0.15", "h2load": "h2load nghttp2/1.52.0"},
        "duration": 5.0,
        "workers": [1, 2],
        "raw": raw,
        "steps": steps,
        "sanity": "ok: overall_code OK, limit_remaining 9, decided in Redis (within_limit +1, degraded +0)",
        "knob_level": "4x16",
        "profile": profile,
        "command": ".venv/bin/python -m bench.ratelimit --duration 5",
        "wall_s": 321.4,
        "gcra_args": ["0.01", "100000000", "1", ""],
    }


def ratelimit_cluster(Step) -> dict:  # noqa: N803
    def st(workers, dps, cpu_service):
        return Step(
            kind="tenants", service=f"{workers}w uvloop inflight=1", workers=workers, event_loop="uvloop",
            inflight=1, loadgen="python", python=MACHINE["python"], clients=32, streams=1, tenants=5000,
            duration_s=5.0, client_req_per_s=dps, decisions_per_s=dps, p50_ms=4.2, p99_ms=11.9, max_ms=30.0,
            mean_batch=6.5, redis_rtt_ms=0.9, cpu={"service": cpu_service, "redis": 40, "loadgen": 95, "other": 5},
            worker_cpu=[60, 58] if workers > 1 else [],
        )  # fmt: skip

    steps = [
        ("1 Redis", st(1, 3000.0, 90)),
        ("3-master cluster", st(1, 2500.0, 95)),
        ("1 Redis", st(2, 3900.0, 130)),
        ("3-master cluster", st(2, 3300.0, 140)),
        ("1 Redis", st(1, 3100.0, 91)),
        ("3-master cluster", st(1, 2400.0, 93)),
    ]
    return {
        "machine": MACHINE,
        "redis": "Redis server v=7.0.15",
        "tenants": 5000,
        "concurrency": 32,
        "duration": 5.0,
        "repeat": 2,
        "workers": [1, 2, 4],
        "steps": steps,
        "evalsha_per_master": [10234, 9876, 10011],
        "command": ".venv/bin/python -m bench.ratelimit_cluster --repeat 2",
        "wall_s": 140.2,
    }


def classifier(Step, RawResult, quiet: bool = False) -> dict:  # noqa: N803
    minilm, int8, ngram, cascade = (
        "prompt_guard_minilm",
        "prompt_guard_minilm_int8",
        "prompt_guard_ngram",
        "prompt_guard",
    )
    raw = []
    for model, base in ((minilm, 60.0), (int8, 110.0), (ngram, 9000.0)):
        for b in (1, 8, 32):
            rps = base * (1 + b / 16)
            raw.append(
                RawResult(
                    model=model, batch=b, iters=5, mean_s=b / rps, min_s=b / rps * 0.9, p50_s=b / rps, rows_per_s=rps,
                    tokens_per_row=256 if model != ngram else 895,
                    fp32_ops_per_row=11.2e9 if model == minilm else (3.1e9 if model == int8 else 0.0),
                    int8_ops_per_row=8.0e9 if model == int8 else 0.0,
                )
            )  # fmt: skip

    def st(model, loadgen, c, m, rps, **kw):
        base = dict(
            model=model, loadgen=loadgen, clients=c, streams=m, duration_s=5.0, warmup_s=1.5, req_per_s=rps,
            answered=int(rps * 5), ok_server=int(rps * 5) + 3, p50_ms=1000 / rps * c * m, p99_ms=2400 / rps * c * m,
            max_ms=4000 / rps * c * m, batch={model: 1.0 * m}, queue_ms={model: 0.4}, infer_ms={model: 900 / rps},
            cpu={"service": 180, "loadgen": 8, "other": 9}, threads=[("python", 90), ("onnx-w1", 40), ("grpc", 5)],
        )  # fmt: skip
        base.update(kw)
        return Step(**base)

    steps = [
        st(minilm, "h2load", 1, 1, 55.0),
        st(minilm, "h2load", 1, 8, 88.0),
        st(minilm, "h2load", 1, 32, 91.0, non_ok=2, grpc_codes={"OK": 450, "UNAVAILABLE": 2}),
        st(int8, "h2load", 1, 1, 100.0),
        st(int8, "h2load", 1, 32, 160.0),
        st(ngram, "h2load", 1, 1, 2500.0, batch={}, queue_ms={}, infer_ms={}),
        st(ngram, "h2load", 4, 64, 7000.0),
        st(
            cascade,
            "h2load",
            1,
            1,
            2300.0,
            batch={ngram: 1.0, minilm: 1.0},
            queue_ms={ngram: 0.1, minilm: 0.3},
            infer_ms={ngram: 0.2, minilm: 15.0},
            answered_by={ngram: 11500},
        ),  # fmt: skip
        st(cascade, "h2load", 4, 64, 6200.0, answered_by={ngram: 31000}),
        st(cascade, "python", 1, 1, 300.0, answered_by={ngram: 1400, minilm: 100}),
        st(cascade, "python", 32, 1, 900.0, answered_by={ngram: 4200, minilm: 300}, p50_ms=NAN),
    ]
    mm = [
        {"what": "numpy fp32 (default kernel choice)", "kind": "fp32", "threads": 2, "n": 1024, "seconds": 0.031,
         "flops": 2 * 1024**3 / 0.031},
        {"what": "numpy fp32 (OPENBLAS_CORETYPE=SkylakeX)", "kind": "fp32", "threads": 2, "n": 1024,
         "seconds": 0.012, "flops": 2 * 1024**3 / 0.012},
        {"what": "ORT MatMul fp32 (MLAS)", "kind": "fp32", "threads": 2, "n": 1024, "seconds": 0.011,
         "flops": 2 * 1024**3 / 0.011},
        {"what": "ORT MatMulInteger u8xs8 (MLAS)", "kind": "int8", "threads": 1, "n": 1024, "seconds": 0.008,
         "flops": 2 * 1024**3 / 0.008},
    ]  # fmt: skip
    raw_info = {
        minilm: {"row_width": 256, "graph_ops": {"nodes": 38, "fp32": 11.2e9, "int8": 0.0}, "formula_flops": 11.3e9},
        int8: {"row_width": 256, "graph_ops": {"nodes": 38, "fp32": 3.1e9, "int8": 8.0e9}, "formula_flops": 11.3e9},
        ngram: {"row_width": 895, "graph_ops": {"nodes": 2, "fp32": 0.0, "int8": 0.0}},
    }
    sanity = {
        "prompt": {
            minilm: {"answered_by": "", "windows": 1, "flagged": [], "unsafe": 0.03},
            int8: {"answered_by": "", "windows": 1, "flagged": ["jailbreak"], "unsafe": 0.61},
            ngram: {"answered_by": "", "windows": 1, "flagged": [], "unsafe": 0.11},
            cascade: {"answered_by": ngram, "windows": 1, "flagged": [], "unsafe": 0.11},
        },
        "mix": {ngram: 22, minilm: 2},
        "mix_flagged": 1,
    }
    summary = [
        {"model": minilm, "sat": 88.0, "sat_at": "1x8", "raw32": 180.0, "ratio32": 0.49, "raw_best": 180.0,
         "raw_best_b": 32, "ratio_best": 0.49, "gops": "986", "p50": 18.2, "p99": 43.6, "raw1_ms": 15.7,
         "p50_ratio": 1.16, "p99_ratio": 2.78},
        {"model": ngram, "sat": 7000.0, "sat_at": "4x64", "raw32": 27000.0, "ratio32": 0.26, "raw_best": 27000.0,
         "raw_best_b": 32, "ratio_best": 0.26, "gops": "–", "p50": 0.4, "p99": 0.96, "raw1_ms": 0.1,
         "p50_ratio": 4.0, "p99_ratio": 9.6},
    ]  # fmt: skip
    load = {
        "start": 0.4 if quiet else 2.7,
        "end": 0.3 if quiet else 2.1,
        "waited_s": 3.0 if quiet else 120.4,
        "quiet": quiet,
        "max_load": 1.0,
        "loadavg": "0.30 0.50 0.60" if quiet else "2.10 2.40 2.20",
        "busy": [] if quiet else [("pytest", 97.0), ("python3", 12.0)],
        "loadavg_end": "0.90 0.70 0.65",
    }
    mix = None if quiet else {
        "texts": 24, "escalated": 2, "escalated_rows": 2, "first_rows": 24, "texts_per_s": 1450.0, "pass_ms": 16.5,
        "band": (0.2, 0.8),
    }  # fmt: skip
    return {
        "argv": ["--duration", "5"] if not quiet else [],
        "machine": MACHINE,
        "load": load,
        "versions": {"onnxruntime": "1.20.1", "numpy": "2.1.3", "blas": "scipy-openblas 0.3.27", "h2load": "h2load 1"},
        "provider": "CPUExecutionProvider",
        "matmul": mm,
        "raw": raw,
        "raw_info": raw_info,
        "raw_mix": mix,
        "raw_seconds": 1.5,
        "steps": steps if not quiet else [s for s in steps if s.loadgen == "h2load"],
        "sanity": sanity,
        "summary": summary,
        "service_start_s": 6.2,
        "warmup": 1.5,
        "duration": 5.0,
        "low_duration": 10.0,
        "elapsed_s": 301.0,
        "matmul_n": 1024,
        "prompt_chars": 895,
        "mix_texts": 24,
    }


def enforcer(Step, mix: list[tuple[str, float, int]], restarts: bool = True) -> dict:  # noqa: N803
    def st(part, rate, rps, p50, p99, **kw):
        base = dict(
            part=part, label=f"{part}-{rate or 'max'}-0", target_rps=rate, duration_s=10.0, req_per_s=rps,
            count=int(rps * 10), p50_ms=p50, p99_ms=p99, max_ms=p99 * 2,
            decisions=int(rps * 10) if part != "classifier" else 0,
            cpu={"enforcer": 40, "classifier": 80, "ratelimit": 10, "redis": 3, "kafka": 6, "loadgen": 2, "other": 7},
        )  # fmt: skip
        base.update(kw)
        return Step(**base)

    own = {"n": 3000, "own_p50": 0.61, "own_p99": 1.9, "tier0_p50": 0.2, "tier0_p99": 0.7, "cl_p50": 0.9, "cl_p99": 2.5}
    steps = [
        st("own", 300, 299.0, 2.1, 4.0, own=own),
        st("own", 1000, 960.0, 3.5, 12.0, own={"n": 0}, degraded=4),
        st("e2e", 0, 180.0, 40.0, 120.0, failures=2),
        st("e2e", 25, 25.0, 12.0, 30.0),
        st("e2e", 100, 99.0, 20.0, 49.0),
        st("e2e", 400, 160.0, 90.0, 300.0, degraded=50),
        st("classifier", 0, 210.0, 35.0, 100.0),
        st("classifier", 25, 25.0, 10.0, 25.0),
        st("classifier", 100, 100.0, 18.0, 44.0),
        st("authz", 25, 25.0, 13.0, 33.0),
        st("authz", 100, 99.0, 60.0, 140.0),
    ]
    return {
        "steps": steps,
        "machine": MACHINE,
        "load_before": "1.00 0.90 0.80",
        "quick": False,
        "duration": 10.0,
        "own_rates": [300, 1000],
        "restarts": ["e2e-400-5"] if restarts else [],
        "failures": {"classifier/deadline": 51.0, "ratelimit/unavailable": 2.0} if restarts else {},
        "idle_cpu": 3.0,
        "sat_streams": 8,
        "h2load": "h2load nghttp2/1.52.0",
        "mix": mix,
    }


def monitor(with_trigger: bool = True) -> dict:
    run = {
        "machine": MACHINE,
        "load_before": "0.50 0.40 0.30",
        "busy_before": "pytest 91%",
        "quick": True,
        "step": 5.0,
        "load_after": "0.70 0.50 0.40",
        "n_jailbreaks": 3,
        "throughput": {
            "prefill_s": 1.2,
            "drain": {
                "n": 5000.0,
                "seconds": 2.5,
                "rate": 2000.0,
                "cpu_pct": 95.0,
                "cpu_ms_per_1k": 475.0,
                "pg_pct": 40.0,
                "kafka_pct": 20.0,
                "complete": with_trigger,
                "new": 5000.0,
                "duplicate": 0.0,
                "invalid": 0.0,
                "batches": 11.0,
            },  # fmt: skip
            "steps": [
                {
                    "target": 1000,
                    "produced_rate": 999.0,
                    "consumed_rate": 990.0,
                    "backlog_end": 12.0,
                    "lag_gauge_end": 3.0,
                    "lag_max": 480.0,
                    "cpu_pct": 50.0,
                    "cpu_ms_per_1k": 500.0,
                    "flat": True,
                },
                {
                    "target": 2000,
                    "produced_rate": 1990.0,
                    "consumed_rate": 1500.0,
                    "backlog_end": 2400.0,
                    "lag_gauge_end": 2400.0,
                    "lag_max": 2500.0,
                    "cpu_pct": 99.0,
                    "cpu_ms_per_1k": 470.0,
                    "flat": False,
                },
            ],  # fmt: skip
        },
    }
    if with_trigger:
        run["trigger"] = {"rounds": [0.412, 0.388, 0.530]}
    else:
        run["busy_before"] = ""
        run["trigger"] = {"rounds": []}
    return run


def failsafe(Step, counts: dict[str, int], long_sizes: list[int]) -> dict:  # noqa: N803
    def records(n_attack, blocked_attack, lat, *, partial=0, none=0, err=0):
        recs = []
        for i in range(n_attack):
            action = "BLOCK" if i < blocked_attack else ("FLAG" if i % 5 == 0 else "ALLOW")
            verdict = "NONE" if i < none else ("PARTIAL" if i < none + partial else "FULL")
            recs.append(["attack", i, i * 0.1, 1.0, lat + i % 7, "OK", action, verdict,
                         "deadline" if verdict != "FULL" else "", "prompt_guard_ngram"])  # fmt: skip
        for i in range(2 * n_attack):
            action = "BLOCK" if i == 3 else "ALLOW"
            recs.append(["benign", i, i * 0.05, 0.5, lat / 2 + i % 3, "OK", action, "FULL", "", "prompt_guard_ngram"])
        for i in range(4):
            cls = "long-attack" if i % 3 == 2 else "long"
            action = "BLOCK" if cls == "long-attack" else "ALLOW"
            recs.append([cls, i, i * 0.5, 3.0, lat * 4, "OK", action, "PARTIAL", "too_long", "prompt_guard_minilm"])
        for i in range(err):
            recs.append(["benign", 100 + i, 1.0, 80.0, 10000.0, "DEADLINE_EXCEEDED", "", "", "", ""])
        return recs

    def diff(rec, full, partial, none):
        d = {
            "decisions:bench-attack:BLOCK": float(sum(1 for r in rec if r[0] == "attack" and r[6] == "BLOCK")),
            "decisions:bench-attack:ALLOW": float(sum(1 for r in rec if r[0] == "attack" and r[6] != "BLOCK")),
            "decisions:bench-benign:BLOCK": 1.0,
            "decisions:bench-long-attack:BLOCK": 1.0,
            "verdict:full": float(full),
            "verdict:partial": float(partial),
            "verdict:none": float(none),
            "retro:queued": 5.0,
            "retro:caught": 1.0,
        }  # fmt: skip
        return d

    def st(label, rate, rec, full, partial, none, cpu_total, **kw):
        base = dict(
            label=label, rate=rate, duration_s=30.0, records=rec, elapsed_s=30.0 if rate else 12.0,
            diff=diff(rec, full, partial, none), codes={"OK": float(len(rec))},
            cpu={"enforcer": cpu_total // 2, "classifier": cpu_total // 3, "ratelimit": 5, "loadgen": 10, "other": 4},
        )  # fmt: skip
        base.update(kw)
        return Step(**base)

    rest_before = st("rest-0", 0, records(28, 25, 20.0), 80, 4, 0, 60)
    ladder = [
        st("r10-1", 10, records(28, 25, 25.0), 80, 4, 0, 70, breakers={"classifier": (0, 0.0)}),
        st("r50-2", 50, records(28, 22, 35.0, partial=3, none=1), 70, 10, 1, 150,
           breakers={"classifier": (2, 3.5)}, retro_left=4.0,
           log_errors=collections.Counter({"publish failed": 2})),
        st("r200-3", 200, records(28, 10, 900.0, none=9, err=5), 40, 20, 9, 199, shed=20),
    ]  # fmt: skip
    rest_after = st("rest-4", 0, records(28, 24, 21.0), 79, 5, 0, 60)
    return {
        "rest": [rest_before, rest_after],
        "ladder": ladder,
        "machine": MACHINE,
        "load_before": "0.20 0.30 0.40",
        "busy_before": "none",
        "quick": False,
        "duration": 30.0,
        "burst_period": 2.0,
        "burst_length": 0.2,
        "rest_repeat": 3,
        "retro_drain": 150.0,
        "restarts": ["r200-3"],
        "errors": collections.Counter({"publish failed": 2, "classifier timeout": 1}),
        "failures": {"classifier/deadline": 12.0, "ratelimit/unavailable": 0.0},
        "git": "abc1234",
        "command": ".venv/bin/python -m bench.failsafe",
        "prompt_counts": counts,
        "long_sizes": long_sizes,
    }


def envoy(Step) -> dict:  # noqa: N803
    steps = []
    for rate in (10.0, 25.0):
        for i, target in enumerate(("direct", "bypass", "screened", "screened-fast")):
            st = Step(target, rate)
            st.latencies_ms = [0.5 + i * 1.5 + k * 0.01 + rate / 100 for k in range(int(rate * 4))]
            if target == "screened" and rate == 25.0:
                st.errors = {"503": 2}
            if target == "screened-fast" and rate == 25.0:
                st.errors = {"ClientConnectorError": 1}
            steps.append(st)
    return {"steps": steps, "machine": MACHINE, "duration_s": 10.0}


def linear() -> dict:
    rows = [
        ("prose (baseline)", "tier0", [12.0, 11.5, 11.2, 11.3, 11.9]),
        ("body: many messages", "body", [30.0, 8.0, 6.0, 5.5, 5.4]),
        ("SSE: one huge line, a byte per read", "sse", [40.0, 41.0, 44.0, 50.0, 58.0]),
    ]
    return {"rows": rows, "machine": MACHINE, "quick": True, "sizes_kb": (1, 4, 16, 64, 256)}


# What bench.enforcer's prompt_mix() and bench.failsafe's prompts() give (name, weight, characters;
# prompts per class; shortest and longest long prompt): the reports take them from the run.
ENFORCER_MIX = [("chat", 0.4, 38), ("1kb", 0.25, 1030), ("4kb", 0.2, 4047), ("attack", 0.15, 302)]
FAILSAFE_COUNTS = {"attack": 28, "benign": 28, "long": 8, "long-attack": 4}
FAILSAFE_LONG_SIZES = [4096, 16000]


# ---- the tests -----------------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).with_name("bench_reports")


def golden(name: str) -> str:
    return (GOLDEN / f"{name}.md").read_text()


def test_ratelimit_report_renders_the_committed_tables():
    from bench.reports import ratelimit as report

    assert report.render(ratelimit(report.Step, report.RawResult)) == golden("ratelimit")


def test_ratelimit_cluster_report_renders_the_committed_tables():
    from bench.reports import ratelimit_cluster as report
    from bench.reports.ratelimit import Step

    assert report.render(ratelimit_cluster(Step)) == golden("ratelimit_cluster")


@pytest.mark.parametrize("quiet", [False, True])
def test_classifier_report_renders_the_committed_tables(quiet):
    from bench.reports import classifier as report

    run = classifier(report.Step, report.RawResult, quiet=quiet)
    assert report.render(run) == golden("classifier_quiet" if quiet else "classifier")


@pytest.mark.parametrize("restarts", [True, False])
def test_enforcer_report_renders_the_committed_tables(restarts):
    from bench.reports import enforcer as report

    run = enforcer(report.Step, ENFORCER_MIX, restarts=restarts)
    assert report.render(run) == golden("enforcer" if restarts else "enforcer_clean")


def test_failsafe_report_renders_the_committed_tables():
    from bench.reports import failsafe as report

    run = failsafe(report.Step, FAILSAFE_COUNTS, FAILSAFE_LONG_SIZES)
    assert report.render(run) == golden("failsafe")


def test_failsafe_steps_survive_the_saved_run_format():
    """--from-run re-renders a run saved as JSON: a step's round trip changes nothing."""
    from bench.reports import failsafe as report

    run = failsafe(report.Step, FAILSAFE_COUNTS, FAILSAFE_LONG_SIZES)
    saved = json.loads(json.dumps({**run, "rest": [s.to_json() for s in run["rest"]],
                                   "ladder": [s.to_json() for s in run["ladder"]]}))  # fmt: skip
    again = run | {"rest": [report.Step.from_json(s) for s in saved["rest"]],
                   "ladder": [report.Step.from_json(s) for s in saved["ladder"]]}  # fmt: skip
    assert report.render(again) == golden("failsafe")


@pytest.mark.parametrize("with_trigger", [True, False])
def test_monitor_report_renders_the_committed_tables(with_trigger):
    from bench.reports import monitor as report

    assert report.render(monitor(with_trigger)) == golden("monitor" if with_trigger else "monitor_no_trigger")


def test_envoy_report_renders_the_committed_table():
    from bench.reports import envoy as report

    assert report.render_block(envoy(report.Step)) == golden("envoy")


def test_linear_report_renders_the_committed_table():
    from bench.reports import linear as report

    assert report.render(linear()) == golden("linear")


def test_the_samples_describe_the_harnesses_own_prompts():
    """The reports take the prompt facts from the run; the samples carry the harnesses' real ones."""
    from bench.enforcer import prompt_mix
    from bench.failsafe import prompt_facts

    assert [(pc.name, pc.weight, len(pc.text)) for pc in prompt_mix()] == ENFORCER_MIX
    assert prompt_facts() == {"prompt_counts": FAILSAFE_COUNTS, "long_sizes": FAILSAFE_LONG_SIZES}
