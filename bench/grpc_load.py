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
import json
import sys

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from bench import harness

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
    not_ok = 0
    ok_code = rls_pb2.RateLimitResponse.OK

    def check(resp: rls_pb2.RateLimitResponse) -> None:
        nonlocal not_ok
        not_ok += resp.overall_code != ok_code

    def reset() -> None:
        nonlocal not_ok
        not_ok = 0

    # Short warm-up (connections, first Redis keys), then the measured window.
    latencies, errors, elapsed = await harness.closed_loop(
        calls, bodies, args.concurrency, min(1.0, args.duration / 5), args.duration, check, reset, timeout_s=5
    )
    for ch in channels:
        await ch.close()

    def pct(q: float) -> float:
        return harness.percentile(latencies, q) * 1000

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
    json.dump(harness.run_async(drive(args)), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
