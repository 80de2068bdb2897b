"""Rate-limit decisions/s with one Redis and with a 3-master Redis Cluster.

    .venv/bin/python -m bench.ratelimit_cluster [--workers 1,2] [--duration 5] [--tenants 5000]
                                                [--concurrency 32] [--repeat 3]

Both topologies are started here from the same redis-server binary (tools.embedded):
one server, and a cluster of 3 masters joined by `redis-cli --cluster create` (no
replicas: a decision never waits for one, and replication would take CPU from the
same cores). The service (bench.ratelimit's Service: its own process, defaults
except `--local-cache-entries 0`, `--redis-mode cluster` for the cluster) is
driven by bench.grpc_load cycling through `--tenants` tenants, one GCRA bucket
each, so the keys spread over every master (h2load sends one body: one key, one
slot, one master). Steps alternate between the topologies `--repeat` times, so
both see the same background load. *decisions/s* counts only real decisions (the
service's within/over-limit counters), never fail-open answers, as in
bench.ratelimit.

Results go to bench/RESULTS.md between the bench.ratelimit_cluster markers in the
"## Rate-limit service" section.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench import harness, system
from bench.harness import log
from bench.ratelimit import CONFIG_FILE, SECTION, Runner, Service, ServiceConfig, sanity
from bench.reports.ratelimit import Step
from bench.reports.ratelimit_cluster import render
from bench.results import RESULTS, publish
from tools.embedded import EmbeddedRedis, EmbeddedRedisCluster, redis_server_binary

KEY_PREFIX = "bench:rlc:"


def evalsha_per_master(cluster: EmbeddedRedisCluster) -> list[int]:
    """EVALSHA calls each master served (the bench's buckets expire within ms, so
    their keys cannot be counted afterwards)."""
    out = []
    for port in sorted({p for _, _, p in cluster.slot_ranges()}):
        with cluster.client(port) as r:
            out.append(int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="worker-process counts (comma separated)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load step (at most 10)")
    p.add_argument("--tenants", type=int, default=5000, help="distinct tenants (keys) the driver cycles through")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight from the driver")
    p.add_argument("--repeat", type=int, default=3, help="alternations of the two topologies")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = p.parse_args(argv)
    args.duration = min(10.0, max(1.0, args.duration))
    args.wait_quiet, args.quiet_pct = 0.0, 20.0  # what Runner reads besides duration

    t_start = time.monotonic()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-cluster-"))
    config_dir = workdir / "config"
    config_dir.mkdir()
    shutil.copy(CONFIG_FILE, config_dir / "bench.yaml")
    runner = Runner(args, h2="", workdir=workdir, body=workdir / "unused")
    machine = system.machine()
    steps: list[tuple[str, Step]] = []
    single = EmbeddedRedis().start()
    cluster = EmbeddedRedisCluster(masters=3, replicas=0).start()
    topologies = [("1 Redis", single.url, "standalone"), ("3-master cluster", cluster.url, "cluster")]
    try:
        for _ in range(args.repeat):
            for w in workers:
                for topo, url, mode in topologies:
                    cfg = ServiceConfig(workers=w, inflight=1, redis_mode=mode)
                    svc = Service(cfg, config_dir, url, KEY_PREFIX, workdir)
                    try:
                        svc.start()
                        log(f"{topo}, {w} worker(s): sanity {sanity(svc)}")
                        step = runner.python_step(svc, args.tenants, args.concurrency)
                    finally:
                        svc.stop()
                    steps.append((topo, step))
        per_master = evalsha_per_master(cluster)
    finally:
        cluster.close()
        single.close()
        shutil.rmtree(workdir, ignore_errors=True)

    cmd = harness.command_line("bench.ratelimit_cluster", argv)
    run = {
        "machine": machine,
        "redis": system.tool_version([redis_server_binary(), "--version"]).split(" sha=")[0],
        "tenants": args.tenants,
        "concurrency": args.concurrency,
        "duration": args.duration,
        "repeat": args.repeat,
        "workers": workers,
        "steps": steps,
        "evalsha_per_master": per_master,
        "command": cmd,
        "wall_s": time.monotonic() - t_start,
    }
    publish(render(run), SECTION, "ratelimit_cluster", no_write=args.no_write, path=args.results, echo=True, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
