"""Envoy ext_authz against the real mesh (tests/e2e/meshes.py): Check calls shaped
like the ones Envoy sends (with_request_body, pack_as_bytes), answered with the
screener's decision as HTTP allow/deny, and a signal with surface EXT_AUTHZ. The same
API called by a real Envoy (the release binary, official SDKs as clients):
tests/envoy/."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from google.rpc import code_pb2
from safeguards.v1 import signals_pb2

from tests.e2e.meshes import JAILBREAK, REGION, enforcer_mesh, find_signal, read_signals

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with enforcer_mesh(tmp_path_factory.mktemp("authz"), ["--authz-max-body-bytes", str(MAX_BODY)]) as m:
        with grpc.insecure_channel(m["enforcer"].address) as ch:
            m["stub"] = ea_grpc.AuthorizationStub(ch)
            yield m


def anthropic(*texts: str, system: str = "") -> bytes:
    doc = {"model": "claude-sonnet-4", "max_tokens": 256, "messages": [{"role": "user", "content": t} for t in texts]}
    if system:
        doc["system"] = system
    return json.dumps(doc).encode()


def openai(*texts: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": t}]} for t in texts]}
    ).encode()


def check(
    mesh,
    body: bytes | str,
    *,
    tenant: str | None = "acme",
    path: str = "/v1/messages",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> ea.CheckResponse:
    hdrs = {"content-type": "application/json", ":path": path, ":method": method, **(headers or {})}
    if tenant is not None:
        hdrs["x-safeguards-tenant"] = tenant
    hdrs["x-safeguards-account"] = "acct-9"
    hdrs["x-request-id"] = request_id or "req-" + uuid.uuid4().hex[:8]
    http = ac.AttributeContext.HttpRequest(id="envoy-1", method=method, path=path, host="api.example", headers=hdrs)
    if isinstance(body, str):
        http.body = body  # Envoy without pack_as_bytes
    else:
        http.raw_body = body
    return mesh["stub"].Check(ea.CheckRequest(attributes=ac.AttributeContext(request=ac.AttributeContext.Request(
        http=http))), timeout=5)  # fmt: skip


def ok_headers(resp: ea.CheckResponse) -> dict[str, str]:
    assert resp.status.code == code_pb2.OK and resp.WhichOneof("http_response") == "ok_response"
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def denied(resp: ea.CheckResponse, status: int) -> tuple[dict[str, str], dict]:
    assert resp.status.code != code_pb2.OK and resp.WhichOneof("http_response") == "denied_response"
    d = resp.denied_response
    assert d.status.code == status, (d.status.code, d.body)
    headers = {h.header.key: h.header.value for h in d.headers}
    assert headers["content-type"] == "application/json"
    return headers, json.loads(d.body)


def test_benign_anthropic_request_is_allowed_with_decision_headers_and_signalled(mesh) -> None:
    resp = check(
        mesh, anthropic("What is the capital of France?", system="Answer in one word."), request_id="req-benign-1"
    )
    headers = ok_headers(resp)
    assert headers["x-safeguards-action"] == "ALLOW" and len(headers["x-safeguards-decision-id"]) == 32
    assert "x-safeguards-redact" in resp.ok_response.headers_to_remove  # a client cannot forge it
    assert resp.dynamic_metadata["decision_id"] == headers["x-safeguards-decision-id"]
    records = asyncio.run(read_signals(mesh["kafka"].bootstrap, {headers["x-safeguards-decision-id"]}))
    sig = find_signal(records, headers["x-safeguards-decision-id"])
    assert sig.surface == signals_pb2.SURFACE_EXT_AUTHZ
    assert sig.tenant == "acme" and sig.region == REGION and sig.model == "claude-sonnet-4"
    assert sig.request_id == "req-benign-1" and sig.account_hmac and "acct-9" not in sig.account_hmac
    assert sig.content.redacted_snippet.startswith("Answer in one word.")  # the system prompt is screened too


def test_body_sent_as_a_string_without_pack_as_bytes_is_screened_too(mesh) -> None:
    assert ok_headers(check(mesh, anthropic("Name three rivers.").decode()))["x-safeguards-action"] == "ALLOW"


def test_openai_jailbreak_is_denied_403_with_an_openai_shaped_error(mesh) -> None:
    resp = check(mesh, openai(JAILBREAK), path="/v1/chat/completions")
    headers, body = denied(resp, 403)
    assert resp.status.code == code_pb2.PERMISSION_DENIED
    assert headers["x-safeguards-action"] == "BLOCK" and headers["x-safeguards-decision-id"]
    err = body["error"]
    assert err["code"] == "content_policy_violation" and headers["x-safeguards-decision-id"] in err["message"]
    assert "type" in err and "DAN" not in json.dumps(body)


def test_throttled_tenant_gets_429_with_retry_after_in_anthropic_shape(mesh) -> None:
    statuses = []
    for i in range(3):
        resp = check(mesh, anthropic(f"hello {i}"), tenant="tiny")
        statuses.append("ok" if resp.status.code == code_pb2.OK else resp.denied_response.status.code)
    assert statuses == ["ok", "ok", 429]
    headers, body = denied(check(mesh, anthropic("hello again"), tenant="tiny"), 429)
    assert int(headers["retry-after"]) >= 1 and headers["x-safeguards-action"] == "THROTTLE"
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_pii_is_allowed_with_the_redact_header(mesh) -> None:
    headers = ok_headers(check(mesh, anthropic("Please email the invoice to jane.doe@example.com today.")))
    assert headers["x-safeguards-action"] == "REDACT" and headers["x-safeguards-redact"] == "1"


def test_requests_without_a_prompt_pass_unscreened(mesh) -> None:
    resp = check(mesh, b"", method="GET", path="/v1/models", tenant=None)
    headers = ok_headers(resp)
    assert headers == {"x-safeguards-action": "UNSCREENED"}
    assert set(resp.ok_response.headers_to_remove) == {"x-safeguards-decision-id", "x-safeguards-redact"}


@pytest.mark.parametrize(
    ("kw", "status", "message"),
    [
        (dict(body=anthropic("hi"), tenant=None), 400, "missing x-safeguards-tenant header"),
        (dict(body=b'{"messages": [', path="/v1/chat/completions"), 400, "not valid JSON"),
        (dict(body=b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'), 400, "not valid UTF-8"),
        (dict(body=anthropic("x" * MAX_BODY)), 400, f"(max {MAX_BODY})"),
        (dict(body=anthropic("hi"), headers={"x-envoy-auth-partial-body": "true"}), 413, "larger than the gateway"),
        (
            dict(body=json.dumps({"messages": [{"role": "user", "content": "y"}] * 300}).encode()),
            400,
            "too many messages",
        ),
        (dict(body=b"{}", headers={"content-type": "text/plain"}), 400, "content-type must be application/json"),
    ],
)
def test_bad_input_is_denied_with_a_400_json_error_and_the_service_keeps_answering(mesh, kw, status, message) -> None:
    resp = check(mesh, **kw)
    headers, body = denied(resp, status)
    assert resp.status.code == code_pb2.INVALID_ARGUMENT
    text = body["error"]["message"]
    assert message in text, text
    if kw.get("path", "/v1/messages") == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] in ("invalid_request_error", "request_too_large")
    assert "x-safeguards-decision-id" not in headers
    assert ok_headers(check(mesh, anthropic("still there?")))["x-safeguards-action"] == "ALLOW"


def test_zero_retention_content_and_client_strings_stay_out_of_kafka_logs_and_metrics(mesh) -> None:
    marker = "okapi-umber-" + uuid.uuid4().hex[:8]
    resp = check(mesh, anthropic(f"Summarise the plan called {marker}."), tenant="zero")
    decision_id = ok_headers(resp)["x-safeguards-decision-id"]
    # a client string echoed in a 400 answer must not reach the log either
    bad = check(mesh, json.dumps({"messages": [{"role": marker, "content": "x"}]}).encode())
    assert marker in denied(bad, 400)[1]["error"]["message"]  # the client is told what was wrong
    records = asyncio.run(read_signals(mesh["kafka"].bootstrap, {decision_id}))
    sig = find_signal(records, decision_id)
    assert sig.surface == signals_pb2.SURFACE_EXT_AUTHZ and not sig.content.redacted_snippet and not sig.request_id
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{mesh['metrics_port']}/metrics", timeout=5).read()
    blob = b"".join(k + v for k, v in records)
    for where, data in (("kafka", blob), ("enforcer log", mesh["enforcer"].logs().encode()), ("metrics", metrics)):
        assert marker.encode() not in data, f"client text reached the {where}"
        assert b"acct-9" not in data, f"raw account id reached the {where}"
    assert "authz refused a malformed request" in mesh["enforcer"].logs()
