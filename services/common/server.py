"""The grpc.aio server bootstrap every service uses.

It owns the cross-cutting parts so services only register servicers: health
(grpc.health.v1), reflection (grpcurl and ghz work without proto files),
Prometheus metrics over HTTP, JSON logs, message-size and concurrency limits, TLS /
mutual TLS, and a graceful drain on SIGTERM: health turns NOT_SERVING, the server
keeps serving for `shutdown_delay_seconds`, then stops accepting RPCs and lets
in-flight ones finish within `drain_grace_seconds`, and the process exits 0.

With `health_listen` a second, plaintext server serves the same health servicer and
nothing else, so that probes which cannot present a client certificate (Kubernetes'
native gRPC probes) see the status while the main port requires mutual TLS.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.common import logs, tracing
from services.common.errors import ConfigError
from services.common.interceptors import ServerInterceptor
from services.common.metrics import RpcMetrics, new_registry, serve_http
from services.common.settings import ServiceSettings, split_host_port
from services.common.tls import server_credentials

log = logging.getLogger("safeguards.server")

#: Bounds of the unauthenticated health-only listener: a Check request is a service
#: name, and probes make one call at a time.
HEALTH_MAX_MESSAGE_BYTES = 4096
HEALTH_MAX_CONCURRENT_RPCS = 64


@dataclass
class ServiceBinding:
    """One gRPC service to register: its full name (for health and reflection),
    the generated `add_XServicer_to_server` function and the servicer."""

    full_name: str
    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object


class Draining:
    """When in-flight calls must be done by, once the process drains (SIGTERM): a long
    stream reads `time_left()` to end itself, well formed, before the server cancels it."""

    def __init__(self) -> None:
        self._deadline: float | None = None

    def start(self, grace_s: float) -> None:
        self._deadline = time.monotonic() + grace_s

    def time_left(self) -> float | None:
        """Seconds until in-flight calls are cancelled; None while not draining."""
        return None if self._deadline is None else self._deadline - time.monotonic()


@dataclass
class App:
    """What a service hands the bootstrap: services to serve and its lifecycle."""

    bindings: list[ServiceBinding]
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Called with the GrpcServer before it starts, e.g. to publish per-model health.
    on_server: list[Callable[[GrpcServer], Awaitable[None]]] = field(default_factory=list)
    #: Started when the drain's grace begins; handed to whatever serves long streams.
    draining: Draining = field(default_factory=Draining)


class GrpcServer:
    """A started server and its drain logic; one per process (or per worker)."""

    def __init__(self, name: str, settings: ServiceSettings, app: App, registry: CollectorRegistry) -> None:
        self.name = name
        self.settings = settings
        self.app = app
        self.registry = registry
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        #: The bound port of the health-only listener (`health_listen`), else None.
        self.health_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics_http = None
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        s = self.settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 1),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        interceptor = ServerInterceptor(RpcMetrics(self.registry), frozenset(s.allowed_client_sans))
        server = grpc.aio.server(
            interceptors=[*tracing.server_interceptors(), interceptor],
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        for binding in self.app.bindings:
            binding.add_to_server(binding.servicer, server)
            names.append(binding.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(names, server)

        host, port = split_host_port(s.listen)
        if s.plaintext:
            bound = server.add_insecure_port(s.listen)
        else:
            creds = server_credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            bound = server.add_secure_port(s.listen, creds)
        if not bound:
            raise OSError(f"cannot bind {s.listen}")
        health_server = self._health_only_server(s.health_listen) if s.health_listen else None
        for hook in self.app.on_server:
            await hook(self)
        for hook in self.app.on_start:
            await hook()
        await server.start()
        self._server = server
        self.port = bound
        if health_server is not None:
            await health_server.start()
            self._health_server = health_server
            log.info("health listener", extra={"health_listen": f"{host_of(s.health_listen)}:{self.health_port}"})
        for binding in self.app.bindings:
            await self.health.set(binding.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_listen:
            self._metrics_http = serve_http(self.registry, s.metrics_listen)
            log.info(
                "metrics", extra={"metrics_listen": f"{host_of(s.metrics_listen)}:{self._metrics_http[0].server_port}"}
            )
        shown_host = host if ":" not in host else f"[{host}]"
        log.info("serving", extra={"listen": f"{shown_host}:{bound}", "tls": not s.plaintext})
        print(f"{self.name} listening on {shown_host}:{bound}", flush=True)
        return bound

    def _health_only_server(self, address: str) -> grpc.aio.Server:
        """grpc.health.v1 alone, plaintext, on `address`: the very servicer of the main
        server (so NOT_SERVING during a drain shows here too), nothing else reachable."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", HEALTH_MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1),  # each --workers process binds it, as the main port
            ],
            maximum_concurrent_rpcs=HEALTH_MAX_CONCURRENT_RPCS,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise OSError(f"cannot bind --health-listen {address}")
        self.health_port = bound
        return server

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_and_drain(self) -> None:
        await self._stopping.wait()
        await self.drain()

    async def drain(self) -> None:
        s = self.settings
        log.info("draining", extra={"shutdown_delay_s": s.shutdown_delay_seconds, "grace_s": s.drain_grace_seconds})
        await self.health.enter_graceful_shutdown()
        if s.shutdown_delay_seconds:
            await asyncio.sleep(s.shutdown_delay_seconds)
        if self._server is not None:
            self.app.draining.start(s.drain_grace_seconds)
            await self._server.stop(s.drain_grace_seconds)
        if self._health_server is not None:
            # Kept answering NOT_SERVING until the main server is done.
            await self._health_server.stop(0)
        for hook in self.app.on_stop:
            try:
                await hook()
            except Exception:  # a failing cleanup must not turn a clean drain into a crash
                log.exception("stop hook failed")
        if self._metrics_http is not None:
            httpd, _thread = self._metrics_http
            httpd.shutdown()
        log.info("stopped")


def host_of(address: str) -> str:
    return split_host_port(address)[0]


def run(
    name: str,
    settings: ServiceSettings,
    build: Callable[[ServiceSettings, CollectorRegistry], Awaitable[App]],
) -> int:
    """Configure logs, build the app, serve until SIGTERM/SIGINT, drain, return 0."""
    log_pipeline = logs.configure(
        name, settings.region, settings.log_level, decisions_per_s=settings.log_decisions_per_s
    )

    async def main() -> int:
        registry = new_registry()
        log_pipeline.register(registry)
        tracing.setup(
            name,
            endpoint=settings.otlp_endpoint,
            insecure=settings.otlp_insecure,
            sample_ratio=settings.trace_sample_ratio,
            region=settings.region,
        )
        app = await build(settings, registry)
        server = GrpcServer(name, settings, app, registry)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        await server.start()
        # Everything built so far lives until exit: move it out of the collector's
        # reach, so full collections stay short (15-55 ms gen-2 pauses measured under
        # load before this, each a burst of missed deadlines).
        gc.collect()
        gc.freeze()
        await server.wait_and_drain()
        return 0

    try:
        if settings.event_loop == "uvloop":
            import uvloop

            return uvloop.run(main())
        return asyncio.run(main())
    except ConfigError as exc:  # bad config at start: one clear line, exit 2, no traceback
        log.error("cannot start", extra={"error": str(exc)})
        # One write of the whole line: the log pipeline's thread writes to stderr too, and
        # print() writes the text and its newline separately (a JSON line landed between).
        sys.stderr.write(settings.error_line(str(exc)) + "\n")
        sys.stderr.flush()
        return 2
    finally:
        tracing.shutdown()  # export the buffered spans
        log_pipeline.stop()  # write the queued lines (bounded wait) before exit
