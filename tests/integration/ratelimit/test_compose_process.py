"""The process compose runs, run here: the rate-limit service started with the very
command and env vars of compose.yaml (hosts and ports mapped to this machine),
checked by the same healthcheck command, and drained by SIGTERM within the
service's stop_grace_period."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support import ROOT, ServiceProcess, free_port
from tools.compose_check import load_compose, parse_duration, service_command, service_env


def test_ratelimit_runs_with_the_compose_command_and_env(key_prefix) -> None:
    env = service_env("ratelimit")
    port, metrics = free_port(), free_port()
    # Map container addresses to this machine: compose's `redis` host, /app paths, ports.
    env["RATELIMIT_REDIS_URL"] = env["RATELIMIT_REDIS_URL"].replace("redis://redis:", "redis://127.0.0.1:")
    env["RATELIMIT_CONFIG"] = env["RATELIMIT_CONFIG"].replace("/app/", f"{ROOT}/")
    env["RATELIMIT_LISTEN"] = env["RATELIMIT_LISTEN"].replace("0.0.0.0:50053", f"127.0.0.1:{port}")
    env["RATELIMIT_METRICS_LISTEN"] = env["RATELIMIT_METRICS_LISTEN"].replace("0.0.0.0:51053", f"127.0.0.1:{metrics}")
    env["RATELIMIT_KEY_PREFIX"] = key_prefix
    argv = service_command("ratelimit")
    assert argv[:3] == ["python", "-m", "services.ratelimit"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATELIMIT_")}
    svc = ServiceProcess(argv[2], argv[3:], env=env)
    svc.env = {**clean, **env, "PYTHONUNBUFFERED": "1"}  # no RATELIMIT_* of this shell leaks in
    svc.start()
    try:
        hc = load_compose()["services"]["ratelimit"]["healthcheck"]
        probe = [sys.executable if a == "python" else a for a in hc["test"][1:]]
        probe[-1] = f"127.0.0.1:{port}"
        out = subprocess.run(probe, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.strip() == "SERVING", out.stderr
        grace = parse_duration(load_compose()["services"]["ratelimit"]["stop_grace_period"])
        t0 = time.monotonic()
        assert svc.stop(timeout=grace) == 0
        # shutdown delay (5 s in compose) + an idle drain fit in the grace period.
        assert time.monotonic() - t0 < grace
    finally:
        svc.stop()
