"""ext_authz message conversion: what Envoy sends read into an HttpView, and each
decision turned into the CheckResponse Envoy acts on."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as ea
from google.rpc import code_pb2

from services.enforcer.decision import Outcome
from services.enforcer.edges.authz import decision_response, denied_response, http_view, ok_response
from services.enforcer.edges.bodies import ANTHROPIC, OPENAI, loggable
from services.enforcer.policy import Action
from services.enforcer.requests import ScreenResult


def result(action: Action, retry_after_s: float = 0.0) -> ScreenResult:
    outcome = Outcome(action, (), (), action is Action.REDACT, False, (), retry_after_s)
    return ScreenResult("d" * 32, outcome, "v1", (), 0.001)


def headers(options) -> dict[str, str]:
    return {h.header.key: h.header.value for h in options}


def test_http_view_reads_headers_header_map_and_either_body_field() -> None:
    http = ac.AttributeContext.HttpRequest(
        id="7", method="post", path="/v1/messages", headers={"X-Safeguards-Tenant": "acme"}, body="{}"
    )
    http.header_map.headers.add(key="x-request-id", raw_value=b"r-1")
    view = http_view(ea.CheckRequest(attributes=ac.AttributeContext(request=ac.AttributeContext.Request(http=http))))
    assert view.method == "POST" and view.path == "/v1/messages" and view.envoy_id == "7"
    assert view.headers == {"x-safeguards-tenant": "acme", "x-request-id": "r-1"}
    assert view.body == b"{}"
    http.raw_body = b"\xff raw"
    view = http_view(ea.CheckRequest(attributes=ac.AttributeContext(request=ac.AttributeContext.Request(http=http))))
    assert view.body == b"\xff raw"  # raw_body (pack_as_bytes) wins


@pytest.mark.parametrize("action", [Action.ALLOW, Action.FLAG])
def test_allow_and_flag_are_ok_with_decision_headers_that_overwrite_client_copies(action) -> None:
    resp = decision_response(ANTHROPIC, result(action))
    assert resp.status.code == code_pb2.OK and resp.WhichOneof("http_response") == "ok_response"
    assert headers(resp.ok_response.headers) == {
        "x-safeguards-decision-id": "d" * 32,
        "x-safeguards-action": action.name,
    }
    assert all(
        h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD for h in resp.ok_response.headers
    )
    assert list(resp.ok_response.headers_to_remove) == ["x-safeguards-redact"]
    assert dict(resp.dynamic_metadata) == {"decision_id": "d" * 32, "action": action.name}


def test_redact_is_ok_with_the_redact_header() -> None:
    resp = decision_response(OPENAI, result(Action.REDACT))
    assert headers(resp.ok_response.headers)["x-safeguards-redact"] == "1"
    assert not resp.ok_response.headers_to_remove


def test_block_is_403_with_an_error_in_the_callers_flavor() -> None:
    for flavor in (ANTHROPIC, OPENAI):
        resp = decision_response(flavor, result(Action.BLOCK))
        d = resp.denied_response
        assert resp.status.code == code_pb2.PERMISSION_DENIED and d.status.code == 403
        assert headers(d.headers) == {
            "content-type": "application/json",
            "x-safeguards-decision-id": "d" * 32,
            "x-safeguards-action": "BLOCK",
        }
        body = json.loads(d.body)
        if flavor == ANTHROPIC:
            assert body["type"] == "error" and body["error"]["type"] == "permission_error"
            assert "d" * 32 in body["error"]["message"]
        else:
            assert body["error"]["code"] == "content_policy_violation" and body["error"]["param"] is None


def test_throttle_is_429_with_retry_after_rounded_up_and_at_least_one_second() -> None:
    for retry, expect in ((0.0, "1"), (0.2, "1"), (2.5, "3"), (60.0, "60")):
        d = decision_response(ANTHROPIC, result(Action.THROTTLE, retry)).denied_response
        assert d.status.code == 429 and headers(d.headers)["retry-after"] == expect
        assert json.loads(d.body)["error"]["type"] == "rate_limit_error"


def test_bad_request_denial_has_no_decision_and_defaults_to_openai_shape_without_a_flavor() -> None:
    resp = denied_response(400, None, "missing x-safeguards-tenant header")
    assert resp.status.code == code_pb2.INVALID_ARGUMENT and resp.denied_response.status.code == 400
    assert headers(resp.denied_response.headers) == {"content-type": "application/json"}
    assert json.loads(resp.denied_response.body)["error"]["message"] == "missing x-safeguards-tenant header"
    assert dict(resp.dynamic_metadata) == {"action": "HTTP_400"}


def test_unscreened_ok_removes_every_verdict_header_a_client_sent() -> None:
    resp = ok_response("", "UNSCREENED")
    assert headers(resp.ok_response.headers) == {"x-safeguards-action": "UNSCREENED"}
    assert set(resp.ok_response.headers_to_remove) == {"x-safeguards-decision-id", "x-safeguards-redact"}


@pytest.mark.parametrize("value", ["plain", "it's", 'say "hi"', "both ' and \"", "back\\slash"])
def test_client_strings_quoted_in_error_messages_are_masked_for_the_log(value) -> None:
    assert loggable(f"messages[0].role {value!r} is not user or assistant") == (
        "messages[0].role '…' is not user or assistant"
    )
