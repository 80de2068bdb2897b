"""Observe-only tenants (issue 15 item 4): a real Envoy whose observe-only route sends the
enforcer a copy of each request and response (ext_proc observability mode) and waits for
nothing. Their decisions and signals are produced (marked observe_only), nothing is
blocked or cut; every other tenant is enforced as before. A tenant moves to enforcing by
leaving the observe list (the route is rendered from it)."""

from __future__ import annotations

import asyncio
import time

import anthropic
import pytest
from safeguards.v1 import safeguards_pb2, signals_pb2

from tests.e2e.meshes import JAILBREAK, REGION, read_signals
from tools.dev_upstream import HARMFUL, LEAKED_KEY
from tools.envoy_gateway import AUDIENCE, ISSUER

KEY_MATERIAL = LEAKED_KEY.splitlines()[1][:24]


@pytest.fixture(scope="module")
def observe(gateway):
    envoy = gateway.another_envoy("observe", observe_tenants=["shadowco"])

    def client(tenant: str, account: str = "acct-obs") -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"http://{envoy.address}", api_key=gateway.token(tenant, account), max_retries=0, timeout=30
        )

    return client


def observed_signals(gateway, tenant: str, want: int, timeout: float = 25) -> list[signals_pb2.SafeguardSignal]:
    """The tenant's observe-only signals, once at least `want` have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        records = asyncio.run(read_signals(gateway.backends.kafka.bootstrap, {"-"}, timeout=2, region=REGION))
        sigs = [signals_pb2.SafeguardSignal.FromString(v) for _k, v in records]
        mine = [s for s in sigs if s.tenant == tenant and s.observe_only]
        if len(mine) >= want or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_an_observe_only_tenant_is_decided_and_signalled_but_never_blocked(gateway, observe) -> None:
    marker = "observe-" + str(time.monotonic_ns())
    reply = observe("shadowco").messages.create(
        model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": f"{JAILBREAK} {marker}"}]
    )
    assert reply.content  # served: nothing waited for the enforcer's answer
    assert [r for r in gateway.upstream_requests() if marker in r["body"]]  # the model saw it

    # The enforcer screened the copy: a BLOCK on record, marked observe-only, not enforced.
    sigs = observed_signals(gateway, "shadowco", 1)
    prompt = [s for s in sigs if s.surface == signals_pb2.SURFACE_EXT_PROC_REQUEST]
    assert prompt and any(s.action == safeguards_pb2.ACTION_BLOCK for s in prompt)


def test_an_observe_only_stream_is_screened_but_not_cut(gateway, observe) -> None:
    with observe("shadowco", "acct-stream").messages.stream(
        model="claude-sonnet-4", max_tokens=256, messages=[{"role": "user", "content": f"Tell me {HARMFUL}"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert KEY_MATERIAL in text and final.stop_reason != "refusal"  # observed, not cut
    completions = [
        s for s in observed_signals(gateway, "shadowco", 2) if s.surface == signals_pb2.SURFACE_EXT_PROC_RESPONSE
    ]
    assert any(s.action == safeguards_pb2.ACTION_BLOCK for s in completions)


def test_enforcing_tenants_on_the_same_gateway_are_still_enforced(observe) -> None:
    with pytest.raises(anthropic.PermissionDeniedError):
        observe("acme").messages.create(
            model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": JAILBREAK}]
        )


# ---- the observe-only route cannot be chosen by the client ---------------------------------
# The route is picked by x-safeguards-tenant, and Envoy first picks one from the headers as
# the client sent them (before header_mutation drops the client's x-safeguards-* headers);
# only the verified token may decide it.
def test_an_enforcing_tenant_naming_an_observe_only_tenant_in_a_header_is_still_refused(gateway, observe) -> None:
    marker = "escape-" + str(time.monotonic_ns())
    client = observe("acme", "acct-escape").with_options(default_headers={"x-safeguards-tenant": "shadowco"})
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": f"{JAILBREAK} {marker}"}]
        )
    assert not [r for r in gateway.upstream_requests() if marker in r["body"]]  # the model never saw it


def test_a_token_without_identity_claims_cannot_reach_the_observe_route_by_header(gateway, observe) -> None:
    """A valid token that sets no identity header (no tenant, sub or project claim) gives
    jwt_authn nothing to add, so nothing clears the route Envoy chose from the client's
    headers: the observe-only route must not be among the ones a client can pick."""
    now = int(time.time())
    token = gateway.creds.sign({"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600})
    marker = "noclaims-" + str(time.monotonic_ns())
    client = anthropic.Anthropic(
        base_url=observe("acme").base_url,
        api_key=token,
        max_retries=0,
        timeout=30,
        default_headers={"x-safeguards-tenant": "shadowco"},
    )
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.create(
            model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": f"{JAILBREAK} {marker}"}]
        )
    # Screened as any request: the enforcer refuses a request without a tenant (400).
    assert exc.value.status_code in (400, 401, 403)
    assert not [r for r in gateway.upstream_requests() if marker in r["body"]]  # never served unscreened
