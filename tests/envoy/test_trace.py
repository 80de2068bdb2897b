"""One request through a real Envoy and the mesh is one connected trace (issue 16): Envoy
(its OpenTelemetry tracer), the enforcer (ext_authz and ext_proc), the classifier and the
rate limiter all export to one OTLP receiver; every span of the request shares the trace
the client started, no span holds content, and the decision's signal names the trace."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent import futures

import anthropic
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc
from safeguards.v1 import signals_pb2

from tests.e2e.meshes import REGION, backends, gateway_parts, read_signals, write_config
from tests.e2e.test_tracing import Collector
from tests.envoy.conftest import GATEWAY_LIMITS
from tools.envoy_gateway import EnvoyGateway

SERVICES = {"safeguards-gateway", "safeguards-enforcer", "safeguards-classifier", "safeguards-ratelimit"}
MARKER = "trace-marker-" + os.urandom(4).hex()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("envoy-trace")
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ts_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
    for svc in ("CLASSIFIER", "RATELIMIT", "ENFORCER"):
        env[f"{svc}_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        env[f"{svc}_OTLP_INSECURE"] = "true"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    policies, rl, key = write_config(tmp)
    (rl / "gateway.yaml").write_text(GATEWAY_LIMITS)
    try:
        with backends(tmp, rl) as b:
            parts = gateway_parts(b, tmp, region=REGION, policies=policies, key=key, otlp=f"127.0.0.1:{port}")
            envoy = EnvoyGateway(parts.config, tmp / "envoy").start()
            try:
                yield {"collector": collector, "envoy": envoy, "creds": parts.creds, "kafka": b.kafka}
            finally:
                envoy.stop()
    finally:
        server.stop(0)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_request_through_envoy_is_one_connected_trace_without_content(traced) -> None:
    trace_id, parent = os.urandom(16), os.urandom(8)
    client = anthropic.Anthropic(
        base_url=f"http://{traced['envoy'].address}",
        api_key=traced["creds"].token("acme", "acct-trace"),
        max_retries=0,
        timeout=30,
        default_headers={"traceparent": f"00-{trace_id.hex()}-{parent.hex()}-01"},
    )
    client.messages.create(
        model="claude-sonnet-4", max_tokens=32, messages=[{"role": "user", "content": f"Hello! {MARKER}"}]
    )
    collector = traced["collector"]
    # Connected: every span's parent is in the trace, except the root's, which is the
    # client's span. (Each process exports in its own batches: wait for all of them.)
    deadline = time.monotonic() + 30
    while True:
        spans = collector.trace(trace_id)
        by_id = {s.span_id for _svc, s in spans}
        orphans = {s.parent_span_id for _svc, s in spans if s.parent_span_id not in by_id}
        if SERVICES <= {svc for svc, _ in spans} and orphans == {parent}:
            break
        assert time.monotonic() < deadline, (
            f"services in the trace: {sorted({svc for svc, _ in spans})}; "
            f"{len(orphans - {parent})} span(s) whose parent is not in it"
        )
        time.sleep(0.3)
    # No content in anything exported.
    assert not any(MARKER.encode() in raw for raw in collector.raw)
    # The decisions (ext_authz's on the prompt, ext_proc's on the completion) name this trace.
    deadline = time.monotonic() + 30
    while True:
        records = asyncio.run(read_signals(traced["kafka"].bootstrap, {"-"}, timeout=5, region=REGION))
        sigs = [signals_pb2.SafeguardSignal.FromString(v) for _k, v in records]
        surfaces = {s.surface for s in sigs if s.trace_id == trace_id.hex()}
        if {signals_pb2.SURFACE_EXT_AUTHZ, signals_pb2.SURFACE_EXT_PROC_RESPONSE} <= surfaces:
            break
        assert time.monotonic() < deadline, f"signals naming the trace: {sorted(surfaces)}"
