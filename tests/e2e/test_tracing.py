"""Traces (issue 16): one request through the mesh is one connected trace, with the
decision id on the enforcer's span, the trace id in the signal, and no content in any
span. The services export over real OTLP/gRPC to a collector this test runs (the
OpenTelemetry collector's TraceService, served with grpcio), from real processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc, signals_pb2

from tests.e2e.meshes import REGION, enforcer_mesh, read_signals

MARKER = "tracer-marker-" + uuid.uuid4().hex[:8]  # content that must never reach a span


class Collector(ts_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every span with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, Span)
        self.raw: list[bytes] = []
        self._lock = threading.Lock()

    def Export(self, request: ts.ExportTraceServiceRequest, context) -> ts.ExportTraceServiceResponse:
        with self._lock:
            self.raw.append(request.SerializeToString())
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    self.spans.extend((service, s) for s in ss.spans)
        return ts.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, object]]:
        with self._lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ts_grpc.add_TraceServiceServicer_to_server(c, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    c.endpoint = f"http://127.0.0.1:{port}"
    yield c
    server.stop(0)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, collector):
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export within 0.1 s (the SDK's own setting)
    for svc in ("CLASSIFIER", "RATELIMIT", "ENFORCER"):
        env[f"{svc}_OTLP_ENDPOINT"] = collector.endpoint
        env[f"{svc}_OTLP_INSECURE"] = "true"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with enforcer_mesh(tmp_path_factory.mktemp("tracing")) as m:
            yield m
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_one_request_is_one_connected_trace_without_content(mesh, collector) -> None:
    trace_id = os.urandom(16)
    parent = os.urandom(8)
    traceparent = f"00-{trace_id.hex()}-{parent.hex()}-01"  # the gateway's span, sampled
    with grpc.insecure_channel(mesh["enforcer"].address) as ch:
        resp = safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenPrompt(
            pb.ScreenPromptRequest(
                context=pb.RequestContext(tenant="acme", account="acct-1", region=REGION, request_id="r-trace"),
                messages=[pb.ChatMessage(role="user", content=f"What is the capital of France? {MARKER}")],
            ),
            metadata=[("traceparent", traceparent)],
            timeout=10,
        )
    decision_id = resp.decision.decision_id

    deadline = time.monotonic() + 20
    while True:
        spans = collector.trace(trace_id)
        services = {svc for svc, _ in spans}
        if {"safeguards-enforcer", "safeguards-classifier", "safeguards-ratelimit"} <= services:
            break
        assert time.monotonic() < deadline, f"spans seen: {sorted(services)}"
        time.sleep(0.2)

    by_id = {s.span_id: (svc, s) for svc, s in spans}
    (enforcer_server,) = [s for svc, s in spans if svc == "safeguards-enforcer" and s.kind == s.SPAN_KIND_SERVER]
    # The enforcer's server span is the gateway's child and carries the decision id.
    assert enforcer_server.parent_span_id == parent
    attrs = {a.key: a.value.string_value for a in enforcer_server.attributes}
    assert attrs["safeguards.decision_id"] == decision_id
    # The classifier's and the rate limiter's server spans hang off the enforcer's client
    # spans, which hang off its server span: one tree, no orphan.
    for backend in ("safeguards-classifier", "safeguards-ratelimit"):
        servers = [s for svc, s in spans if svc == backend and s.kind == s.SPAN_KIND_SERVER]
        assert servers, backend
        for s in servers:
            client_svc, client = by_id[s.parent_span_id]
            assert client_svc == "safeguards-enforcer" and client.kind == client.SPAN_KIND_CLIENT
            assert client.parent_span_id == enforcer_server.span_id
    # No content anywhere in what was exported.
    assert not any(MARKER.encode() in raw for raw in collector.raw)

    # The decision's signal names the trace.
    records = asyncio.run(read_signals(mesh["kafka"].bootstrap, {decision_id}))
    sig = next(
        s for s in (signals_pb2.SafeguardSignal.FromString(v) for _k, v in records) if s.decision_id == decision_id
    )
    assert sig.trace_id == trace_id.hex()
