"""Redis stopped and restarted mid-test (a private redis-server): fail-open and
fail-closed each behave as configured, every degraded decision is counted and
logged, and the service recovers without a restart."""

from __future__ import annotations

import json
import time

import pytest

from services.common.wire import RLS_DEGRADED_KEY as DEGRADED_KEY
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
        answers = [client.check(descriptor(("tenant", "r"))) for _ in range(11)]
        assert answers[-1].overall_code == OVER
        assert not any(DEGRADED_KEY in a.dynamic_metadata.fields for a in answers)

        redis.stop()
        expected = OK if mode == "open" else OVER
        t0 = time.monotonic()
        for value in ("r", "fresh"):
            answer = client.check(descriptor(("tenant", value)))
            assert answer.overall_code == expected
            # The answer says it was made without Redis (the enforcer then applies its
            # tenant's own fail mode and records why, instead of trusting an OK).
            assert answer.dynamic_metadata.fields[DEGRADED_KEY].bool_value is True
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
