"""Benchmark the rate-limit service (Envoy RLS ShouldRateLimit) against its limit.

    .venv/bin/python -m bench.ratelimit [--workers 1,2] [--duration 5] [--levels 1x1,2x4,4x8,4x32]
                                        [--rates 1000,5000] [--no-knobs] [--profile]

For each worker count it starts `python -m services.ratelimit` as a separate
process (config bench/ghz/ratelimit-config.yaml copied to a temp dir: domain
`bench`, one GCRA rule per tenant with a limit so high that every answer is OK,
and `--local-cache-entries 0`, so every decision is one EVALSHA in Redis) and
drives it with h2load (nghttp2-client) in another process:

* a concurrency sweep (h2load clients x streams per client) for the most
  decisions per second, and fixed-rate runs (`--rps`) for p99 at a given load;
* a Python gRPC driver (bench.grpc_load) cycling through a few thousand tenants
  against the same driver on one tenant (h2load can only send one body);
* the knobs: event loop, worker processes, Redis pipelines in flight.

Every step reads the service's own Prometheus metrics before and after, so
"decisions/s" counts only real decisions: gRPC OK *and* made in Redis
(ratelimit_within_limit/over_limit). Fail-open answers given while Redis
"timed out" (ratelimit_degraded_decisions) are reported separately, never as
throughput. The limit is raw `redis-benchmark EVALSHA` of the same gcra.lua with
the same arguments, unpipelined (-P 1) and pipelined (-P 16).

Results go to bench/RESULTS.md between markers in the "## Rate-limit service"
section (other sections and the hand-written analysis around the markers are
kept). Keys live under --key-prefix (default `bench:rl:`) and are deleted after.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from bench import h2load, harness, system
from bench.grpc_load import METHOD
from bench.harness import REPO, free_port, log, parse_levels
from bench.reports.ratelimit import RawResult, Step, render
from bench.results import RESULTS, publish

GCRA = REPO / "services" / "ratelimit" / "lua" / "gcra.lua"
SECTION = "## Rate-limit service"

CONFIG_FILE = REPO / "bench" / "ghz" / "ratelimit-config.yaml"  # shared with the ghz configs


def bench_limit() -> int:
    """requests_per_unit (per second) of the bench rule: every call stays far below it."""
    import yaml

    rule = yaml.safe_load(CONFIG_FILE.read_text())["descriptors"][0]["rate_limit"]
    assert rule["unit"] == "second", "the harness computes the GCRA emission interval for unit: second"
    return int(rule["requests_per_unit"])


LIMIT_RPU = bench_limit()
# Bench-only: lets the harness try gc.freeze() in the service without editing it.
GC_FREEZE_HOOK = """\
import gc
import signal


def _freeze(signum, frame):
    gc.collect()
    gc.freeze()  # objects alive after start-up leave the GC's generations: gen-2 passes get short


