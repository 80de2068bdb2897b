"""The request path of DESIGN.md, protocol-free: canonical requests in, a decision
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
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.clients import Budget
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.kafka import Publisher
from services.common.metrics import BoundedLabels
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    Outcome,
    Reason,
    Verdict,
    decide,
)
from services.enforcer.detectors import Tier0Result, run_tier0
from services.enforcer.policy import Action, FailMode, Policy, PolicySet, RateLimitRule
from services.enforcer.retro import RetroJob, RetroScreener
from services.enforcer.signals import SignalInput, build_signal, signal_record
from services.enforcer.streaming import CompletionSession
from services.enforcer.upstream import ACCOUNT_THROTTLE_RULE, ClassifierCaller, RateLimitCaller

log = logging.getLogger("safeguards.enforcer")
#: One line per decision: a high-rate logger, capped by --log-decisions-per-s.
decision_log = logging.getLogger("safeguards.enforcer.decisions")


def _account_throttle_reason(outcome: Outcome) -> Outcome:
    """An account throttled by an enforcement action says so in its reason code."""
    code = f"ratelimit.{ACCOUNT_THROTTLE_RULE}"
    if not any(r.code == code for r in outcome.reasons):
        return outcome
    reasons = tuple(Reason(ACCOUNT_THROTTLE_RULE, r.detail) if r.code == code else r for r in outcome.reasons)
    return dataclasses.replace(outcome, reasons=reasons)


CHARS_PER_TOKEN = 4  # token estimate when the gateway sends none
#: Longest identity field (tenant, account, project, model, region, request id): they become
#: rate-limit descriptors, metric labels and Kafka keys, which all have limits of their own.
MAX_IDENTITY_CHARS = 256


def check_identity(ident: Identity) -> None:
    """Refuse identity fields that no gateway sends: over-long, or with control characters
    (a NUL in a field poisons every store downstream)."""
    for name in ("tenant", "account", "project", "model", "region", "request_id"):
        value = getattr(ident, name)
        if len(value) > MAX_IDENTITY_CHARS:
            raise InvalidArgument(f"{name} is {len(value)} characters (max {MAX_IDENTITY_CHARS})")
        if not value.isprintable():
            raise InvalidArgument(f"{name} contains control characters")


@dataclass(frozen=True)
class Identity:
    tenant: str
    account: str = ""
    project: str = ""
    model: str = ""
    region: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class PromptRequest:
    identity: Identity
    messages: tuple[tuple[str, str], ...]  # (role, content)
    estimated_tokens: int = 0
    surface: int = 1  # signals_pb2.Surface


@dataclass(frozen=True)
class ScreenResult:
    decision_id: str
    outcome: Outcome
    policy_version: str
    redacted_messages: tuple[tuple[str, str], ...]
    latency_s: float


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


@dataclass(frozen=True)
class Limits:
    max_prompt_bytes: int
    max_messages: int
    classifier_max_chars: int
    snippet_chars: int
    #: Texts longer than this run the tier-0 detectors on a worker thread, so one large
    #: body never holds the event loop (and every other tenant's decision) for long.
    tier0_inline_chars: int = 8192


class ScreenStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "enforcer_decisions",
            "Decisions by action and surface.",
            ["tenant", "action", "surface"],
            registry=registry,
        )
        self.latency = Histogram(
            "enforcer_decision_seconds",
            "Time to decide, by surface.",
            ["surface"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        self.dependency_failures = Counter(
            "enforcer_dependency_failures",
            "Dependency calls that failed or timed out.",
            ["dependency", "reason"],
            registry=registry,
        )
        self.degraded = Counter(
            "enforcer_degraded_decisions",
            "Decisions made by a fail-open policy without a dependency.",
            ["dependency"],
            registry=registry,
        )
        self.verdicts = Counter(
            "enforcer_verdicts",
            "Decisions by how much classifier verdict they rest on (full, partial, none) and why not full.",
            ["surface", "verdict", "reason"],
            registry=registry,
        )
        self.tenant_label = BoundedLabels(200)


class Screener:
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
        retro: RetroScreener | None = None,
    ) -> None:
        self.region = region
        self.policies = policies
        self.key = key
        self.classifier = classifier
        self.ratelimit = ratelimit
        self.publisher = publisher
        self.stats = stats
        self.limits = limits
        self.enforcement = enforcement or NoEnforcement()
        self.throttle_domain = throttle_domain  # RLS domain for throttled accounts of tenants without limits
        self.retro = retro
        # One thread: large texts queue behind each other instead of taking every core.
        self._tier0_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier0")

    async def tier0(self, text: str, policy: Policy, *, blocklist: bool = True) -> Tier0Result:
        """Tier-0 detectors; on a worker thread when the text is large (see Limits)."""
        args = (text, policy.blocklist if blocklist else None, sorted(policy.screened_pii_kinds))
        if len(text) <= self.limits.tier0_inline_chars:
            return run_tier0(*args)
        return await asyncio.get_running_loop().run_in_executor(self._tier0_pool, run_tier0, *args)

    def open_completion(
        self,
        identity: Identity,
        *,
        surface: int,
        prompt_decision_id: str = "",
        max_bytes: int = 0,
        caller_remaining=None,
    ) -> CompletionSession:
        """A session screening one streamed completion (services/enforcer/streaming.py):
        the tenant's policy as of now, the account pseudonymised once."""
        if not identity.tenant:
            raise InvalidArgument("tenant is required")
        check_identity(identity)
        if identity.region and identity.region != self.region:
            raise FailedPrecondition(
                f"request is for region {identity.region!r}; this enforcer serves {self.region!r} only"
            )
        return CompletionSession(
            self,
            identity,
            self.policies.current.for_tenant(identity.tenant),
            account_hmac=self.key.account(identity.tenant, identity.account),
            surface=surface,
            prompt_decision_id=prompt_decision_id,
            max_bytes=max_bytes,
            caller_remaining=caller_remaining,
        )

    def _validate(self, req: PromptRequest) -> str:
        ident = req.identity
        if not ident.tenant:
            raise InvalidArgument("tenant is required")
        check_identity(ident)
        if ident.region and ident.region != self.region:
            raise FailedPrecondition(
                f"request is for region {ident.region!r}; this enforcer serves {self.region!r} only"
            )
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

        verdict = self.enforcement.verdict(ident.tenant, account_hmac, ident.model)
        if verdict is not None and verdict.action is Action.BLOCK:
            # Suspended account or kill switch: no classifier or rate-limit cost.
            t1 = time.perf_counter()
            tier0 = run_tier0("", None, [])
            classify_text = ""
            outcome = decide(policy, tier0, ClassifierOutcome(), None, enforcement=verdict)
            models: dict[str, int] = {}
        else:
            t1 = time.perf_counter()
            tier0 = await self.tier0(text, policy)
            latencies["tier0"] = time.perf_counter() - t1
            budget = Budget.start(policy.deadline_s, caller_remaining_s)
            classify_text = tier0.normalized.text if tier0.normalized else text
            tokens = req.estimated_tokens or max(1, len(text) // CHARS_PER_TOKEN)
            context = {"tenant": ident.tenant, "account": account_hmac, "model": ident.model, "project": ident.project}
            cl, rl = await asyncio.gather(
                self._timed(
                    latencies,
                    "classifier",
                    self.classifier.classify(classify_text, policy.classifier_models, budget, tenant=ident.tenant),
                ),
                self._timed(latencies, "ratelimit", self._ratelimit(policy, context, tokens, budget)),
            )
            for dep, res in (("classifier", cl), ("ratelimit", rl)):
                if res is not None and res.failed:
                    self.stats.dependency_failures.labels(dep, res.failed).inc()
            outcome = decide(
                policy,
                tier0,
                cl,
                rl,
                forced_categories=self.enforcement.forced_categories(ident.tenant),
                enforcement=verdict,
            )
            outcome = _account_throttle_reason(outcome)
            models = dict(cl.model_versions)
        for dep in outcome.failed_dependencies:
            if outcome.degraded:
                self.stats.degraded.labels(dep).inc()

        redacted: tuple[tuple[str, str], ...] = ()
        if outcome.redact:
            redacted = tuple(
                [
                    (role, (await self.tier0(content, policy, blocklist=False)).redact(content))
                    for role, content in req.messages
                ]
            )
        latency = time.perf_counter() - t0
        latencies["total"] = latency
        surface = str(req.surface)
        self.stats.decisions.labels(self.stats.tenant_label(ident.tenant), outcome.action.name, surface).inc()
        self.stats.verdicts.labels(surface, *outcome.verdict_labels).inc()
        self.stats.latency.labels(surface).observe(latency)
        signal = build_signal(
            SignalInput(
                decision_id=decision_id,
                time_s=time.time(),
                region=self.region,
                tenant=ident.tenant,
                account_hmac=account_hmac,
                project=ident.project,
                model=ident.model,
                request_id=ident.request_id,
                surface=req.surface,
                text=text,
                messages=len(req.messages),
                findings=tier0.findings,
                outcome=outcome,
                policy=policy,
                latencies=latencies,
                model_versions=models,
            ),
            self.key,
            self.limits.snippet_chars,
        )
        self.publisher.publish(signal_record(signal))
        self.rescreen_if_partial(
            decision_id, ident, account_hmac, policy, outcome, classify_text, text, len(req.messages), tier0
        )
        decision_log.info(
            "decision",
            extra={
                "decision_id": decision_id,
                "tenant": ident.tenant,
                "action": outcome.action.name,
                "reasons": [r.code for r in outcome.reasons],
                "degraded": outcome.degraded,
                "verdict": outcome.verdict.name,
                "latency_ms": round(latency * 1000, 3),
                "policy_version": policy.version,
            },
        )
        return ScreenResult(decision_id, outcome, policy.version, redacted, latency)

    def rescreen_if_partial(
        self,
        decision_id: str,
        ident: Identity,
        account_hmac: str,
        policy: Policy,
        outcome: Outcome,
        text: str,
        raw_text: str,
        messages: int,
        tier0: Tier0Result,
    ) -> None:
        """A decision taken on less than a full verdict is screened again in the
        background (retro.py); a BLOCK cannot become stricter, so it is not worth the
        encoder's time. `text` is what the classifier screens, `raw_text` what was sent."""
        if outcome.verdict is Verdict.FULL or outcome.action is Action.BLOCK or self.retro is None or not text:
            return
        self.retro.submit(
            RetroJob(
                decision_id=decision_id,
                tenant=ident.tenant,
                account_hmac=account_hmac,
                project=ident.project,
                model=ident.model,
                request_id=ident.request_id,
                text=text,
                raw_text=raw_text,
                messages=messages,
                tier0=tier0,
                policy=policy,
                original=outcome,
                forced_categories=self.enforcement.forced_categories(ident.tenant),
            )
        )

    async def _ratelimit(self, policy: Policy, context: dict[str, str], tokens: int, budget: Budget):
        rpm = self.enforcement.account_limit(context["tenant"], context["account"])
        if policy.ratelimit is not None:
            return await self.ratelimit.check(policy.ratelimit, context, tokens, budget, account_rpm=rpm)
        if rpm is None or not self.throttle_domain:
            return None
        # A throttled account of a tenant without limits: the throttle alone, failing open.
        rule = RateLimitRule(self.throttle_domain, FailMode.OPEN, ())
        result = await self.ratelimit.check(rule, context, tokens, budget, account_rpm=rpm)
        if result.failed:
            self.stats.dependency_failures.labels("ratelimit", result.failed).inc()
            return None
        return result

    @staticmethod
    async def _timed(latencies: dict[str, float], name: str, coro):
        t = time.perf_counter()
        try:
            return await coro
        finally:
            latencies[name] = time.perf_counter() - t
