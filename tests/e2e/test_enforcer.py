"""The enforcer with every dependency as a real process: classifier (real ONNX
models), rate limiter (real Redis), Tansu broker (tests/e2e/meshes.py); ScreenPrompt
over real gRPC."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import grpc
import pytest
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc, signals_pb2

from tests.e2e.meshes import JAILBREAK, REGION, enforcer_mesh, read_signals

MARKER = "zebra-quartz-" + uuid.uuid4().hex[:8]  # a string that must never leave ZERO_RETENTION


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with enforcer_mesh(tmp_path_factory.mktemp("enforcer")) as m:
        yield m


def screen(mesh, tenant: str, *contents: str, account: str = "acct-1", region: str = REGION, timeout: float = 5):
    with grpc.insecure_channel(mesh["enforcer"].address) as ch:
        stub = safeguards_pb2_grpc.SafeguardsServiceStub(ch)
        req = pb.ScreenPromptRequest(
            context=pb.RequestContext(
                tenant=tenant,
                account=account,
                model="claude",
                region=region,
                request_id="req-" + uuid.uuid4().hex[:6],
                project="proj-7",
            ),
            messages=[pb.ChatMessage(role="user", content=c) for c in contents],
        )
        return stub.ScreenPrompt(req, timeout=timeout).decision


def test_benign_prompt_is_allowed_and_signalled(mesh) -> None:
    d = screen(mesh, "acme", "What is the capital of France?")
    assert d.action == pb.ACTION_ALLOW and d.decision_id and d.policy_version == "e2e.1"
    assert not d.degraded
    records = asyncio.run(read_signals(mesh["kafka"].bootstrap, {d.decision_id}))
    sig = next(
        signals_pb2.SafeguardSignal.FromString(v)
        for k, v in records
        if signals_pb2.SafeguardSignal.FromString(v).decision_id == d.decision_id
    )
    assert sig.tenant == "acme" and sig.region == REGION and sig.action == pb.ACTION_ALLOW
    assert sig.account_hmac and "acct-1" not in sig.account_hmac
    assert sig.content.redacted_snippet.startswith("What is the capital")
    assert sig.latencies.total.ToNanoseconds() > 0 and sig.model_versions


def test_jailbreak_is_blocked_by_the_classifier(mesh) -> None:
    d = screen(mesh, "acme", JAILBREAK)
    assert d.action == pb.ACTION_BLOCK
    assert "classifier.jailbreak" in [r.code for r in d.reasons]


def test_pii_is_redacted(mesh) -> None:
    d = screen(mesh, "acme", "Please email the invoice to jane.doe@example.com today.")
    assert d.action == pb.ACTION_REDACT
    assert d.redacted_messages[0].content == "Please email the invoice to [EMAIL] today."


def test_rate_limit_throttles_with_retry_after(mesh) -> None:
    actions = [screen(mesh, "tiny", f"hello {i}").action for i in range(3)]
    assert actions == [pb.ACTION_ALLOW, pb.ACTION_ALLOW, pb.ACTION_THROTTLE]
    d = screen(mesh, "tiny", "hello again")
    assert d.retry_after.ToTimedelta().total_seconds() >= 1
    assert d.reasons[0].code == "ratelimit.tiny-hourly"


def test_zero_retention_leaves_no_content_in_kafka_logs_or_metrics(mesh) -> None:
    d = screen(mesh, "zero", f"My secret project is called {MARKER}; summarise it.", account="zero-account-42")
    assert d.action == pb.ACTION_ALLOW
    records = asyncio.run(read_signals(mesh["kafka"].bootstrap, {d.decision_id}))
    blob = b"".join(k + v for k, v in records)
    sig = next(
        signals_pb2.SafeguardSignal.FromString(v)
        for _, v in records
        if signals_pb2.SafeguardSignal.FromString(v).decision_id == d.decision_id
    )
    assert sig.data_policy == signals_pb2.DATA_POLICY_ZERO_RETENTION
    assert not sig.content.redacted_snippet and not sig.content.text_hmac and not sig.request_id and not sig.project
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{mesh['metrics_port']}/metrics", timeout=5).read()
    for where, data in (
        ("kafka", blob),
        ("enforcer log", mesh["enforcer"].logs().encode()),
        ("classifier log", mesh["classifier"].logs().encode()),
        ("metrics", metrics),
    ):
        assert MARKER.encode() not in data, f"prompt text reached the {where}"
        assert b"zero-account-42" not in data, f"raw account id reached the {where}"


def test_bad_input_gets_clear_errors(mesh) -> None:
    cases = [
        (dict(tenant="", contents=("x",)), grpc.StatusCode.INVALID_ARGUMENT, "tenant is required"),
        (dict(tenant="acme", contents=()), grpc.StatusCode.INVALID_ARGUMENT, "messages must not be empty"),
        (dict(tenant="acme", contents=("x",), region="mars"), grpc.StatusCode.FAILED_PRECONDITION, "region 'mars'"),
        (dict(tenant="acme", contents=("x" * 300_000,)), grpc.StatusCode.INVALID_ARGUMENT, "prompt is 300000 bytes"),
    ]
    for kw, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            screen(mesh, kw["tenant"], *kw["contents"], region=kw.get("region", REGION))
        assert err.value.code() == code and message in err.value.details()
    good = pb.ScreenPromptRequest(
        context=pb.RequestContext(tenant="acme"), messages=[pb.ChatMessage(role="user", content="abc")]
    ).SerializeToString()
    with grpc.insecure_channel(mesh["enforcer"].address) as ch:
        raw = ch.unary_unary("/safeguards.v1.SafeguardsService/ScreenPrompt", request_serializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            raw(good.replace(b"abc", b"a\xffc"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert screen(mesh, "acme", "still alive?").action == pb.ACTION_ALLOW


def test_classifier_down_fail_open_and_fail_closed_within_the_budget(mesh) -> None:
    mesh["classifier"].stop()
    t0 = time.monotonic()
    open_d = screen(mesh, "acme", "What is the capital of France?")
    closed_d = screen(mesh, "closed", "What is the capital of France?")
    assert time.monotonic() - t0 < 2 * 0.4 + 1.0  # two calls, each within its 400 ms budget (+ slack)
    assert open_d.action == pb.ACTION_ALLOW and open_d.degraded
    assert closed_d.action == pb.ACTION_BLOCK
    assert closed_d.reasons[0].code == "dependency.classifier"
