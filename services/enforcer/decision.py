"""The decision: tenant policy applied to what the detectors, the classifier, the
rate limiter and the enforcement state said. Pure and protocol-free, so every rule
is unit-tested without a network; the screening pipeline gathers the inputs.

Each rule that fires adds a Reason and an Action; the most severe action wins
(ALLOW < FLAG < REDACT < THROTTLE < BLOCK). A dependency that failed or timed out
contributes its fail mode from the policy: `closed` refuses, `open` decides
without it and marks the decision degraded.

The classifier's verdict is FULL, PARTIAL (an earlier cascade stage answered for a
text the later stage should have seen, or an oversize text was screened in part) or
NONE. The safeguard never switches itself off silently (docs/ARCHITECTURE.md "Never silently
off"): a PARTIAL verdict is decided on the scores it has, plus the policy's
`partial.uncertain_action` when its unsafe score sits in the uncertain band; a NONE
verdict applies the fail mode only when the classifier is unreachable (connection
refused, UNAVAILABLE, its breaker open), and otherwise the policy's
`partial.no_verdict_action`. Each such decision carries a `verdict.*` reason.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.enforcer.detectors import Tier0Result
from services.enforcer.policy import Action, FailMode, Policy


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str = ""


@dataclass(frozen=True)
class CategoryScore:
    category: str
    score: float
    threshold: float
    action: Action


class Verdict(enum.IntEnum):
    """How much classifier verdict a decision rests on (safeguards.v1.VerdictCompleteness)."""

    FULL = 1
    PARTIAL = 2
    NONE = 3


@dataclass(frozen=True)
class ClassifierOutcome:
    """Scores per label (max over the policy's models), each model's own threshold,
    and the model versions that produced them; `failed` when the call did not answer.

    `verdict` is PARTIAL when some stage did not answer (`verdict_reason` says why);
    `unreachable` marks a failure that says the classifier is down (the only case a
    fail-open policy decides without it)."""

    scores: Mapping[str, float] = field(default_factory=dict)
    model_thresholds: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, int] = field(default_factory=dict)
    failed: str = ""  # why, when the classifier did not answer
    unreachable: bool = False
    partial: str = ""  # why, when the verdict is partial
    answered_by: str = ""
    #: A partial cascade answer's uncertain band low edge (0: none reported).
    uncertain_from: float = 0.0

    @property
    def verdict(self) -> Verdict:
        if self.failed:
            return Verdict.NONE
        return Verdict.PARTIAL if self.partial else Verdict.FULL

    @property
    def verdict_reason(self) -> str:
        return self.failed or self.partial


@dataclass(frozen=True)
class RateLimitOutcome:
    over_limit: bool = False
    rule: str = ""
    retry_after_s: float = 0.0
    failed: str = ""


@dataclass(frozen=True)
class EnforcementVerdict:
    """What the enforcement state says about this request before any scoring."""

    action: Action
    code: str
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    action: Action
    reasons: tuple[Reason, ...]
    scores: tuple[CategoryScore, ...]
    redact: bool
    degraded: bool
    failed_dependencies: tuple[str, ...]
    retry_after_s: float = 0.0
    verdict: Verdict = Verdict.FULL
    verdict_reason: str = ""
    answered_by: str = ""

    @property
    def verdict_labels(self) -> tuple[str, str]:
        """(verdict, first reason) as bounded metric label values."""
        return self.verdict.name.lower(), self.verdict_reason.split(",", 1)[0][:32]


def compare_actions(live: Action, other: Action) -> str:
    """ "same", "stricter" or "looser": another decision's action (a shadow policy's, a
    shadow model's) against the live one."""
    if other == live:
        return "same"
    return "stricter" if other > live else "looser"


def decide(
    policy: Policy,
    tier0: Tier0Result,
    classifier: ClassifierOutcome,
    ratelimit: RateLimitOutcome | None,
    *,
    forced_categories: frozenset[str] = frozenset(),
    enforcement: EnforcementVerdict | None = None,
) -> Outcome:
    actions: list[Action] = [Action.ALLOW]
    reasons: list[Reason] = []
    failed: list[str] = []
    degraded = False
    retry_after = 0.0

    if enforcement is not None:
        actions.append(enforcement.action)
        reasons.append(Reason(enforcement.code, enforcement.detail))

    # Tier 0: PII and blocklists.
    for kind in sorted(tier0.pii_kinds & policy.pii_block_kinds):
        actions.append(Action.BLOCK)
        reasons.append(Reason(f"pii.{kind.lower()}", "secret or identifier that is never allowed"))
    redact_kinds = sorted((tier0.pii_kinds & policy.pii_kinds) - policy.pii_block_kinds)
    if redact_kinds:
        actions.append(policy.pii_action)
        reasons.extend(Reason(f"pii.{kind.lower()}") for kind in redact_kinds)
    if tier0.blocklist_hits:
        actions.append(policy.blocklist_action)
        reasons.append(Reason("blocklist", f"{len(tier0.blocklist_hits)} blocked term(s)"))

    # The classifier.
    scores: list[CategoryScore] = []
    verdict = Verdict.FULL
    if enforcement is not None and enforcement.action is Action.BLOCK:
        pass  # decided before any scoring: no classifier verdict is needed
    elif classifier.failed:
        verdict = Verdict.NONE
        failed.append("classifier")
        if policy.classifier_fail_mode is FailMode.CLOSED:
            actions.append(Action.BLOCK)
            reasons.append(Reason("dependency.classifier", f"fail closed: {classifier.failed}"))
        elif classifier.unreachable:
            degraded = True
            reasons.append(Reason("dependency.classifier", f"fail open: {classifier.failed}"))
        else:
            actions.append(policy.partial.no_verdict_action)
            reasons.append(Reason("verdict.none", f"no classifier verdict: {classifier.failed}"))
    else:
        if classifier.partial:
            verdict = Verdict.PARTIAL
            reasons.append(Reason("verdict.partial", f"{classifier.answered_by or 'classifier'}: {classifier.partial}"))
        fired = False
        categories = {**{c: None for c in forced_categories}, **policy.categories}
        for name in sorted(categories):
            score = classifier.scores.get(name)
            if score is None:
                continue
            rule = policy.categories.get(name)
            threshold = rule.threshold if rule and rule.threshold is not None else classifier.model_thresholds.get(name)
            if threshold is None:
                continue
            action = Action.BLOCK if name in forced_categories else rule.action  # type: ignore[union-attr]
            scores.append(CategoryScore(name, score, threshold, action))
            if score >= threshold:
                fired = True
                actions.append(action)
                reasons.append(
                    Reason(f"classifier.{name}", "forced block" if name in forced_categories else f"score {score:.2f}")
                )
        # `uncertain_above: band` (None): from where the answering cascade itself calls
        # a text uncertain; no band reported (an oversize sample of full answers): none.
        uncertain = policy.partial.uncertain_above
        if uncertain is None:
            uncertain = classifier.uncertain_from or None
        if classifier.partial and not fired and uncertain is not None:
            top = max(scores, key=lambda c: c.score, default=None)
            if top is not None and top.score >= uncertain:
                actions.append(policy.partial.uncertain_action)
                reasons.append(
                    Reason(
                        "classifier.uncertain",
                        f"{top.category} score {top.score:.2f} on a partial verdict (uncertain from {uncertain:.2f})",
                    )
                )

    # The rate limiter.
    if ratelimit is not None:
        if ratelimit.failed:
            failed.append("ratelimit")
            # No ratelimit section: the account throttle alone (screening's throttle
            # domain), which fails open.
            if policy.ratelimit is not None and policy.ratelimit.fail_mode is FailMode.CLOSED:
                actions.append(Action.THROTTLE)
                reasons.append(Reason("dependency.ratelimit", f"fail closed: {ratelimit.failed}"))
                retry_after = max(retry_after, 1.0)
            else:
                degraded = True
                reasons.append(Reason("dependency.ratelimit", f"fail open: {ratelimit.failed}"))
        elif ratelimit.over_limit:
            actions.append(Action.THROTTLE)
            reasons.append(Reason(f"ratelimit.{ratelimit.rule or 'limit'}"))
            retry_after = max(retry_after, ratelimit.retry_after_s)

    action = max(actions)
    return Outcome(
        action=action,
        reasons=tuple(reasons),
        scores=tuple(scores),
        redact=action is Action.REDACT,
        degraded=degraded,
        failed_dependencies=tuple(failed),
        retry_after_s=retry_after if action is Action.THROTTLE else 0.0,
        verdict=verdict,
        verdict_reason=classifier.verdict_reason if verdict is not Verdict.FULL else "",
        answered_by=classifier.answered_by,
    )
