"""Traces (OpenTelemetry), off by default.

With `--otlp-endpoint` set, every service joins the W3C trace context it is called with
(`traceparent` in the gRPC metadata; Envoy sends it to ext_authz and ext_proc when its
tracer is on), records a server span per RPC and a client span per call it makes to
another service, and exports them over OTLP/gRPC in batches. The enforcer adds the
decision id to its server span and the trace id to the decision's signal, so one
request through Envoy and the mesh is one connected trace, and a signal leads to it.

What spans hold: service and method names, status codes, the peer address, the decision
id. Never content: no request or response message is read (the gRPC instrumentation
records none), and error details are the services' own messages, which name limits and
fields, not text.

Without an endpoint nothing is instrumented: no interceptor, no cost on the hot path.
"""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

log = logging.getLogger("safeguards.tracing")

_provider: TracerProvider | None = None

#: The span attribute naming a decision (SafeguardSignal.decision_id).
DECISION_ID = "safeguards.decision_id"


def setup(service: str, *, endpoint: str, insecure: bool, sample_ratio: float, region: str = "") -> None:
    """Export this process's spans to `endpoint` (OTLP/gRPC); a no-op when empty.
    Sampling follows the caller's decision when there is one (ParentBased), else
    `sample_ratio` of new traces."""
    global _provider
    if not endpoint or _provider is not None:
        return
    attrs = {"service.name": f"safeguards-{service}", "service.namespace": "safeguards"}
    if region:
        attrs["cloud.region"] = region
    provider = TracerProvider(resource=Resource.create(attrs), sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing", extra={"otlp_endpoint": endpoint, "sample_ratio": sample_ratio})


def enabled() -> bool:
    return _provider is not None


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [aio_server_interceptor(tracer_provider=_provider)] if _provider is not None else []


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return list(aio_client_interceptors(tracer_provider=_provider)) if _provider is not None else []


def current_trace_id() -> str:
    """The current span's W3C trace id (32 hex digits), or "" outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def annotate(key: str, value: str) -> None:
    """Set an attribute on the current span (ids and counts only, never content)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)


def shutdown() -> None:
    """Flush what is buffered (at the end of a graceful stop)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
