"""The floor: a bare grpc.aio ShouldRateLimit server that answers a constant OK.

No Redis, no interceptor, no metrics, no config: what Python grpc.aio itself costs
per call on this machine. bench.ratelimit runs it with the same load as the real
service, so the gap between the two is what the service adds, and the floor's
throughput bounds what any grpc.aio service can reach here.

    python -m bench.grpc_floor --listen 127.0.0.1:50099 [--event-loop uvloop|asyncio]

Run several on one port for several processes (grpc sets SO_REUSEPORT on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

RESPONSE = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


class Floor(rls_pb2_grpc.RateLimitServiceServicer):
    async def ShouldRateLimit(self, request, context):  # noqa: N802 (gRPC method name)
        return RESPONSE


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Floor(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"floor listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:50099")
    p.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args(argv)
    if args.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.listen))
    else:
        asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
