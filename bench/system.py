"""What the box is and where its CPU goes during a load step (Linux /proc only).

On a 2-core machine the service, Redis and the load generator share the cores, so
every step records the CPU each of them used (100% = one core) and what the rest
of the box used in the meantime ("other": anything else running there).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 if it is gone."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    return (int(f[11]) + int(f[12])) / _TICK


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds per thread of a process: {tid: (thread name, seconds)}."""
    out = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        f = raw[raw.rindex(")") + 2 :].split()
        out[tid] = (comm, (int(f[11]) + int(f[12])) / _TICK)
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None and int(f[1]) == pid:
                out.append(int(entry.name))
    return out


def pids_named(name: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def box_busy_seconds() -> float:
    """CPU seconds the whole box spent not idle (all cores), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class CpuSplit:
    """CPU used during a step, in % of one core."""

    service: float
    redis: float
    loadgen: float
    other: float
    groups: dict[str, float]  # every metered group (e.g. one per worker process), same unit


class CpuMeter:
    """Snapshot CPU counters of named groups of processes, then report the split."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._t0 = 0.0
        self._before: dict[str, float] = {}
        self._box0 = 0.0

    def _read(self) -> dict[str, float]:
        return {g: sum(cpu_seconds(p) for p in pids) for g, pids in self._groups.items()}

    def start(self) -> None:
        import time

        self._t0 = time.monotonic()
        self._before = self._read()
        self._box0 = box_busy_seconds()

    def stop(self, loadgen_cpu_s: float = 0.0) -> CpuSplit:
        import time

        elapsed = max(1e-6, time.monotonic() - self._t0)
        after = self._read()
        used = {g: after[g] - self._before.get(g, 0.0) for g in after}
        box = box_busy_seconds() - self._box0
        loadgen = used.get("loadgen", 0.0) + loadgen_cpu_s
        ours = used.get("service", 0.0) + used.get("redis", 0.0) + loadgen
        pct = 100 / elapsed
        return CpuSplit(
            service=used.get("service", 0.0) * pct,
            redis=used.get("redis", 0.0) * pct,
            loadgen=loadgen * pct,
            other=max(0.0, box - ours) * pct,
            groups={g: v * pct for g, v in used.items()},
        )


def wait_quiet(exclude: set[int], max_other_pct: float, timeout_s: float) -> float:
    """Wait (up to timeout_s) until processes other than `exclude` use under max_other_pct
    of one core; returns what they used in the last 1 s window."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        t0, box0, ours0 = time.monotonic(), box_busy_seconds(), sum(cpu_seconds(p) for p in exclude)
        time.sleep(1.0)
        elapsed = time.monotonic() - t0
        other = (box_busy_seconds() - box0 - (sum(cpu_seconds(p) for p in exclude) - ours0)) * 100 / elapsed
        if other < max_other_pct or time.monotonic() >= deadline:
            return max(0.0, other)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def busy_processes(exclude: set[int], top: int = 5, window_s: float = 1.0) -> list[tuple[str, float]]:
    """The processes (other than `exclude`) that used the most CPU over a short window."""
    import time

    def snap() -> dict[int, tuple[str, float]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in exclude:
                continue
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            out[int(entry.name)] = (comm, cpu_seconds(int(entry.name)))
        return out

    a = snap()
    time.sleep(window_s)
    b = snap()
    used = [(b[p][0], (b[p][1] - a[p][1]) * 100 / window_s) for p in b if p in a and b[p][1] > a[p][1]]
    used.sort(key=lambda x: -x[1])
    return used[:top]


def machine() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_total_gib():.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "n/a"
