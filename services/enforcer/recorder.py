"""Recording a decision, whatever path took it: the metrics, the one SafeguardSignal
(published without waiting), the background re-screen of a decision taken on less than a
full verdict (retro.py), and one log line (no content: ids, action, reason codes). The
prompt path also asks for its sample of shadow-model jobs (`shadow_models`)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safeguards.v1 import signals_pb2

from services.common import tracing
from services.common.kafka import Publisher
from services.common.privacy import RegionalKey
from services.enforcer.decision import EnforcementVerdict, Outcome, RateLimitOutcome, Verdict
from services.enforcer.detectors import Finding, Tier0Result
from services.enforcer.policy import Action, Policy
from services.enforcer.requests import Identity
from services.enforcer.retro import BackgroundScreener, RetroJob, ShadowModelJob
from services.enforcer.shadow import ShadowOutcome
from services.enforcer.signals import SignalInput, build_signal, signal_record
from services.enforcer.stats import ScreenStats

#: One line per decision: a high-rate logger, capped by --log-decisions-per-s.
decision_log = logging.getLogger("safeguards.enforcer.decisions")


@dataclass(frozen=True)
class Decided:
    """One decision as it is recorded."""

    decision_id: str
    identity: Identity
    account_hmac: str
    surface: int
    policy: Policy
    outcome: Outcome
    text: str  # as sent: the snippet and the hash, as the data policy allows
    messages: int
    findings: tuple[Finding, ...]
    latencies: dict[str, float]
    models: dict[str, int]
    #: What the classifier screened (`textnorm.classifier_texts`), for a re-screen; () for none.
    classify_texts: tuple[str, ...] = ()
    #: `classify_texts` are text as sent, which the re-screen normalises first (a completion).
    classify_raw: bool = False
    tier0: Tier0Result | None = None
    prompt_decision_id: str = ""
    #: The tenant's candidate policy's would-be decision (shadow.py), if it has one.
    shadow: ShadowOutcome | None = None
    #: Decided for an observe-only processor: recorded, not enforced.
    observe_only: bool = False
    #: Path-specific log fields (counts and flags only).
    log_fields: dict[str, Any] = field(default_factory=dict)


class DecisionRecorder:
    def __init__(
        self,
        *,
        region: str,
        key: RegionalKey,
        publisher: Publisher,
        stats: ScreenStats,
        snippet_chars: int,
        retro: BackgroundScreener | None = None,
    ) -> None:
        self.region = region
        self.key = key
        self.publisher = publisher
        self.stats = stats
        self.snippet_chars = snippet_chars
        self.retro = retro

    def record(self, d: Decided, *, forced_categories: frozenset[str] = frozenset()) -> None:
        ident, outcome, surface = d.identity, d.outcome, str(d.surface)
        tracing.annotate(tracing.DECISION_ID, d.decision_id)
        if outcome.degraded:
            for dep in outcome.failed_dependencies:
                self.stats.degraded.labels(dep).inc()
        self.stats.decisions.labels(self.stats.tenant_label(ident.tenant), outcome.action.name, surface).inc()
        self.stats.verdicts.labels(surface, *outcome.verdict_labels).inc()
        self.stats.latency.labels(surface).observe(d.latencies.get("total", 0.0))
        if d.shadow is not None:
            self.stats.shadow.labels(surface, d.shadow.compared_to(outcome)).inc()
        signal = build_signal(
            SignalInput(
                decision_id=d.decision_id,
                time_s=time.time(),
                region=self.region,
                tenant=ident.tenant,
                account_hmac=d.account_hmac,
                project=ident.project,
                model=ident.model,
                request_id=ident.request_id,
                surface=d.surface,
                text=d.text,
                messages=d.messages,
                findings=d.findings,
                outcome=outcome,
                policy=d.policy,
                latencies=d.latencies,
                model_versions=d.models,
                prompt_decision_id=d.prompt_decision_id,
                trace_id=tracing.current_trace_id(),
                shadow=d.shadow,
                observe_only=d.observe_only,
            ),
            self.key,
            self.snippet_chars,
        )
        self.publisher.publish(signal_record(signal))
        self._rescreen_if_partial(d, forced_categories)
        decision_log.info(
            "decision",
            extra={
                "decision_id": d.decision_id,
                "tenant": ident.tenant,
                "surface": d.surface,
                "action": outcome.action.name,
                "reasons": [r.code for r in outcome.reasons],
                "degraded": outcome.degraded,
                "verdict": outcome.verdict.name,
                "latency_ms": round(d.latencies.get("total", 0.0) * 1000, 3),
                "policy_version": d.policy.version,
                **({"observe_only": True} if d.observe_only else {}),
                **({"prompt_decision_id": d.prompt_decision_id} if d.prompt_decision_id else {}),
                **d.log_fields,
            },
        )

    def _rescreen_if_partial(self, d: Decided, forced_categories: frozenset[str]) -> None:
        """A decision taken on less than a full verdict is screened again in the
        background; a BLOCK cannot become stricter, so it is not worth the encoder's time."""
        outcome = d.outcome
        if outcome.verdict is Verdict.FULL or outcome.action is Action.BLOCK or self.retro is None:
            return
        if not d.classify_texts:
            return
        ident = d.identity
        self.retro.submit(
            RetroJob(
                decision_id=d.decision_id,
                tenant=ident.tenant,
                account_hmac=d.account_hmac,
                project=ident.project,
                model=ident.model,
                request_id=ident.request_id,
                texts=d.classify_texts,
                raw=d.classify_raw,
                raw_text=d.text,
                messages=d.messages,
                tier0=d.tier0 if d.tier0 is not None else _NO_TIER0,
                policy=d.policy,
                original=outcome,
                forced_categories=forced_categories,
                models=d.policy.completion.models if d.surface in COMPLETION_SURFACES else d.policy.classifier_models,
            )
        )

    def shadow_models(
        self,
        d: Decided,
        *,
        forced_categories: frozenset[str],
        ratelimit: RateLimitOutcome | None,
        enforcement: EnforcementVerdict | None,
        sample: Callable[[], float] = random.random,
    ) -> int:
        """Queue a background classification of a prompt decision's text by each
        shadow model its policy names, each on its sample of decisions; returns the
        jobs queued. Nothing is queued for a decision no classifier saw."""
        if self.retro is None or not d.policy.shadow_models or not d.classify_texts:
            return 0
        ident, queued = d.identity, 0
        for rule in d.policy.shadow_models:
            if rule.sample_rate <= 0.0 or sample() >= rule.sample_rate:
                continue
            queued += self.retro.submit(
                ShadowModelJob(
                    decision_id=d.decision_id,
                    tenant=ident.tenant,
                    account_hmac=d.account_hmac,
                    project=ident.project,
                    model=ident.model,
                    request_id=ident.request_id,
                    texts=d.classify_texts,
                    tier0=d.tier0 if d.tier0 is not None else _NO_TIER0,
                    policy=d.policy,
                    original=d.outcome,
                    forced_categories=forced_categories,
                    shadow_model=rule.name,
                    ratelimit=ratelimit,
                    enforcement=enforcement,
                )
            )
        return queued


_NO_TIER0 = Tier0Result((), (), frozenset())
#: Surfaces whose text is model output: screened with the policy's completion models.
COMPLETION_SURFACES = frozenset({signals_pb2.SURFACE_SCREEN_COMPLETION, signals_pb2.SURFACE_EXT_PROC_RESPONSE})