signal.signal(signal.SIGUSR1, _freeze)
"""


# ---- the service under test ----------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    workers: int = 1
    event_loop: str = "uvloop"
    inflight: int = 4
    max_batch: int = 128
    python: str = ""  # interpreter for the service; "" = the one running the harness
    python_label: str = ""
    gc_freeze: bool = False  # bench-only experiment: gc.freeze() in each worker once it serves
    redis_mode: str = "standalone"  # or "cluster" (bench.ratelimit_cluster)

    @property
    def label(self) -> str:
        py = f" py{self.python_label}" if self.python else ""
        gc = " gc.freeze" if self.gc_freeze else ""
        cluster = " cluster" if self.redis_mode == "cluster" else ""
        return f"{self.workers}w {self.event_loop} inflight={self.inflight}{py}{gc}{cluster}"

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable


class Service:
    """`python -m services.ratelimit` in its own process (group), plaintext on loopback."""

    def __init__(self, cfg: ServiceConfig, config_dir: Path, redis_url: str, key_prefix: str, workdir: Path) -> None:
        self.cfg = cfg
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = [
            cfg.interpreter,
            "-m",
            "services.ratelimit",
            "--plaintext",
            "--listen",
            self.address,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--redis-url",
            redis_url,
            "--redis-mode",
            cfg.redis_mode,
            "--config",
            str(config_dir),
            "--key-prefix",
            key_prefix,
            "--local-cache-entries",
            "0",
            "--workers",
            str(cfg.workers),
            "--event-loop",
            cfg.event_loop,
            "--redis-pipeline-inflight",
            str(cfg.inflight),
            "--redis-pipeline-max-batch",
            str(cfg.max_batch),
            "--log-level",
            "WARNING",
            "--drain-grace-seconds",
            "1",
        ]
        log_path = workdir / f"service-{cfg.workers}w-{cfg.event_loop}-{cfg.inflight}-{cfg.redis_mode}.log"
        self.process = harness.Process("rate-limit service", argv, log_path)

    def start(self, timeout_s: float = 30) -> None:
        if self.cfg.gc_freeze:
            # Without touching the service: a sitecustomize (imported by every worker at start)
            # installs a SIGUSR1 handler that runs gc.collect() + gc.freeze(); sent once serving.
            hook = self.process.log_path.parent / "gcfreeze"
            hook.mkdir(exist_ok=True)
            (hook / "sitecustomize.py").write_text(GC_FREEZE_HOOK)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH", "")]))
            self.process.env = env
        deadline = time.monotonic() + timeout_s
        self.process.start(timeout_s)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                scrape(self.metrics_port)
                break
            time.sleep(0.1)
        if self.cfg.gc_freeze:
            for pid in self.worker_pids():
                os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)

    @property
    def label(self) -> str:
        return self.cfg.label

    def pids(self) -> list[int]:
        return self.process.pids

    def worker_pids(self) -> list[int]:
        """The processes that serve RPCs: the workers, or the one process."""
        proc = self.process.proc
        if proc is None:
            return []
        kids = system.children(proc.pid) if self.cfg.workers > 1 else []
        return kids or [proc.pid]

    def busiest_worker(self, window_s: float = 0.5) -> int:
        pids = self.worker_pids()
        before = {p: system.cpu_seconds(p) for p in pids}
        time.sleep(window_s)
        return max(pids, key=lambda p: system.cpu_seconds(p) - before[p])

    def stop(self) -> None:
        self.process.stop()


class FloorService:
    """N processes of bench.grpc_floor on one port: bare grpc.aio, constant answer."""

    metrics_port = None

    def __init__(self, processes: int, workdir: Path) -> None:
        self.cfg = ServiceConfig(workers=processes)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    @property
    def label(self) -> str:
        return f"floor {self.cfg.workers}p uvloop"

    def start(self) -> None:
        for _ in range(self.cfg.workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.grpc_floor", "--listen", self.address],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on" not in line:
                self.stop()
                raise RuntimeError(f"bench.grpc_floor did not start: {line}{proc.stdout.read()[-1000:]}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def worker_pids(self) -> list[int]:
        return self.pids()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- the service's own metrics -------------------------------------------------------------


def _pick(s) -> str | None:
    if s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == "ShouldRateLimit":
        return f"code:{s.labels['grpc_code']}"
    if s.name in (
        "ratelimit_within_limit_total",
        "ratelimit_over_limit_total",
        "ratelimit_degraded_decisions_total",
        "ratelimit_redis_errors_total",
        "ratelimit_redis_pipeline_size_sum",
        "ratelimit_redis_pipeline_size_count",
        "ratelimit_redis_latency_seconds_sum",
        "ratelimit_redis_latency_seconds_count",
    ):
        return s.name
    return None


def scrape(port: int) -> dict[str, float]:
    """Counters this benchmark needs, summed over label sets we do not split by."""
    return harness.scrape(port, _pick)


# ---- one load step -------------------------------------------------------------------------


def _window(svc) -> harness.Window:
    """The step's window: the service (and each worker, when there are several) and Redis."""
    groups = {"service": svc.pids(), "redis": system.pids_named("redis-server")}
    workers = svc.worker_pids()
    if len(workers) > 1:
        groups.update({f"worker{i}": [pid] for i, pid in enumerate(workers)})
    metrics = (lambda: scrape(svc.metrics_port)) if svc.metrics_port is not None else None
    return harness.Window(groups, metrics).start()


