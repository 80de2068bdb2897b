"""One ext_proc exchange driven message by message, in process (real policies,
detectors, body parser and SSE decoder): streamed request bodies held back and
released whole, partial events held back, error statuses passed through unscreened,
a request without a tenant answered 400, and one signal for a dropped stream."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.enforcer.edges.authz import decision_response
from services.enforcer.edges.bodies import refusal
from services.enforcer.edges.extproc import ExtProcConfig, HttpExchange
from services.enforcer.policy import Action
from tests.unit.enforcer_stream.helpers import make_screener

BODY = json.dumps(
    {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "Tell me a story"}]}
).encode()


def hdrs(**pairs: str) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in pairs.items()]
        )
    )


REQ_HEADERS = ep.ProcessingRequest(
    request_headers=hdrs(
        **{":path": "/v1/chat/completions", "content_type": "application/json", "x_safeguards_tenant": "acme"}
    )
)


def body(data: bytes, end: bool, response: bool = False) -> ep.ProcessingRequest:
    b = ep.HttpBody(body=data, end_of_stream=end)
    return ep.ProcessingRequest(response_body=b) if response else ep.ProcessingRequest(request_body=b)


async def test_streamed_request_body_is_held_back_then_released_whole(tmp_path) -> None:
    screener, _cl, pub = make_screener(tmp_path)
    x = HttpExchange(screener, ExtProcConfig())
    await x.handle(REQ_HEADERS)
    first = await x.handle(body(BODY[:20], False))
    assert first.request_body.response.body_mutation.HasField("body")
    assert first.request_body.response.body_mutation.body == b""
    last = (await x.handle(body(BODY[20:], True))).request_body.response
    assert last.body_mutation.body == BODY
    assert {h.header.key for h in last.header_mutation.set_headers} >= {"x-safeguards-decision-id"}
    assert len(pub.records) == 1  # the prompt's signal


async def test_request_without_a_tenant_header_gets_400(tmp_path) -> None:
    screener, _cl, _pub = make_screener(tmp_path)
    x = HttpExchange(screener, ExtProcConfig())
    await x.handle(ep.ProcessingRequest(request_headers=hdrs(**{":path": "/v1/chat/completions"})))
    out = await x.handle(body(BODY, True))
    assert out.immediate_response.status.code == 400
    assert json.loads(out.immediate_response.body)["error"]["message"] == "tenant is required"


async def test_oversize_request_body_gets_400_before_parsing(tmp_path) -> None:
    screener, _cl, _pub = make_screener(tmp_path)
    x = HttpExchange(screener, ExtProcConfig(max_body_bytes=50))
    await x.handle(REQ_HEADERS)
    await x.handle(body(BODY[:40], False))
    out = await x.handle(body(BODY[40:], False))
    assert out.immediate_response.status.code == 400 and b"over 50 bytes" in out.immediate_response.body


async def test_error_responses_pass_through_unscreened(tmp_path) -> None:
    screener, cl, pub = make_screener(tmp_path)
    x = HttpExchange(screener, ExtProcConfig())
    await x.handle(REQ_HEADERS)
    await x.handle(body(BODY, True))
    calls = len(cl.texts)
    await x.handle(ep.ProcessingRequest(response_headers=hdrs(**{":status": "500"})))
    out = await x.handle(body(b'{"error": "plutonium recipe"}', True, response=True))
    assert not out.response_body.response.HasField("body_mutation")
    assert x.session is None and len(cl.texts) == calls and len(pub.records) == 1


async def test_partial_events_are_held_back_and_a_dropped_stream_signals_once(tmp_path) -> None:
    screener, _cl, pub = make_screener(tmp_path, every=1000, window=2000)
    x = HttpExchange(screener, ExtProcConfig())
    await x.handle(REQ_HEADERS)
    await x.handle(body(BODY, True))
    await x.handle(
        ep.ProcessingRequest(response_headers=hdrs(**{":status": "200", "content_type": "text/event-stream"}))
    )
    event = b'data: {"choices":[{"index":0,"delta":{"content":"once upon"}}]}\n\n'
    out1 = (await x.handle(body(event + event[:10], False, response=True))).response_body.response
    assert out1.body_mutation.body == event  # the partial second event waits
    out2 = (await x.handle(body(event[10:], False, response=True))).response_body.response
    assert out2.body_mutation.body == event
    out3 = (await x.handle(body(event, False, response=True))).response_body.response
    assert not out3.HasField("body_mutation")  # whole events pass as they are
    assert len(pub.records) == 1
    x.close()  # Envoy went away mid-stream
    x.close()
    assert len(pub.records) == 2
    assert pub.signals()[-1].reasons[-1].code == "completion.abandoned"


async def test_after_ext_authz_only_the_completion_is_screened(tmp_path) -> None:
    screener, cl, pub = make_screener(tmp_path, every=10, window=100)
    x = HttpExchange(screener, ExtProcConfig(after_authz=True))
    req_headers = hdrs(
        **{
            ":path": "/v1/chat/completions",
            "x_safeguards_tenant": "acme",
            "x_safeguards_decision_id": "authz-decision-1",
        }
    )
    await x.handle(ep.ProcessingRequest(request_headers=req_headers))
    out = (await x.handle(body(BODY, True))).request_body.response
    assert not out.HasField("header_mutation") and not out.HasField("body_mutation")
    assert not cl.texts and not pub.records  # the prompt is not screened twice
    await x.handle(
        ep.ProcessingRequest(response_headers=hdrs(**{":status": "200", "content_type": "text/event-stream"}))
    )
    event = b'data: {"choices":[{"index":0,"delta":{"content":"the plutonium recipe is"}}]}\n\n'
    cut = (await x.handle(body(event, False, response=True))).response_body.response
    assert b'"finish_reason":"content_filter"' in cut.body_mutation.body
    (sig,) = pub.signals()
    assert sig.action == 5 and sig.surface == 5  # BLOCK, SURFACE_EXT_PROC_RESPONSE
    assert sig.prompt_decision_id == "authz-decision-1"  # the completion links to ext_authz's decision


async def test_ext_proc_and_ext_authz_answer_a_block_with_the_one_http_mapping(tmp_path) -> None:
    """One mapping from decision to HTTP answer (bodies.refusal) for both Envoy APIs: the
    same status, error code and message, in the caller's provider shape."""
    screener, _cl, _pub = make_screener(tmp_path)
    x = HttpExchange(screener, ExtProcConfig())
    await x.handle(REQ_HEADERS)
    blocked = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "the plutonium recipe"}]})
    out = (await x.handle(body(blocked.encode(), True))).immediate_response
    assert out.status.code == 403
    proc_error = json.loads(out.body)["error"]
    authz = decision_response("openai", x.prompt).denied_response
    assert authz.status.code == out.status.code
    assert json.loads(authz.body)["error"] == proc_error
    assert proc_error["code"] == "content_policy_violation" and x.prompt.decision_id in proc_error["message"]


