"""What every harness in bench/ shares: its log line, a service in its own process, the
service's Prometheus counters before and after a step, the CPU a step cost, the Python
load driver's closed loop, and the small parsers of the command lines.

The harness modules (bench.ratelimit, bench.classifier, ...) keep only their measurement
logic; their reports live in bench.reports, the box itself (CPU per process, machine
facts) in bench.system, and the RESULTS.md blocks in bench.results.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import system
from tools.embedded import free_port

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "free_port"]  # free_port: one implementation, tools.embedded's


# ---- log and command line ------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def stamped_log(name: str) -> Callable[[str], None]:
    """A log function that writes '[name HH:MM:SS] msg' to stderr (for harnesses whose
    stdout is the report)."""

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def parse_levels(text: str) -> list[tuple[int, int]]:
    """'1x1,2x4,8' -> [(1, 1), (2, 4), (8, 1)]: h2load clients x streams per client."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        c, _, m = part.partition("x")
        out.append((int(c), int(m or 1)))
    return out


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How to run this harness again, for the report: the venv's python, the module, its argv."""
    args = sys.argv[1:] if argv is None else argv
    return f".venv/bin/python -m {module}" + (" " + " ".join(args)).rstrip()


# ---- statistics ----------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; nan if empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# ---- the service's metrics -----------------------------------------------------------------------------------------


def samples(port: int) -> Iterator[Any]:
    """Every sample of the /metrics page on 127.0.0.1:port (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def scrape(port: int, key: Callable[[Any], str | None]) -> dict[str, float]:
    """The samples `key` names (None: skipped), summed by name over label sets it folds."""
    out: dict[str, float] = collections.defaultdict(float)
    for s in samples(port):
        name = key(s)
        if name is not None:
            out[name] += s.value
    return dict(out)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}


def codes_of(diff: dict[str, float], prefix: str) -> dict[str, int]:
    """gRPC code -> calls, from a delta whose keys are `prefix` + code (zeros left out)."""
    return {k[len(prefix) :]: int(v) for k, v in diff.items() if k.startswith(prefix) and v}


def not_ok(codes: dict[str, float], open_streams: int) -> int:
    """Calls answered with a code other than OK. h2load resets the streams still open when
    its time is up and the server counts those CANCELLED: up to one per open stream is
    that artifact, not an error."""
    cancelled = codes.get("CANCELLED", 0)
    return int(sum(v for k, v in codes.items() if k != "OK") - min(cancelled, open_streams))


# ---- one step's CPU ------------------------------------------------------------------------------------------------


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


class Window:
    """One load step's measuring window: CPU per group of processes (system.CpuMeter), the
    load generator's CPU (this process's waited-for children, e.g. h2load) and, with
    `metrics`, the service's counters at the start, for `metrics_delta()` at the end."""

    def __init__(self, groups: dict[str, list[int]], metrics: Callable[[], dict[str, float]] | None = None) -> None:
        self.meter = system.CpuMeter(groups)
        self.metrics = metrics
        self.before: dict[str, float] = {}
        self._children0 = 0.0

    def start(self) -> Window:
        self.before = self.metrics() if self.metrics is not None else {}
        self._children0 = _children_cpu_s()
        self.meter.start()
        return self

    def stop(self) -> system.CpuSplit:
        return self.meter.stop(loadgen_cpu_s=_children_cpu_s() - self._children0)

    def metrics_delta(self) -> dict[str, float]:
        assert self.metrics is not None
        return delta(self.before, self.metrics())


def mesh_cpu(cpu: system.CpuSplit) -> dict[str, int]:
    """% of one core per metered group of a mesh, the load generator and the rest of the box
    (CpuSplit.other counts only "service" and "redis" as ours: the mesh's other groups are
    taken out of it too)."""
    mesh_pct = sum(v for g, v in cpu.groups.items() if g not in ("service", "redis", "loadgen"))
    return {g: round(v) for g, v in cpu.groups.items()} | {
        "loadgen": round(cpu.loadgen),
        "other": round(max(0.0, cpu.other - mesh_pct)),
    }


# ---- a service in its own process ----------------------------------------------------------------------------------


class Process:
    """`argv` (cwd: the repository) in its own process group, stderr appended to `log_path`;
    start() returns once it prints '<name> listening on HOST:PORT' and keeps the address."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None, stop_s: float = 10.0
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.stop_s = stop_s
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self, timeout_s: float = 90) -> Process:
        self.address = ""
        err = open(self.log_path, "a")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                if " listening on " in line and not self.address:
                    self.address = line.split(" listening on ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or not self.address:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start ({' '.join(self.argv)}); log:\n{self.log_path.read_text()[-3000:]}"
            )
        return self

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *system.children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- the Python load drivers ---------------------------------------------------------------------------------------


def run_driver(cmd: list[str], timeout_s: float) -> dict | None:
    """Run a load driver (a separate process that prints one JSON object last); None, and
    its output logged, when it failed."""
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        log(f"python driver failed:\n{out.stdout[-1000:]}\n{out.stderr[-2000:]}")
        return None


async def closed_loop(
    calls: Sequence[Callable[..., Awaitable[Any]]],
    bodies: Sequence[bytes],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    on_answer: Callable[[Any], None],
    on_reset: Callable[[], None] = lambda: None,
    timeout_s: float = 30,
) -> tuple[list[float], collections.Counter[str], float]:
    """`concurrency` workers, each sending the next of `bodies` as soon as its last call is
    answered (worker w on calls[w % len(calls)]), for `warmup_s` and then for the measured
    `duration_s`. Returns the measured window's latencies (s, ascending), its gRPC errors
    by code, and its length; `on_answer` sees every answer, `on_reset` runs after the warm-up."""
    import grpc

    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    counter = 0
    stop_at = 0.0

    async def worker(w: int) -> None:
        nonlocal counter
        call = calls[w % len(calls)]
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            i = counter
            counter += 1
            try:
                resp = await call(bodies[i % len(bodies)], timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - now)
            on_answer(resp)

    stop_at = time.perf_counter() + warmup_s
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    latencies.clear()
    errors.clear()
    on_reset()
    start = time.perf_counter()
    stop_at = start + duration_s
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return latencies, errors, elapsed


def run_async(main: Awaitable[Any]) -> Any:
    """Run a driver's coroutine on uvloop where it is installed, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


@contextlib.contextmanager
def work_folder(prefix: str, log: Callable[[str], None] = log, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for a run's files and processes' logs: removed after a good run,
    kept (and its path logged) when the run failed or `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        log(f"logs kept in {path}")
        raise
    if keep:
        log(f"logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)
