"""Calls to the classifier and the rate limiter under one deadline budget, with
retries inside it (both calls are idempotent: the rate limiter counts a hit only
when its script runs, and a retry after a lost answer at worst counts one more)
and a circuit breaker per dependency. Failures come back as outcomes carrying
why, never as exceptions: the policy's fail mode turns them into a decision."""

from __future__ import annotations

import asyncio
import math

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

from services.common.clients import BreakerOpen, Budget, CircuitBreaker, call_in_budget
from services.enforcer.decision import ClassifierOutcome, RateLimitOutcome, combine_model_scores
from services.enforcer.policy import RateLimitRule

THROTTLE_KEY = "enforcement_throttle"  # descriptor entry of an account throttled by an action
ACCOUNT_THROTTLE_RULE = "enforcement.throttled"


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name.lower()
    if isinstance(exc, BreakerOpen):
        return "circuit open"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "deadline exceeded"
    return type(exc).__name__


class ClassifierCaller:
    def __init__(self, channel: grpc.aio.Channel, breaker: CircuitBreaker) -> None:
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        self.breaker = breaker

    async def classify(self, text: str, models: tuple[str, ...], budget: Budget) -> ClassifierOutcome:
        request = classifier_pb2.ClassifyRequest(texts=[text], models=list(models))

        async def call(timeout: float):
            return await self._stub.Classify(request, timeout=timeout)

        try:
            response = await self.breaker.call(lambda: call_in_budget(call, budget))
        except Exception as exc:  # every failure is an outcome; the policy decides
            return ClassifierOutcome(failed=_why(exc))
        per_model, thresholds, versions = [], {}, {}
        for m in response.results[0].models:
            per_model.append({s.label: s.score for s in m.scores})
            for s in m.scores:
                if s.threshold > 0:
                    thresholds[s.label] = min(s.threshold, thresholds.get(s.label, 1.0))
            versions[m.answered_by or m.model] = m.version
        return ClassifierOutcome(
            scores=combine_model_scores(per_model), model_thresholds=thresholds, model_versions=versions
        )


class RateLimitCaller:
    def __init__(self, channel: grpc.aio.Channel, breaker: CircuitBreaker) -> None:
        self._stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        self.breaker = breaker

    async def check(
        self,
        rule: RateLimitRule,
        context: dict[str, str],
        tokens: int,
        budget: Budget,
        account_rpm: int | None = None,
    ) -> RateLimitOutcome:
        """`account_rpm`: the account is throttled by an enforcement action; one more
        descriptor carries that limit as an Envoy override (the RLS keys it by the
        account's HMAC), and its over-limit comes back as rule ACCOUNT_THROTTLE_RULE."""
        descriptors = []
        for d in rule.descriptors:
            desc = ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=context.get(k, "")) for k in d.entries]
            )
            if d.hits_tokens:
                desc.hits_addend.value = max(1, tokens)
            descriptors.append(desc)
        if account_rpm:
            desc = ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=THROTTLE_KEY, value=context.get("account", ""))]
            )
            desc.limit.requests_per_unit = account_rpm
            desc.limit.unit = ratelimit_unit_pb2.MINUTE
            descriptors.append(desc)
        request = rls_pb2.RateLimitRequest(domain=rule.domain, descriptors=descriptors)

        async def call(timeout: float):
            return await self._stub.ShouldRateLimit(request, timeout=timeout)

        try:
            response = await self.breaker.call(lambda: call_in_budget(call, budget))
        except Exception as exc:
            return RateLimitOutcome(failed=_why(exc))
        if response.overall_code != rls_pb2.RateLimitResponse.OVER_LIMIT:
            return RateLimitOutcome()
        over = [s for s in response.statuses if s.code == rls_pb2.RateLimitResponse.OVER_LIMIT]
        rule_name = over[0].current_limit.name if over else ""
        last = response.statuses[-1] if len(response.statuses) == len(descriptors) else None
        if account_rpm and last is not None and last.code == rls_pb2.RateLimitResponse.OVER_LIMIT:
            over, rule_name = [last], ACCOUNT_THROTTLE_RULE
        retry = 0.0
        for h in response.response_headers_to_add:
            if h.key.lower() == "retry-after" and h.value.isdigit():
                retry = float(h.value)
        if not retry and over:
            retry = math.ceil(over[0].duration_until_reset.ToTimedelta().total_seconds())
        return RateLimitOutcome(over_limit=True, rule=rule_name, retry_after_s=retry)
