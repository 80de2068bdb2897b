"""The official `anthropic` and `openai` SDKs pointed at a real Envoy in front of the
mesh (tests/envoy/conftest.py), as a customer would use them: benign requests served
(streaming and not), a jailbreak refused with the SDK's permission error, a tenant over
its limit refused with the SDK's rate-limit error, a harmful streamed completion ended
the way each SDK parses a refusal, PII masked before it reaches the model, identity
taken from the token and never from the client's headers, gzip completions screened."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
import uuid

import anthropic
import openai
import pytest

from tests.e2e.meshes import JAILBREAK, REGION, find_signal, read_signals
from tools.dev_upstream import DEV_TAG, ECHO, GZIP, HARMFUL, LEAKED_KEY

REPLACEMENT = "I can't continue with this response."  # the default policy's completion.replacement
KEY_MATERIAL = LEAKED_KEY.splitlines()[1][:24]  # the start of the leaked key's body


def claude(gw, token: str | None = None, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=token or gw.token(), max_retries=0, timeout=30, **kw)


def gpt(gw, token: str | None = None, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token or gw.token(), max_retries=0, timeout=30, **kw)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def post(gw, path: str, doc: dict, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request through Envoy (what no SDK would send)."""
    req = urllib.request.Request(
        gw.url + path, data=json.dumps(doc).encode(), headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def decision_id_in(message: str) -> str:
    m = re.search(r"decision ([0-9a-f]{32})", message)
    assert m, message
    return m.group(1)


# ---- benign requests ------------------------------------------------------------------
def test_anthropic_sdk_benign_request_is_served_streaming_and_not(gateway) -> None:
    client = claude(gateway)
    msg = client.messages.create(model="claude-sonnet-4", max_tokens=64, messages=ask("What is the capital of France?"))
    assert msg.stop_reason == "end_turn" and DEV_TAG in msg.content[0].text
    with client.messages.stream(model="claude-sonnet-4", max_tokens=64, messages=ask("Name three rivers.")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert DEV_TAG in text and final.stop_reason == "end_turn"


def test_openai_sdk_benign_request_is_served_streaming_and_not(gateway) -> None:
    client = gpt(gateway)
    resp = client.chat.completions.create(model="gpt-4o", messages=ask("What is the capital of France?"))
    assert resp.choices[0].finish_reason == "stop" and DEV_TAG in resp.choices[0].message.content
    stream = client.chat.completions.create(model="gpt-4o", messages=ask("Name three rivers."), stream=True)
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert DEV_TAG in "".join(parts) and finish == "stop"


def test_the_upstream_sees_the_verified_identity_and_the_decision_but_not_the_token(gateway) -> None:
    token = gateway.token("acme", "acct-upstream")
    marker = "headers-" + uuid.uuid4().hex[:8]
    claude(gateway, token).messages.create(model="m", max_tokens=8, messages=ask(f"Say hello ({marker})"))
    (seen,) = [r for r in gateway.upstream_requests() if marker in r["body"]]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-safeguards-tenant"] == "acme" and headers["x-safeguards-account"] == "acct-upstream"
    assert headers["x-safeguards-action"] == "ALLOW" and len(headers["x-safeguards-decision-id"]) == 32
    assert "x-api-key" not in headers and "authorization" not in headers  # jwt_authn forward: false
    assert "accept-encoding" not in headers  # screened routes ask for plain text


# ---- refusals -------------------------------------------------------------------------
def test_jailbreak_raises_the_sdks_permission_error_with_a_provider_shaped_body(gateway) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        claude(gateway).messages.create(model="claude-sonnet-4", max_tokens=64, messages=ask(JAILBREAK))
    err = exc.value
    assert err.status_code == 403 and err.body["type"] == "error"
    assert err.body["error"]["type"] == "permission_error"
    decision = decision_id_in(err.body["error"]["message"])
    assert err.response.headers["x-safeguards-decision-id"] == decision
    assert err.response.headers["x-safeguards-action"] == "BLOCK"

    with pytest.raises(openai.PermissionDeniedError) as exc2:
        gpt(gateway).chat.completions.create(model="gpt-4o", messages=ask(JAILBREAK))
    assert exc2.value.status_code == 403 and exc2.value.code == "content_policy_violation"
    decision_id_in(exc2.value.message)
    # Nothing of the refused prompt reached the model (tests/envoy/test_observe.py sends
    # one for an observe-only tenant on purpose).
    refused = [r for r in gateway.upstream_requests() if "DAN" in r["body"]]
    assert not [r for r in refused if {k.lower(): v for k, v in r["headers"].items()}["x-safeguards-tenant"] == "acme"]


def test_over_the_tenant_limit_raises_the_sdks_rate_limit_error_with_retry_after(gateway) -> None:
    token = gateway.token("tiny", "acct-" + uuid.uuid4().hex[:6])
    client = claude(gateway, token)
    for i in range(2):  # tenant tiny: 2 requests an hour
        client.messages.create(model="m", max_tokens=8, messages=ask(f"hello {i}"))
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model="m", max_tokens=8, messages=ask("hello again"))
    assert exc.value.status_code == 429 and int(exc.value.response.headers["retry-after"]) >= 1
    assert exc.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as exc2:
        gpt(gateway, token).chat.completions.create(model="m", messages=ask("hello 2"))
    assert int(exc2.value.response.headers["retry-after"]) >= 1


def test_the_gateways_own_limit_per_account_answers_429_with_retry_after(gateway) -> None:
    client = gpt(gateway, gateway.token("acme", "flood"))  # 3 a minute in the gateway domain
    statuses = []
    for i in range(5):
        try:
            client.chat.completions.create(model="m", messages=ask(f"ping {i}"))
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
            assert int(exc.response.headers["retry-after"]) >= 1
    assert statuses.count(429) >= 2 and statuses[0] == 200, statuses


# ---- completions ----------------------------------------------------------------------
def test_harmful_streamed_completion_ends_as_a_refusal_the_anthropic_sdk_parses(gateway) -> None:
    with claude(gateway).messages.stream(
        model="claude-sonnet-4", max_tokens=256, messages=ask(f"Name a river. {HARMFUL}")
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "refusal" and text.endswith(REPLACEMENT)
    assert KEY_MATERIAL not in text  # cut once the key shows: its body never reaches the client


def test_harmful_streamed_completion_ends_with_content_filter_in_the_openai_sdk(gateway) -> None:
    stream = gpt(gateway).chat.completions.create(model="gpt-4o", messages=ask(f"Name a river. {HARMFUL}"), stream=True)
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    text = "".join(parts)
    assert finish == "content_filter" and text.endswith(REPLACEMENT) and KEY_MATERIAL not in text


def test_harmful_non_streamed_completion_is_replaced(gateway) -> None:
    msg = claude(gateway).messages.create(model="m", max_tokens=64, messages=ask(f"Name a river. {HARMFUL}"))
    assert msg.stop_reason == "refusal" and msg.content[0].text == REPLACEMENT


def test_redact_prompt_reaches_the_upstream_masked(gateway) -> None:
    email = f"jane.{uuid.uuid4().hex[:6]}@example.com"
    msg = claude(gateway).messages.create(
        model="m", max_tokens=64, messages=ask(f"Please send the invoice to {email} today. {ECHO}")
    )
    echoed = msg.content[0].text  # what the model received
    assert email not in echoed and "send the invoice to" in echoed
    (seen,) = [r for r in gateway.upstream_requests() if "send the invoice to" in r["body"] and ECHO in r["body"]]
    assert email not in seen["body"]
    resp = gpt(gateway).chat.completions.create(model="m", messages=ask(f"Mail {email} the report. {ECHO}"))
    assert email not in resp.choices[0].message.content and "the report" in resp.choices[0].message.content


def test_gzip_sse_from_the_upstream_is_decoded_screened_and_cut(gateway) -> None:
    # The upstream compresses although the gateway asked for no encoding.
    with claude(gateway).messages.stream(
        model="m", max_tokens=256, messages=ask(f"Name a river. {GZIP} {HARMFUL}")
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "refusal" and text.endswith(REPLACEMENT) and KEY_MATERIAL not in text
    # A benign compressed stream arrives whole, decoded (no content-encoding left).
    status, headers, body = post(
        gateway,
        "/v1/chat/completions",
        {"model": "m", "stream": True, "messages": ask(f"Name a river. {GZIP}")},
        {"authorization": f"Bearer {gateway.token()}"},
    )
    events = [line.removeprefix("data: ") for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and "content-encoding" not in headers and events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text.startswith("Thanks for asking.") and DEV_TAG in text


# ---- identity -------------------------------------------------------------------------
def test_a_client_naming_another_tenant_is_decided_as_its_authenticated_tenant(gateway) -> None:
    client = claude(
        gateway,
        gateway.token("acme", "acct-spoof"),
        default_headers={
            "x-safeguards-tenant": "someone-else",
            "x-safeguards-account": "victim",
            "x-safeguards-redact": "1",
        },
    )
    raw = client.messages.with_raw_response.create(model="m", max_tokens=8, messages=ask("Hello there, friend."))
    decision = raw.headers.get("x-safeguards-decision-id") or ""
    seen = [r for r in gateway.upstream_requests() if "Hello there, friend." in r["body"]][-1]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-safeguards-tenant"] == "acme" and headers["x-safeguards-account"] == "acct-spoof"
    assert "x-safeguards-redact" not in headers and headers["x-safeguards-action"] == "ALLOW"
    decision = decision or headers["x-safeguards-decision-id"]
    sig = find_signal(asyncio.run(read_signals(gateway.backends.kafka.bootstrap, {decision}, region=REGION)), decision)
    assert sig.tenant == "acme"


def test_a_tenant_over_its_limit_cannot_escape_by_naming_another(gateway) -> None:
    token = gateway.token("tiny2", "acct-" + uuid.uuid4().hex[:6])
    client = gpt(gateway, token, default_headers={"x-safeguards-tenant": "acme"})
    for i in range(2):
        client.chat.completions.create(model="m", messages=ask(f"hi {i}"))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=ask("hi again"))


@pytest.mark.parametrize(
    "credential",
    [None, "not-a-jwt", "forged"],
    ids=["no-token", "garbage", "signed-by-another-key"],
)
def test_an_unauthenticated_client_is_refused_by_envoy(gateway, tmp_path, credential) -> None:
    if credential == "forged":
        from tools.envoy_gateway import DevCredentials

        credential = DevCredentials(tmp_path / "other").token("acme", "acct-1")
    before = len(gateway.upstream_requests())
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    status, _headers, body = post(
        gateway,
        "/v1/messages",
        {"model": "m", "max_tokens": 8, "messages": ask("hi")},
        {**headers, "x-safeguards-tenant": "acme"},
    )
    assert status == 401, body
    assert len(gateway.upstream_requests()) == before
    with pytest.raises(anthropic.AuthenticationError):
        claude(gateway, credential or "x").messages.create(model="m", max_tokens=8, messages=ask("hi"))


def test_an_expired_token_or_one_for_another_api_is_refused(gateway) -> None:
    expired = gateway.creds.token("acme", "a", ttl_s=60, now=1_000_000)
    with pytest.raises(openai.AuthenticationError):  # 401 Jwt is expired
        gpt(gateway, expired).chat.completions.create(model="m", messages=ask("hi"))
    wrong_aud = gateway.creds.token("acme", "a", audience="someone-elses-api")
    with pytest.raises(openai.PermissionDeniedError) as exc:  # 403 Audiences in Jwt are not allowed
        gpt(gateway, wrong_aud).chat.completions.create(model="m", messages=ask("hi"))
    assert "x-safeguards-decision-id" not in exc.value.response.headers  # refused before the mesh


# ---- hostile clients --------------------------------------------------------------------
def test_a_forged_token_next_to_a_valid_one_is_refused(gateway, tmp_path) -> None:
    from tools.envoy_gateway import DevCredentials

    forged = DevCredentials(tmp_path / "attacker").token("internal-evals", "admin")
    status, _headers, body = post(
        gateway,
        "/v1/messages",
        {"model": "m", "max_tokens": 8, "messages": ask("hi")},
        {"x-api-key": gateway.token("acme", "acct-1"), "authorization": f"Bearer {forged}"},
    )
    assert status == 401, body


def test_a_client_request_id_is_not_trusted(gateway) -> None:
    marker = "rid-" + uuid.uuid4().hex[:8]
    claude(gateway, default_headers={"x-request-id": "attacker-chosen-id"}).messages.create(
        model="m", max_tokens=8, messages=ask(f"Name a river ({marker}).")
    )
    (seen,) = [r for r in gateway.upstream_requests() if marker in r["body"]]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-request-id"] != "attacker-chosen-id"


def test_a_body_over_the_gateways_limit_is_refused_by_envoy_unscreened(gateway) -> None:
    before = len(gateway.upstream_requests())
    with pytest.raises(anthropic.APIStatusError) as exc:
        claude(gateway).messages.create(model="m", max_tokens=8, messages=ask("x" * (1024 * 1024 + 1)))
    assert exc.value.status_code == 413 and len(gateway.upstream_requests()) == before
