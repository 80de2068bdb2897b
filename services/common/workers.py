"""Run N worker processes of one service on one port (SO_REUSEPORT).

grpc.aio serves on one core per process; on a multi-core box, N processes on one
port let the kernel spread connections across them. The parent serves the
aggregated Prometheus metrics (prometheus-client's multiprocess mode), prints the
usual "<service> listening on" line once every worker is ready, and forwards
SIGTERM/SIGINT so each worker drains.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

from services.common.settings import ServiceSettings, split_host_port


def run_workers(name: str, module: str, settings: ServiceSettings, argv: Sequence[str]) -> int:
    host, port = split_host_port(settings.listen)
    if port == 0:
        print(f"{name}: --workers > 1 needs a fixed port (not 0)", file=sys.stderr)
        return 2
    prom_dir = tempfile.mkdtemp(prefix=f"{name}-prom-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=prom_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--workers", "1", "--metrics-listen", ""],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(settings.workers)
    ]
    ready = threading.Barrier(settings.workers + 1)

    def pump(proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        announced = False
        for line in proc.stdout:
            if not announced and " listening on " in line:
                announced = True
                ready.wait()
                continue
            sys.stdout.write(line)
        if not announced:
            ready.abort()

    for proc in procs:
        threading.Thread(target=pump, args=(proc,), daemon=True).start()

    def forward(signum, _frame) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        forward(signal.SIGTERM, None)
        return max(p.wait() for p in procs) or 1
    if settings.metrics_listen:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
        from services.common.metrics import new_registry, serve_http

        serve_http(new_registry(), settings.metrics_listen)
    shown = host if ":" not in host else f"[{host}]"
    print(f"{name} listening on {shown}:{port} ({settings.workers} workers)", flush=True)
    codes = [p.wait() for p in procs]
    return max(codes)