def test_throttle_maps_to_429_rate_limit_exceeded_with_retry_after_of_at_least_a_second() -> None:
    r = refusal(Action.THROTTLE, "d1", 0.2)
    assert (r.status, r.code, r.retry_after_s) == (429, "rate_limit_exceeded", 1)
    assert refusal(Action.THROTTLE, "d1", 7.1).retry_after_s == 8
    assert refusal(Action.ALLOW, "d1", 0) is None and refusal(Action.REDACT, "d1", 0) is None


def anthropic_sse(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def delta(index: int, kind: str, field: str, text: str) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}}


def blocks_as_a_client_sees_them(stream: bytes) -> list[str]:
    """Replay the bytes the client got as the Anthropic SDK accumulates them: a delta or
    stop for a block it was never told of is an error there (IndexError)."""
    content: list[str] = []
    for raw in stream.decode().split("\n\n"):
        data = "".join(line[6:] for line in raw.splitlines() if line.startswith("data: "))
        if not data:
            continue
        ev = json.loads(data)
        if ev["type"] == "content_block_start":
            assert ev["index"] == len(content), (ev, content)
            content.append(ev["content_block"]["type"])
        elif ev["type"] in ("content_block_delta", "content_block_stop"):
            assert ev["index"] < len(content), (ev, content)
    return content


async def test_a_cut_chunk_that_crosses_a_block_boundary_ends_the_blocks_the_client_saw(tmp_path) -> None:
    """The cut chunk has text from its first event, and inside it the thinking block ends
    and the answer's text block starts: that chunk is withheld, so the ending continues
    from the thinking block the client has open, never from the withheld text block."""
    screener, _cl, _pub = make_screener(tmp_path, every=10, window=400)
    x = HttpExchange(screener, ExtProcConfig(after_authz=True))
    await x.handle(
        ep.ProcessingRequest(
            request_headers=hdrs(
                **{":path": "/v1/messages", "x_safeguards_tenant": "acme", "x_safeguards_decision_id": "d1"}
            )
        )
    )
    await x.handle(
        body(json.dumps({"model": "c", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode(), True)
    )
    await x.handle(
        ep.ProcessingRequest(response_headers=hdrs(**{":status": "200", "content_type": "text/event-stream"}))
    )
    first = anthropic_sse(
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        delta(0, "thinking_delta", "thinking", "Let me think about the question carefully."),
    )
    out1 = (await x.handle(body(first, False, response=True))).response_body.response
    sent = out1.body_mutation.body if out1.HasField("body_mutation") else first
    second = anthropic_sse(
        delta(0, "thinking_delta", "thinking", " It is HARMFUL to answer."),
        delta(0, "signature_delta", "signature", "sig"),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        delta(1, "text_delta", "text", "Here is the answer."),
        {"type": "content_block_stop", "index": 1},
    )
    cut = (await x.handle(body(second, False, response=True))).response_body.response.body_mutation.body
    assert b"HARMFUL" not in cut and b"Here is the answer" not in cut
    assert b'"stop_reason":"refusal"' in cut and b"[cut]" in cut
    assert blocks_as_a_client_sees_them(sent + cut) == ["thinking", "text"]
