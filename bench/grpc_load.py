"""A small Python gRPC load driver for ShouldRateLimit, for what h2load cannot do.

h2load sends one fixed body, so every request hits the same descriptor. This
driver cycles through pre-serialized requests for `--tenants` distinct tenant
values (one Redis bucket each) and checks every answer: the gRPC status and the
response's overall_code. It costs far more CPU per request than h2load, so its
absolute numbers are lower bounds; compare runs of this driver with each other
(1 tenant vs many), not with h2load's.

    python -m bench.grpc_load --target 127.0.0.1:50053 --tenants 5000 --concurrency 64 --duration 5

prints one JSON object: count, req_per_s, p50_ms, p99_ms, not_ok, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def request(domain: str, tenant: str, hits: int = 1) -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="tenant", value=tenant)
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])], hits_addend=hits
    )


def tenant_name(i: int) -> str:
    return f"tenant-{i:05d}"


async def drive(args: argparse.Namespace) -> dict:
    bodies = [request(args.domain, tenant_name(i)).SerializeToString() for i in range(args.tenants)]
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    calls = [
        ch.unary_unary(METHOD, request_serializer=None, response_deserializer=rls_pb2.RateLimitResponse.FromString)
        for ch in channels
    ]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    not_ok = 0
    counter = 0
    ok_code = rls_pb2.RateLimitResponse.OK
    stop_at = 0.0

    async def worker(w: int) -> None:
        nonlocal counter, not_ok
        call = calls[w % len(calls)]
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            i = counter
            counter += 1
            try:
                resp = await call(bodies[i % len(bodies)], timeout=5)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - now)
            if resp.overall_code != ok_code:
                not_ok += 1

    # Short warm-up (connections, first Redis keys), then the measured window.
    stop_at = time.perf_counter() + min(1.0, args.duration / 5)
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    latencies.clear()
    errors.clear()
    not_ok = 0
    start = time.perf_counter()
    stop_at = start + args.duration
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    elapsed = time.perf_counter() - start
    for ch in channels:
        await ch.close()
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, max(0, round(q / 100 * len(latencies) + 0.5) - 1))] * 1000

    return {
        "count": len(latencies),
        "duration_s": elapsed,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "not_ok": not_ok,
        "errors": dict(errors),
        "tenants": args.tenants,
        "concurrency": args.concurrency,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT of the rate-limit service (plaintext)")
    p.add_argument("--domain", default="bench")
    p.add_argument("--tenants", type=int, default=1, help="distinct tenant values cycled through")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    p.add_argument("--channels", type=int, default=2, help="HTTP/2 connections")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (after a short warm-up)")
    args = p.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(drive(args))
    except ImportError:
        result = asyncio.run(drive(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