def _finish_step(step: Step, window: harness.Window) -> None:
    cpu = window.stop()
    step.cpu = {k: round(v) for k, v in asdict(cpu).items() if k != "groups"}
    step.worker_cpu = [round(v) for g, v in sorted(cpu.groups.items()) if g.startswith("worker")]
    if window.metrics is None:  # the floor: no metrics, no Redis
        return
    d = window.metrics_delta()
    decisions = d.get("ratelimit_within_limit_total", 0.0) + d.get("ratelimit_over_limit_total", 0.0)
    step.decisions_per_s = decisions / step.duration_s
    step.degraded = int(d.get("ratelimit_degraded_decisions_total", 0.0))
    step.grpc_codes = harness.codes_of(d, "code:")
    step.cancelled = step.grpc_codes.get("CANCELLED", 0)
    step.non_ok = harness.not_ok(step.grpc_codes, step.clients * max(1, step.streams))
    step.redis_errors = int(d.get("ratelimit_redis_errors_total", 0.0))
    if d.get("ratelimit_redis_pipeline_size_count"):
        step.mean_batch = d["ratelimit_redis_pipeline_size_sum"] / d["ratelimit_redis_pipeline_size_count"]
    if d.get("ratelimit_redis_latency_seconds_count"):
        step.redis_rtt_ms = 1000 * d["ratelimit_redis_latency_seconds_sum"] / d["ratelimit_redis_latency_seconds_count"]


class Runner:
    def __init__(self, args: argparse.Namespace, h2: str, workdir: Path, body: Path) -> None:
        self.args = args
        self.h2 = h2
        self.workdir = workdir
        self.body = body

    def url(self, svc: Service | FloorService) -> str:
        return f"http://{svc.address}{METHOD}"

    def _new_step(self, svc: Service | FloorService, kind: str, loadgen: str, clients: int, streams: int, **kw) -> Step:
        c = svc.cfg
        return Step(
            kind=kind,
            service=svc.label,
            workers=c.workers,
            event_loop=c.event_loop,
            inflight=c.inflight,
            loadgen=loadgen,
            python=c.python_label or platform.python_version(),
            gc_freeze=c.gc_freeze,
            clients=clients,
            streams=streams,
            duration_s=self.args.duration,
            **kw,
        )

    def h2load_step(
        self,
        svc: Service | FloorService,
        kind: str,
        clients: int,
        streams: int,
        rps_total: int = 0,
        during: Callable[[], None] | None = None,
    ) -> Step:
        d = self.args.duration
        step = self._new_step(svc, kind, "h2load", clients, streams, target_rps=rps_total)
        self._quiet(svc, step)
        window = _window(svc)
        per_client = max(1, round(rps_total / clients)) if rps_total else None
        proc, logf, res = h2load.start(
            self.h2, self.url(svc), self.body, clients=clients, streams=streams, duration_s=d, rps_per_client=per_client
        )
        if during is not None:
            during()
        res = h2load.finish(proc, logf, res, timeout_s=d + 30)
        _finish_step(step, window)
        if svc.metrics_port is None:
            step.decisions_per_s = res.req_per_s
        if res.returncode != 0 or not res.latencies_us:
            log(f"h2load failed (rc={res.returncode}):\n{res.output[-1500:]}")
        step.client_req_per_s = res.req_per_s
        step.client_failures = res.client_failures
        step.p50_ms, step.p99_ms, step.max_ms = res.p(50), res.p(99), res.max_ms
        self._say(step)
        return step

    def python_step(self, svc: Service, tenants: int, concurrency: int) -> Step:
        step = self._new_step(svc, "tenants", "python", concurrency, 1, tenants=tenants)
        cmd = [
            sys.executable,
            "-m",
            "bench.grpc_load",
            "--target",
            svc.address,
            "--tenants",
            str(tenants),
            "--concurrency",
            str(concurrency),
            "--duration",
            f"{self.args.duration:g}",
        ]
        self._quiet(svc, step)
        window = _window(svc)
        r = harness.run_driver(cmd, timeout_s=self.args.duration + 60)
        _finish_step(step, window)
        if r is None:
            return step
        step.client_req_per_s = r["req_per_s"]
        step.client_failures = r["not_ok"] + sum(r["errors"].values())
        step.p50_ms, step.p99_ms, step.max_ms = r["p50_ms"], r["p99_ms"], r["max_ms"]
        # The server's counters also cover the driver's start-up and warm-up: take the
        # rate from the driver's measured window, and from the server only the share of
        # answers that were real (Redis) decisions rather than fail-open ones.
        real = step.decisions_per_s * step.duration_s
        step.decisions_per_s = r["req_per_s"] * (real / (real + step.degraded) if real + step.degraded else 0.0)
        self._say(step)
        return step

    def _quiet(self, svc: Service | FloorService, step: Step) -> None:
        """With --wait-quiet: wait until the rest of the box is (nearly) idle."""
        if self.args.wait_quiet <= 0:
            return
        ours = {os.getpid(), *svc.pids(), *system.pids_named("redis-server")}
        step.other_before = system.wait_quiet(ours, self.args.quiet_pct, self.args.wait_quiet)
        if step.other_before >= self.args.quiet_pct:
            log(f"  box still busy ({step.other_before:.0f}% of a core used by others): measuring anyway")

    def warm_up(self, svc: Service | FloorService) -> None:
        proc, logf, res = h2load.start(self.h2, self.url(svc), self.body, clients=2, streams=4, duration_s=1)
        h2load.finish(proc, logf, res, timeout_s=30)

    @staticmethod
    def _say(s: Step) -> None:
        rate = f" @{s.target_rps}/s" if s.target_rps else ""
        tenants = f" tenants={s.tenants}" if s.loadgen == "python" else ""
        log(
            f"  {s.service:<28} {s.level:>8}{rate}{tenants}: {s.decisions_per_s:8.0f} decisions/s "
            f"(client {s.client_req_per_s:8.0f} req/s) p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:6.2f} ms "
            f"degraded {s.degraded} non-OK {s.non_ok} batch {s.mean_batch:4.1f} svc {s.cpu_us:4.0f} us/dec "
            f"cpu svc/redis/gen/other {s.cpu.get('service')}/{s.cpu.get('redis')}/{s.cpu.get('loadgen')}/"
            f"{s.cpu.get('other')}%"
        )


