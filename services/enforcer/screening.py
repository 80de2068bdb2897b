"""The request path (docs/ARCHITECTURE.md, "A request's walk"), protocol-free: canonical requests in, a decision
out, one signal emitted. The native API, ext_authz and ext_proc all convert their
messages into a `PromptRequest` at the edge and call `Screener.screen_prompt`.

1. identity → the tenant's policy (unknown tenants get the default policy), the
   account pseudonymised with the regional key;
2. enforcement state: a suspended account or a kill switch answers at once, with no
   classifier or rate-limit cost;
3. tier-0 detectors in-process, then the classifier and the rate limiter in
   parallel under one deadline budget (the caller's deadline or the policy's);
4. the policy's decision; 5. the signal, published without waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from services.common.callers import ANY_CALLER, CallerTenants
from services.common.clients import Budget
from services.common.errors import InvalidArgument
from services.common.kafka import Publisher
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.common.tls import CallerIdentity
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    Outcome,
    RateLimitOutcome,
    Reason,
    decide,
)
from services.enforcer.detectors import Redactor, Tier0Result, run_tier0
from services.enforcer.detectors.textnorm import classifier_texts
from services.enforcer.policy import Action, FailMode, Policy, PolicySet, RateLimitRule
from services.enforcer.recorder import Decided, DecisionRecorder
from services.enforcer.requests import Identity, Limits, PromptRequest, ScreenResult, check_identity
from services.enforcer.retro import BackgroundScreener
from services.enforcer.scorer import Scorer
from services.enforcer.shadow import ShadowOutcome, ShadowPolicies, decide_shadow, same_detectors
from services.enforcer.stats import ScreenStats
from services.enforcer.streaming import CompletionSession
from services.enforcer.upstream import ACCOUNT_THROTTLE_RULE, ClassifierCaller, RateLimitCaller


def _account_throttle_reason(outcome: Outcome) -> Outcome:
    """An account throttled by an enforcement action says so in its reason code."""
    code = f"ratelimit.{ACCOUNT_THROTTLE_RULE}"
    if not any(r.code == code for r in outcome.reasons):
        return outcome
    reasons = tuple(Reason(ACCOUNT_THROTTLE_RULE, r.detail) if r.code == code else r for r in outcome.reasons)
    return dataclasses.replace(outcome, reasons=reasons)


CHARS_PER_TOKEN = 4  # token estimate when the gateway sends none


class EnforcementView(Protocol):
    """What the decision path asks the enforcement state (O(1), no awaits)."""

    def verdict(self, tenant: str, account_hmac: str, model: str) -> EnforcementVerdict | None: ...

    def forced_categories(self, tenant: str) -> frozenset[str]: ...

    def account_limit(self, tenant: str, account_hmac: str) -> int | None:
        """Requests per minute an account is throttled to by an action, if any."""
        ...


class NoEnforcement:
    def verdict(self, tenant: str, account_hmac: str, model: str) -> EnforcementVerdict | None:
        return None

    def forced_categories(self, tenant: str) -> frozenset[str]:
        return frozenset()

    def account_limit(self, tenant: str, account_hmac: str) -> int | None:
        return None


class Screener:
    """The prompt path: validate, look up policy and enforcement state, score (tier 0,
    then the classifier and the rate limiter in parallel under one budget), decide,
    record. Completions are screened by the sessions `open_completion` hands out."""

    def __init__(
        self,
        *,
        region: str,
        policies: ReloadingConfig[PolicySet],
        key: RegionalKey,
        classifier: ClassifierCaller,
        ratelimit: RateLimitCaller,
        publisher: Publisher,
        stats: ScreenStats,
        limits: Limits,
        enforcement: EnforcementView | None = None,
        throttle_domain: str = "",
        retro: BackgroundScreener | None = None,
        callers: Callable[[], CallerTenants] = lambda: ANY_CALLER,
        shadow: Callable[[], ShadowPolicies | None] = lambda: None,
    ) -> None:
        self.region = region
        self.callers = callers  # the current caller -> tenants binding
        self.shadow = shadow  # the current candidate policies (shadow.py), if any
        self.policies = policies
        self.key = key
        self.ratelimit = ratelimit
        self.stats = stats
        self.limits = limits
        self.enforcement: EnforcementView = enforcement or NoEnforcement()
        self.throttle_domain = throttle_domain  # RLS domain for throttled accounts of tenants without limits
        self.scorer = Scorer(classifier, limits, stats)
        self.recorder = DecisionRecorder(
            region=region, key=key, publisher=publisher, stats=stats, snippet_chars=limits.snippet_chars, retro=retro
        )

    def close(self) -> None:
        self.scorer.close()

    def open_completion(
        self,
        identity: Identity,
        *,
        surface: int,
        prompt_decision_id: str = "",
        max_bytes: int = 0,
        caller_remaining: Callable[[], float | None] | None = None,
        caller: CallerIdentity | None = None,
        observe_only: bool = False,
    ) -> CompletionSession:
        """A session screening one streamed completion (services/enforcer/streaming.py):
        the tenant's policy as of now, the account pseudonymised once."""
        self.admit(identity, caller or CallerIdentity())
        return CompletionSession(
            self.scorer,
            self.recorder,
            self.enforcement,
            identity,
            self.policies.current.for_tenant(identity.tenant),
            account_hmac=self.key.account(identity.tenant, identity.account),
            surface=surface,
            prompt_decision_id=prompt_decision_id,
            max_bytes=max_bytes,
            caller_remaining=caller_remaining,
            observe_only=observe_only,
        )

    def admit(self, identity: Identity, caller: CallerIdentity) -> None:
        """Refuse an identity no gateway sends, for another region, or naming a tenant
        its caller may not speak for (INVALID_ARGUMENT, FAILED_PRECONDITION,
        PERMISSION_DENIED)."""
        check_identity(identity, self.region)
        self.callers().check(caller, identity.tenant)

    async def redactor(self, tenant: str, messages: tuple[tuple[str, str], ...]) -> Redactor:
        """What to mask in a prompt that ext_authz decided REDACT and ext_proc rewrites
        (ext_authz cannot change a body): the tenant's PII kinds, found once in the
        joined text, masked in each field."""
        text = "\n".join(content for _role, content in messages)
        policy = self.policies.current.for_tenant(tenant)
        return (await self.scorer.tier0(text, policy, blocklist=False)).redactor(text)

    def _validate(self, req: PromptRequest) -> str:
        self.admit(req.identity, req.caller)
        if not req.messages:
            raise InvalidArgument("messages must not be empty")
        if len(req.messages) > self.limits.max_messages:
            raise InvalidArgument(f"too many messages: {len(req.messages)} (max {self.limits.max_messages})")
        text = "\n".join(content for _role, content in req.messages)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_prompt_bytes:
            raise InvalidArgument(f"prompt is {size} bytes (max {self.limits.max_prompt_bytes})")
        return text

    async def screen_prompt(self, req: PromptRequest, caller_remaining_s: float | None = None) -> ScreenResult:
        t0 = time.perf_counter()
        text = self._validate(req)
        ident = req.identity
        policy: Policy = self.policies.current.for_tenant(ident.tenant)
        account_hmac = self.key.account(ident.tenant, ident.account)
        decision_id = uuid.uuid4().hex
        latencies: dict[str, float] = {}
        forced = self.enforcement.forced_categories(ident.tenant)

        verdict = self.enforcement.verdict(ident.tenant, account_hmac, ident.model)
        if verdict is not None and verdict.action is Action.BLOCK:
            # Suspended account or kill switch: no classifier or rate-limit cost.
            tier0 = run_tier0("", None, [])
            classify_texts: tuple[str, ...] = ()
            outcome = decide(policy, tier0, ClassifierOutcome(), None, enforcement=verdict)
            models: dict[str, int] = {}
            shadow = None  # an enforcement block stands under any policy
            rl = None
        else:
            t1 = time.perf_counter()
            tier0 = await self.scorer.tier0(text, policy)
            latencies["tier0"] = time.perf_counter() - t1
            budget = Budget.start(policy.deadline_s, caller_remaining_s)
            classify_texts = tuple(classifier_texts(tier0.normalized)) if tier0.normalized else (text,)
            tokens = req.estimated_tokens or max(1, len(text) // CHARS_PER_TOKEN)
            context = {"tenant": ident.tenant, "account": account_hmac, "model": ident.model, "project": ident.project}
            cl, rl = await asyncio.gather(
                self._timed(
                    latencies, "classifier", self.scorer.classify(classify_texts, policy, budget, tenant=ident.tenant)
                ),
                self._timed(latencies, "ratelimit", self._ratelimit(policy, context, tokens, budget)),
            )
            if rl is not None and rl.failed:
                self.stats.dependency_failures.labels("ratelimit", rl.failed).inc()
            outcome = decide(policy, tier0, cl, rl, forced_categories=forced, enforcement=verdict)
            outcome = _account_throttle_reason(outcome)
            models = dict(cl.model_versions)
            shadow = await self._shadow(policy, ident.tenant, text, tier0, cl, rl, forced, verdict)

        redacted: tuple[tuple[str, str], ...] = ()
        redactor = None
        if outcome.redact:
            redactor = tier0.redactor(text)
            redacted = tuple((role, redactor(content)) for role, content in req.messages)
        latency = time.perf_counter() - t0
        latencies["total"] = latency
        decided = Decided(
            decision_id=decision_id,
            identity=ident,
            account_hmac=account_hmac,
            surface=req.surface,
            policy=policy,
            outcome=outcome,
            text=text,
            messages=len(req.messages),
            findings=tier0.findings,
            latencies=latencies,
            models=models,
            classify_texts=classify_texts,
            tier0=tier0,
            shadow=shadow,
            observe_only=req.observe_only,
        )
        self.recorder.record(decided, forced_categories=forced)
        self.recorder.shadow_models(decided, forced_categories=forced, ratelimit=rl, enforcement=verdict)
        return ScreenResult(decision_id, outcome, policy.version, redacted, latency, redactor)

    async def _shadow(
        self,
        live: Policy,
        tenant: str,
        text: str,
        tier0: Tier0Result,
        cl: ClassifierOutcome,
        rl: RateLimitOutcome | None,
        forced: frozenset[str],
        verdict: EnforcementVerdict | None,
    ) -> ShadowOutcome | None:
        candidates = self.shadow()
        candidate = candidates.for_tenant(tenant, self.policies.current) if candidates else None
        if candidate is None:
            return None
        if not same_detectors(candidate, live):
            tier0 = await self.scorer.tier0(text, candidate)
        shadow = decide_shadow(candidate, live, tier0, cl, rl, forced_categories=forced, enforcement=verdict)
        return dataclasses.replace(shadow, outcome=_account_throttle_reason(shadow.outcome))

    async def _ratelimit(self, policy: Policy, context: dict[str, str], tokens: int, budget: Budget):
        rpm = self.enforcement.account_limit(context["tenant"], context["account"])
        if policy.ratelimit is not None:
            return await self.ratelimit.check(policy.ratelimit, context, tokens, budget, account_rpm=rpm)
        if rpm is None or not self.throttle_domain:
            return None
        # A throttled account of a tenant without limits: the throttle alone, failing
        # open; a failure is counted by the caller and marks the decision degraded.
        rule = RateLimitRule(self.throttle_domain, FailMode.OPEN, ())
        return await self.ratelimit.check(rule, context, tokens, budget, account_rpm=rpm)

    @staticmethod
    async def _timed(latencies: dict[str, float], name: str, coro):
        t = time.perf_counter()
        try:
            return await coro
        finally:
            latencies[name] = time.perf_counter() - t
