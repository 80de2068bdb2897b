"""The monitor's report (bench.monitor's block in bench/RESULTS.md): signals/s of one monitor
process, and the time from an automated rule's trigger to the enforcer blocking the account."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def render(run: dict) -> str:
    m = run["machine"]
    lines = [
        f"Measured {m['date']} on {m['nproc']} × {m['cpu']}, {m['memory']}, Python {m['python']}"
        f"{' (--quick)' if run['quick'] else ''}. Load average before: {run['load_before']}, after: "
        f"{run['load_after']}; busiest other processes before: {run['busy_before'] or 'none'}. "
        "The monitor, Tansu, PostgreSQL and this harness share the box's cores (and other work running on "
        "the box at the same time shows in the load average).",
        "",
    ]
    tp = run.get("throughput")
    if tp:
        d = tp["drain"]
        flat = [s for s in tp["steps"] if s["flat"]]
        best = max((s["consumed_rate"] for s in flat), default=float("nan"))
        best_target = max((s["target"] for s in flat), default=0)
        lines += [
            "### Signals/s of one monitor process",
            "",
            "One monitor (default batch settings: 500 records / 200 ms, default dry-run rules loaded), Tansu (3 "
            "partitions), a fresh PostgreSQL database. Signals built by `build_signal`: 80% ALLOW, 12% FLAG, 8% "
            "BLOCK, 8 tenants (STANDARD / METADATA_ONLY / ZERO_RETENTION), 400 accounts, 3 models.",
            "",
            f"- **Max throughput (drain of a {d['n']:.0f}-signal backlog): {d['rate']:,.0f} signals/s** "
            f"({d['seconds']:.1f} s{'' if d['complete'] else ', INCOMPLETE: timed out'}); monitor CPU "
            f"{d['cpu_pct']:.0f}% of a core = **{d['cpu_ms_per_1k']:.0f} ms CPU per 1k signals**; PostgreSQL "
            f"(all its processes on the box) {d['pg_pct']:.0f}%, Tansu {d['kafka_pct']:.0f}%. "
            f"{d['batches']:.0f} batches committed in all; duplicates {d['duplicate']:.0f}, "
            f"invalid {d['invalid']:.0f}.",
            f"- **Sustained with lag flat: {best:,.0f} signals/s** (highest flat step, target {best_target}/s).",
            "",
            f"Open-loop ladder ({run['step']:.0f} s per step, rates as fractions of the drain rate; flat = "
            "consumed ≥ 95% of produced and less than one second of produce left behind at the end):",
            "",
            "| target/s | produced/s | consumed/s | backlog at end | lag gauge max / end | monitor CPU | "
            "CPU ms / 1k | flat |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in tp["steps"]:
            lines.append(
                f"| {s['target']:,} | {s['produced_rate']:,.0f} | {s['consumed_rate']:,.0f} | {s['backlog_end']:,.0f} "
                f"| {s['lag_max']:,.0f} / {s['lag_gauge_end']:,.0f} | {s['cpu_pct']:.0f}% | {s['cpu_ms_per_1k']:.0f} "
                f"| {'yes' if s['flat'] else '**no**'} |"
            )
        lines.append("")
    tb = run.get("trigger")
    if tb and tb["rounds"]:
        r = [x * 1000 for x in tb["rounds"]]
        n = run["n_jailbreaks"]
        lines += [
            "### Rule trigger → enforcer blocks the account",
            "",
            f"Rate limiter (real Redis), classifier (built models), Tansu, one enforcer, one monitor with a live rule "
            f"({n} blocked jailbreaks in 10 min → SUSPEND_ACCOUNT), monitor `--batch-wait-ms` at its "
            f"default 200. {len(r)} rounds, each a new account: {n} jailbreaks via ScreenPrompt, then "
            "ScreenPrompt polled every 10 ms until it answers `enforcement.suspended`. Time = first "
            "blocked-by-enforcement answer − answer of the triggering decision (signal produced by the enforcer → "
            "consumed and applied by the monitor → action produced acks=all → consumed by the enforcer).",
            "",
            f"**p50 {pct(r, 0.5):.0f} ms, p95 {pct(r, 0.95):.0f} ms, max {max(r):.0f} ms** "
            f"(mean {statistics.mean(r):.0f} ms; all: {', '.join(f'{x:.0f}' for x in r)}).",
            "",
        ]
    lines.append("Reproduce: `make bench-monitor` (or `.venv/bin/python -m bench.monitor [--quick]`).")
    return "\n".join(lines)
