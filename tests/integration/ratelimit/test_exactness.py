"""Many concurrent clients across two replicas sharing one Redis never admit more
than the limit: each decision is one atomic Lua script."""

from __future__ import annotations

import asyncio

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from tests.integration.ratelimit.conftest import OK, descriptor, request


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


def test_two_replicas_admit_exactly_the_limit(start_ratelimit) -> None:
    # Local cache off on one replica, on for the other: both paths must stay exact.
    a = start_ratelimit("--local-cache-entries", "0")
    b = start_ratelimit()
    codes = asyncio.run(_hammer([a.address, b.address], request(descriptor(("exact", "x"))), 600, 64))
    assert codes.count(OK) == 100


def test_two_replicas_exact_with_hits_addend(start_ratelimit) -> None:
    a = start_ratelimit("--local-cache-entries", "0")
    b = start_ratelimit("--local-cache-entries", "0")
    # 100 per day, 3 hits per call: at most 33 calls fit (99 hits), never 34.
    codes = asyncio.run(_hammer([a.address, b.address], request(descriptor(("exact", "h")), hits=3), 200, 64))
    assert codes.count(OK) == 33