# ---- sanity: a real gRPC client gets a real OK decision -----------------------------------------


def sanity(svc: Service) -> str:
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    from bench.grpc_load import request

    before = scrape(svc.metrics_port)
    with grpc.insecure_channel(svc.address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        resp = stub.ShouldRateLimit(request("bench", "sanity"), timeout=5)
    d = harness.delta(before, scrape(svc.metrics_port))
    problems = []
    if resp.overall_code != rls_pb2.RateLimitResponse.OK:
        problems.append(f"overall_code {rls_pb2.RateLimitResponse.Code.Name(resp.overall_code)}")
    if not resp.statuses or resp.statuses[0].current_limit.requests_per_unit != LIMIT_RPU:
        problems.append("status does not carry the bench limit")
    if d.get("ratelimit_within_limit_total", 0) != 1:
        problems.append("the decision was not counted as made in Redis")
    if d.get("ratelimit_degraded_decisions_total", 0):
        problems.append("degraded (fail-open) decision")
    if problems:
        raise RuntimeError("sanity check failed: " + "; ".join(problems))
    remaining = resp.statuses[0].limit_remaining
    return f"ok: overall_code OK, limit_remaining {remaining}, decided in Redis (within_limit +1, degraded +0)"


# ---- the limit: raw EVALSHA ----------------------------------------------------------------------------


def gcra_args(emission_us: float) -> list[str]:
    # Exactly what RateLimiter._one sends: repr(emission_us), capacity, cost, "" (server clock).
    return [repr(emission_us), str(LIMIT_RPU), "1", ""]


def raw_redis(redis_url: str, key_prefix: str, quick: bool) -> tuple[str, list[RawResult]]:
    import redis

    client = redis.Redis.from_url(redis_url)
    sha = client.script_load(GCRA.read_text())
    u = urlparse(redis_url)
    base = ["redis-benchmark", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    if u.path.strip("/"):
        base += ["--dbnum", u.path.strip("/")]
    emission = 1 * 1_000_000 / LIMIT_RPU
    out = []
    plans = [(1, "1", 150_000), (16, "1", 600_000), (1, "5000", 150_000), (16, "5000", 600_000)]
    for pipeline, keys, n in plans:
        if quick:
            n //= 3
        key = f"{key_prefix}{{raw}}:g" if keys == "1" else f"{key_prefix}{{raw:__rand_int__}}:g"
        cmd = [*base, "-n", str(n), "-c", "50", "-P", str(pipeline), "--csv"]
        if keys != "1":
            cmd += ["-r", keys]
        cmd += ["EVALSHA", sha, "1", key, *gcra_args(emission)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        rows = [line for line in res.stdout.splitlines() if line.startswith('"EVALSHA')]
        if not rows:
            raise RuntimeError(f"redis-benchmark failed: {res.stdout[-500:]} {res.stderr[-500:]}")
        cols = [c.strip('"') for c in rows[-1].split('","')]
        shown = " ".join(c if c else '""' for c in cmd[:-1]) + ' ""'
        r = RawResult(pipeline, keys, 50, n, float(cols[1]), float(cols[4]), float(cols[6]), shown)
        log(f"  raw EVALSHA -P {pipeline:<2} keys={keys:<4}: {r.ops_per_s:9.0f} ops/s p50 {r.p50_ms} p99 {r.p99_ms} ms")
        out.append(r)
    client.close()
    return sha, out


def delete_keys(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    n = 0
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            n += client.delete(*batch)
            batch.clear()
    if batch:
        n += client.delete(*batch)
    client.close()
    return n


# ---- profile -------------------------------------------------------------------------------------------------------

_SOCKET_CALLS = ("write", "writev", "sendmsg", "send", "sendto", "recv", "recvmsg", "recvfrom", "read", "readv")


_WAITS = ("epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect")


def profile_bucket(frames: list[str]) -> str | None:
    """Where one py-spy --native sample burned its CPU, judged by its innermost frame;
    None for a thread blocked in epoll/poll (py-spy's idle detection lets some through)."""
    leaf = frames[-1]
    name, _, where = leaf.partition(" (")
    if name in _WAITS:
        return None
    if any(f.startswith("Thread.run") for f in frames):
        return "other threads, busy (grpc aio poller hand-off, metrics HTTP)"
    if any("eventfd_write" in f for f in frames):
        return "syscall eventfd write (loop thread kicking grpc's poller)"
    if "libc.so" in where:
        if name in _SOCKET_CALLS:
            return "syscall socket send/recv (gRPC HTTP/2 frames, Redis pipeline)"
        if name == "getpid":
            return "syscall getpid (prometheus multiprocess values, asyncio)"
        if name == "syscall":
            return "syscall via libc syscall() (futex wake-ups in grpc/absl)"
        return "libc other (malloc, free, ...)"
    for marker, label in (
        ("prometheus_client/", "prometheus_client Python (labels, inc, observe)"),
        ("redis/", "redis-py Python (pipeline, pack, parse)"),
        ("services/", "service Python (interceptor, limiter, pb conversion)"),
        ("asyncio/", "asyncio Python (tasks, gather, wait_for, timeouts)"),
        ("grpc/", "grpc Python"),
    ):
        if marker in where and ".py:" in where:
            return label
    if ".py:" in where:
        return "other Python (dataclasses, uuid, enum, ...)"
    if "cygrpc" in where:
        return "grpc C-core / cython"
    if "_message" in where or name.startswith("upb_"):
        return "protobuf (upb)"
    if "loop.c" in where or "uvloop" in where or name.startswith("uv_"):
        return "uvloop"
    return "CPython interpreter / other native"


def find_py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None
    )


def profile(py_spy: str, pid: int, seconds: float, out: Path) -> dict:
    threads0 = system.thread_cpu(pid)
    t0 = time.monotonic()
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100"]
    # --native cannot be combined with --nonblocking: py-spy pauses the worker ~100x/s.
    cmd += ["--native", "--format", "raw", "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    elapsed = time.monotonic() - t0
    threads1 = system.thread_cpu(pid)
    if res.returncode != 0 or not out.exists():
        return {"error": (res.stderr or res.stdout)[-300:]}
    threads: collections.Counter[str] = collections.Counter()
    for tid, (comm, sec) in threads1.items():
        name = "main thread (event loop)" if tid == pid else f"{comm} threads"
        threads[name] += (sec - threads0.get(tid, (comm, 0.0))[1]) * 100 / elapsed
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = busy = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        bucket = profile_bucket(frames)
        if bucket is None:
            continue
        busy += int(n)
        buckets[bucket] += int(n)
        py = [f for f in frames if ".py:" in f]
        leaf = frames[-1].split(" (")[0]
        where = py[-1].split(" (")[0] if py else "-"
        leaves[f"{leaf} <- {where}"] += int(n)
    return {
        "samples": total,
        "busy_samples": busy,
        "threads": [(k, round(v)) for k, v in threads.most_common() if round(v) > 0],
        "buckets": [(k, 100 * v / busy) for k, v in buckets.most_common()] if busy else [],
        "leaves": [(k, 100 * v / busy) for k, v in leaves.most_common(8)] if busy else [],
    }


# ---- main ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="worker-process counts to measure (comma separated)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load step (at most 10)")
    p.add_argument("--levels", default="1x1,2x4,4x8,4x32", help="h2load sweep: CLIENTSxSTREAMS,...")
    p.add_argument("--rates", default="1000,5000", help="fixed total request rates for p99 (0 skips)")
    p.add_argument("--tenants", type=int, default=5000, help="tenants for the Python-driver step (0 skips)")
    p.add_argument("--knob-level", default="4x16", help="h2load CLIENTSxSTREAMS for the knob table")
    p.add_argument("--no-knobs", action="store_true", help="skip the event-loop / inflight table")
    p.add_argument(
        "--alt-python",
        metavar="PATH",
        help="also run knob rows with the service under this interpreter (a venv with requirements.txt and "
        "a .pth for the repo and gen/), e.g. to compare Python versions",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the bare grpc.aio server (bench.grpc_floor)")
    p.add_argument("--profile", action="store_true", help="py-spy one worker under load (py-spy must be on PATH)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each step, wait up to this long for other processes to go under --quiet-pct (0: don't)",
    )
    p.add_argument("--quiet-pct", type=float, default=20.0, help="%% of one core others may use to count as quiet")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--key-prefix", default="bench:rl:", help="Redis key prefix (deleted after the run)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the tables, leave RESULTS.md alone")
    p.add_argument("--json", type=Path, help="also write raw results as JSON")
    args = p.parse_args(argv)
    args.duration = min(10.0, max(1.0, args.duration))

    h2 = h2load.find_h2load()
    if h2 is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        return 2
    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark not found: install redis-tools (apt-get install -y redis-tools).", file=sys.stderr)
        return 2
    py_spy = find_py_spy() if args.profile else None
    if args.profile and py_spy is None:
        log("--profile: py-spy not found on PATH (pip install py-spy); skipping the profile")

    t_start = time.monotonic()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    levels = parse_levels(args.levels)
    rates = [int(r) for r in args.rates.split(",") if r.strip() and int(r)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    config_dir = workdir / "config"
    config_dir.mkdir()
    shutil.copy(CONFIG_FILE, config_dir / "bench.yaml")
    from bench.grpc_load import request

    body = workdir / "body.bin"
    body.write_bytes(h2load.grpc_frame(request("bench", "tenant-00000").SerializeToString()))

    machine = system.machine()
    others = system.busy_processes({os.getpid()}, top=4)
    versions = {
        "redis": system.tool_version(["redis-server", "--version"]).split(" sha=")[0],
        "h2load": h2load.version(h2),
    }
    log(f"machine: {machine} | others: {others}")
    runner = Runner(args, h2, workdir, body)
    steps: list[Step] = []
    profiles: dict[str, dict] = {}
    sanity_msg = ""
    services: list[Service | FloorService] = []

    def new_service(cfg: ServiceConfig) -> Service:
        svc = Service(cfg, config_dir, args.redis_url, args.key_prefix, workdir)
        services.append(svc)
        svc.start()
        runner.warm_up(svc)
        return svc

    try:
        log("limit: raw redis-benchmark EVALSHA of gcra.lua")
        _sha, raw = raw_redis(args.redis_url, args.key_prefix, quick=args.duration < 3)
        for w in workers:
            cfg = ServiceConfig(workers=w)
            log(f"service {cfg.label}")
            svc = new_service(cfg)
            sanity_msg = sanity(svc)
            log(f"  sanity {sanity_msg}")
            for c, m in levels:
                steps.append(runner.h2load_step(svc, "sweep", max(c, 1), m))
            for r in rates:
                steps.append(runner.h2load_step(svc, "rate", 4, 32, rps_total=r))
            if args.tenants:
                for n in (1, args.tenants):
                    steps.append(runner.python_step(svc, n, 32))
            if py_spy:
                kc, km = parse_levels(args.knob_level)[0]
                label = f"{w} worker(s), h2load {kc}x{km}"
                out = workdir / f"profile-{w}.txt"

                def sample(svc: Service = svc, out: Path = out, label: str = label) -> None:
                    time.sleep(0.3)
                    pid = svc.busiest_worker()  # SO_REUSEPORT may give one worker most connections
                    profiles[label] = profile(py_spy, pid, args.duration - 1.5, out)

                t = threading.Thread(target=sample)
                runner.h2load_step(svc, "profile", kc, km, during=t.start)
                t.join()
                log(f"  profile {label}: {profiles[label]}")
            svc.stop()
        if not args.no_floor:
            kc, km = parse_levels(args.knob_level)[0]
            for w in workers:
                floor = FloorService(w, workdir)
                services.append(floor)
                log(floor.label)
                floor.start()
                runner.warm_up(floor)
                for c, m in sorted({(1, 1), (kc, km)}):
                    steps.append(runner.h2load_step(floor, "floor", c, m))
                floor.stop()
        if not args.no_knobs:
            kc, km = parse_levels(args.knob_level)[0]
            knobs = [
                ServiceConfig(1, "uvloop", 4),
                ServiceConfig(1, "asyncio", 4),
                ServiceConfig(1, "uvloop", 1),
                ServiceConfig(1, "uvloop", 2),
                ServiceConfig(1, "uvloop", 8),
                ServiceConfig(2, "uvloop", 4),
                ServiceConfig(2, "asyncio", 4),
                ServiceConfig(2, "uvloop", 1),
                ServiceConfig(1, "uvloop", 4, gc_freeze=True),
                ServiceConfig(2, "uvloop", 4, gc_freeze=True),
            ]
            if args.alt_python:
                ver = system.tool_version([args.alt_python, "-c", "import platform; print(platform.python_version())"])
                knobs += [
                    ServiceConfig(1, "uvloop", 4, python=args.alt_python, python_label=ver),
                    ServiceConfig(2, "uvloop", 4, python=args.alt_python, python_label=ver),
                    ServiceConfig(2, "uvloop", 1, python=args.alt_python, python_label=ver),
                ]
            log(f"knobs at h2load {kc}x{km}")
            for cfg in knobs:
                svc = new_service(cfg)
                steps.append(runner.h2load_step(svc, "knob", kc, km))
                svc.stop()
    finally:
        for svc in services:
            svc.stop()
        with contextlib.suppress(Exception):
            log(f"deleted {delete_keys(args.redis_url, args.key_prefix)} keys under {args.key_prefix}")

    cmd = harness.command_line("bench.ratelimit", argv)
    run = {
        "machine": machine,
        "others": others,
        "versions": versions,
        "duration": args.duration,
        "workers": workers,
        "raw": raw,
        "steps": steps,
        "sanity": sanity_msg,
        "knob_level": args.knob_level,
        "profile": profiles,
        "command": cmd,
        "wall_s": time.monotonic() - t_start,
        "gcra_args": gcra_args(1e6 / LIMIT_RPU),
    }
    if args.json:
        serial = dict(run, raw=[asdict(r) for r in raw], steps=[asdict(s) for s in steps])
        args.json.write_text(json.dumps(serial, indent=1, default=str))
    publish(render(run), SECTION, "ratelimit", no_write=args.no_write, path=args.results, echo=True, log=log)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
