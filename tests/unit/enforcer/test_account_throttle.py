"""A throttled account of a tenant whose policy has no ratelimit section is checked
against the rate limiter's throttle domain alone, failing open. When the rate limiter
does not answer, the decision says so (degraded, `dependency.ratelimit`, counted):
it is never a silent ALLOW. The rate limiter here is a real gRPC channel to a port
nothing listens on."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2 as pb

from services.actions.keys import action_key
from services.actions.projection import ActionMetrics, ActionTable
from services.common.clients import CircuitBreaker
from services.enforcer.policy import Action
from services.enforcer.requests import PromptRequest
from services.enforcer.state import ActionLookups
from services.enforcer.upstream import RateLimitCaller
from tests.support import free_port
from tests.unit.enforcer_stream.helpers import IDENT, make_screener


async def test_a_throttle_without_a_rate_limiter_answer_is_a_degraded_decision(tmp_path) -> None:
    screener, _, pub = make_screener(tmp_path)  # its policy has no ratelimit section
    table = ActionTable("unit", ActionMetrics(CollectorRegistry()))
    account_hmac = screener.key.account(IDENT.tenant, IDENT.account)
    throttle = pb.EnforcementAction(
        action_id="t1",
        kind=pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT,
        target=pb.EnforcementTarget(tenant=IDENT.tenant, account_hmac=account_hmac),
        reason="abuse",
        requests_per_minute=3,
        region="unit",
    )
    assert table.apply(action_key(throttle.kind, throttle.target).encode(), throttle.SerializeToString())
    screener.enforcement = ActionLookups(table)
    screener.throttle_domain = "throttled"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        screener.ratelimit = RateLimitCaller(channel, CircuitBreaker("ratelimit"))
        result = await screener.screen_prompt(PromptRequest(identity=IDENT, messages=(("user", "hello"),)))
    outcome = result.outcome
    assert outcome.action is Action.ALLOW  # the throttle fails open, as documented
    assert outcome.degraded and outcome.failed_dependencies == ("ratelimit",)
    assert [r.code for r in outcome.reasons] == ["dependency.ratelimit"]
    (signal,) = pub.signals()
    assert signal.degraded and list(signal.failed_dependencies) == ["ratelimit"]
    failures = screener.stats.dependency_failures.labels("ratelimit", "unavailable")._value.get()
    assert failures == 1
