"""Many concurrent clients across two replicas sharing one Redis never admit more
than the limit: each decision is one atomic Lua script."""

from __future__ import annotations

import asyncio

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from tests.integration.ratelimit.conftest import OK, degraded_count, descriptor, request
from tests.support import free_port


async def _hammer(addresses: list[str], req, total: int, concurrency: int) -> list[int]:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            resp = await stubs[i % len(stubs)].ShouldRateLimit(req, timeout=10)
            return resp.overall_code

    try:
        return await asyncio.gather(*(one(i) for i in range(total)))
    finally:
        for c in channels:
            await c.close()


def _two_replicas(start_ratelimit, cache_on_b: bool):
    """Fail closed with a generous deadline: a decision that misses it (a loaded CI
    box) answers OVER_LIMIT and is counted, so it can only lower the count."""
    ports = [free_port(), free_port()]
    common = ("--fail-mode", "closed", "--redis-timeout-ms", "1000", "--local-cache-entries")
    a = start_ratelimit(*common, "0", "--metrics-listen", f"127.0.0.1:{ports[0]}")
    b = start_ratelimit(*common, "100000" if cache_on_b else "0", "--metrics-listen", f"127.0.0.1:{ports[1]}")
    return [a.address, b.address], lambda: sum(degraded_count(p, "closed") for p in ports)


def test_two_replicas_admit_exactly_the_limit(start_ratelimit) -> None:
    # Local cache off on one replica, on for the other: both paths must stay exact.
    addresses, degraded = _two_replicas(start_ratelimit, cache_on_b=True)
    codes = asyncio.run(_hammer(addresses, request(descriptor(("exact", "x"))), 600, 64))
    assert 100 - degraded() <= codes.count(OK) <= 100


def test_two_replicas_exact_with_hits_addend(start_ratelimit) -> None:
    addresses, degraded = _two_replicas(start_ratelimit, cache_on_b=False)
    # 100 per day, 3 hits per call: at most 33 calls fit (99 hits), never 34.
    codes = asyncio.run(_hammer(addresses, request(descriptor(("exact", "h")), hits=3), 200, 64))
    assert 33 - degraded() <= codes.count(OK) <= 33
