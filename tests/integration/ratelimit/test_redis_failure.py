"""Redis stopped and restarted mid-test (a private redis-server): fail-open and
fail-closed each behave as configured, every degraded decision is counted and
logged, and the service recovers without a restart."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.ratelimit.conftest import OK, OVER, RlsClient, degraded_count, descriptor, wait_until
from tests.support import PrivateRedis, free_port


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_then_back(start_ratelimit, mode: str) -> None:
    redis = PrivateRedis().start()
    metrics_port = free_port()
    svc = start_ratelimit(
        "--fail-mode",
        mode,
        "--redis-timeout-ms",
        "100",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--local-cache-entries",
        "0",
        redis_url=redis.url,
    )
    client = RlsClient(svc.address)
    try:
        # Exhaust the bucket while Redis is up: the answer is a real OVER_LIMIT.
        codes = [client.check(descriptor(("tenant", "r"))).overall_code for _ in range(11)]
        assert codes[-1] == OVER

        redis.stop()
        expected = OK if mode == "open" else OVER
        t0 = time.monotonic()
        for value in ("r", "fresh"):
            assert client.check(descriptor(("tenant", value))).overall_code == expected
        # Degraded answers come within the Redis timeout budget, not hang.
        assert time.monotonic() - t0 < 2.0
        assert degraded_count(metrics_port, mode) >= 2
        logged = [json.loads(x) for x in svc.logs().splitlines() if "degraded decision" in x]
        assert logged and logged[0]["fail_mode"] == mode

        # Redis returns (empty: a fresh server); the service reconnects by itself.
        redis.start()
        wait_until(lambda: client.check(descriptor(("tenant", "after"))).statuses[0].limit_remaining == 9)
        before = degraded_count(metrics_port, mode)
        assert client.check(descriptor(("tenant", "after2"))).overall_code == OK
        assert degraded_count(metrics_port, mode) == before
        assert svc.proc.poll() is None
    finally:
        client.close()
        redis.stop()


def test_service_starts_while_redis_is_down_and_recovers(start_ratelimit) -> None:
    redis = PrivateRedis()  # not started yet
    svc = start_ratelimit("--fail-mode", "closed", "--redis-timeout-ms", "100", redis_url=redis.url)
    client = RlsClient(svc.address)
    try:
        assert client.check(descriptor(("tenant", "s"))).overall_code == OVER
        redis.start()
        wait_until(lambda: client.check(descriptor(("tenant", "s2"))).overall_code == OK)
    finally:
        client.close()
        redis.stop()
