"""--workers N: N processes share one port (SO_REUSEPORT), the parent serves the
metrics of all of them, and SIGTERM drains every worker."""

from __future__ import annotations

import urllib.request

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from tests.integration.ratelimit.conftest import OK, SHARED_REDIS, descriptor, request
from tests.support import ServiceProcess, free_port


def test_two_workers_share_the_port_and_aggregate_metrics(config_dir, key_prefix) -> None:
    port, metrics = free_port(), free_port()
    svc = ServiceProcess(
        "services.ratelimit",
        ["--plaintext", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
         "--redis-url", SHARED_REDIS, "--config", str(config_dir), "--key-prefix", key_prefix, "--workers", "2"],
    ).start()
    try:
        assert svc.address == f"127.0.0.1:{port}"
        # New channels land on either worker; all of them answer from one shared bucket.
        codes = []
        for _ in range(12):
            with grpc.insecure_channel(svc.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = rls_pb2_grpc.RateLimitServiceStub(ch)
                codes.append(stub.ShouldRateLimit(request(descriptor(("tenant", "w"))), timeout=5).overall_code)
        assert codes.count(OK) == 10
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        handled = [
            line for line in body.splitlines()
            if line.startswith("grpc_server_handled_total") and 'grpc_method="ShouldRateLimit"' in line
        ]
        assert sum(float(line.split()[-1]) for line in handled) == 12.0
    finally:
        assert svc.stop() == 0
