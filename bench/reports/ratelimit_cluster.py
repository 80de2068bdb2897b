"""bench.ratelimit_cluster's report: decisions/s with one Redis and with a 3-master cluster."""

from __future__ import annotations

import statistics

from bench.reports.ratelimit import Step, cell


def render(run: dict) -> str:
    m = run["machine"]
    steps: list[tuple[str, Step]] = run["steps"]
    L = [
        f"Measured {m['date']} on `{m['nproc']}` cores ({m['cpu']}), Python {m['python']}, {run['redis']} "
        f"(both topologies from this binary). Load: bench.grpc_load, {run['tenants']} tenants, "
        f"{run['concurrency']} in flight, {run['duration']:g} s per step, topologies alternated {run['repeat']}×. "
        "Cluster: 3 masters, no replicas, the service with `--redis-mode cluster` (redis-py's RedisCluster "
        "pipeline, split by node). EVALSHA calls served by each master: "
        + " / ".join(f"{n:,}" for n in run["evalsha_per_master"])
        + ". CPU columns are % of one core over the step.",
        "",
        "| Redis | workers | decisions/s | degraded | non-OK | p50 ms | p99 ms | batch | Redis RTT ms "
        "| service CPU | µs/decision | redis CPU | driver CPU | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for topo, s in steps:
        L.append(
            f"| {topo} | {s.workers} | {s.decisions_per_s:,.0f} | {s.degraded} | {s.non_ok + s.client_failures} "
            f"| {cell(s.p50_ms)} | {cell(s.p99_ms)} | {cell(s.mean_batch, 1)} | {cell(s.redis_rtt_ms)} "
            f"| {s.cpu_service} | {cell(s.cpu_us, 0)} | {s.cpu.get('redis')}% | {s.cpu.get('loadgen')}% "
            f"| {s.cpu.get('other')}% |"
        )
    L.append("")
    L.append(
        "Medians per topology and worker count; the box is shared, so the service's CPU per decision moves less "
        "than decisions/s between runs:"
    )
    L.append("")
    for topo in dict.fromkeys(t for t, _ in steps):
        for w in run["workers"]:
            ours = [s for t, s in steps if t == topo and s.workers == w]
            if ours:
                runs = ", ".join(f"{s.decisions_per_s:,.0f}" for s in ours)
                L.append(
                    f"- {topo}, {w} worker(s): **{statistics.median(s.decisions_per_s for s in ours):,.0f}** "
                    f"decisions/s (runs in order: {runs}), "
                    f"**{statistics.median(s.cpu_us for s in ours):,.0f}** µs service CPU per decision"
                )
    L.append("")
    L.append(f"Reproduce: `{run['command']}` ({run['wall_s']:.0f} s).")
    return "\n".join(L)
