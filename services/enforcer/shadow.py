"""Candidate policies in shadow (issue 13's promotion path for policies).

A candidate policy version runs beside the live one on live traffic: every prompt
decision of a tenant with a candidate is also decided under the candidate, on the same
inputs, and the would-be action goes into the decision's signal (`SafeguardSignal.shadow`)
and a metric. It is never enforced. The monitor's promotion report compares the two over
recent decisions (agreement, would-be blocks and allows, per tenant) before an operator
promotes the candidate by moving its file into the live policy folder.

Cost: `decide` is pure, so the shadow decision reuses this request's classifier and
rate-limit answers and costs microseconds; the tier-0 detectors run again only when the
candidate changes them (its PII kinds or blocklist). What a candidate changes that the
live request did not ask for cannot be known without extra calls, and is said instead:
`incomplete` names it (`classifier_models`: the candidate names other models;
`ratelimit`: other limits).

Files: `--shadow-policy` is a file or folder of policy files in the live format; a
candidate applies to its tenant, and a `default` candidate to tenants on the live
default policy. No candidate, no shadow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from services.common.errors import ConfigError
from services.common.reloader import yaml_files
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    Outcome,
    RateLimitOutcome,
    compare_actions,
    decide,
)
from services.enforcer.detectors import Tier0Result
from services.enforcer.policy import DEFAULT_TENANT, Policy, PolicySet, parse_policy


@dataclass(frozen=True)
class ShadowOutcome:
    policy_version: str
    outcome: Outcome
    incomplete: str = ""  # what the candidate would need that this request did not fetch

    def compared_to(self, live: Outcome) -> str:
        """ "same", "stricter" or "looser": the candidate's action against the live one."""
        return compare_actions(live.action, self.outcome.action)


@dataclass(frozen=True)
class ShadowPolicies:
    candidates: Mapping[str, Policy]

    def for_tenant(self, tenant: str, live: PolicySet) -> Policy | None:
        own = self.candidates.get(tenant)
        if own is not None:
            return own
        if tenant not in live.policies:  # on the live default: the default candidate, if any
            return self.candidates.get(DEFAULT_TENANT)
        return None


def load(path: Path) -> ShadowPolicies:
    """Candidate policy files (same format as the live ones); a bad file fails the load."""
    candidates: dict[str, Policy] = {}
    for file in yaml_files(path):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file.name}: cannot read: {exc}") from None
        policy = parse_policy(text, file.name)
        if policy.tenant in candidates:
            raise ConfigError(f"{file.name}: duplicate shadow candidate for tenant {policy.tenant!r}")
        candidates[policy.tenant] = policy
    return ShadowPolicies(MappingProxyType(candidates))


def _terms(p: Policy) -> tuple[str, ...]:
    return p.blocklist.terms if p.blocklist else ()


def same_detectors(a: Policy, b: Policy) -> bool:
    """Whether tier 0 run under `a` answers for `b` too (same PII kinds and blocklist)."""
    return a.screened_pii_kinds == b.screened_pii_kinds and _terms(a) == _terms(b)


def missing_inputs(candidate: Policy, live: Policy) -> str:
    missing = []
    if not set(candidate.classifier_models) <= set(live.classifier_models):
        missing.append("classifier_models")
    if candidate.ratelimit != live.ratelimit:
        missing.append("ratelimit")
    return ",".join(missing)


def decide_shadow(
    candidate: Policy,
    live: Policy,
    tier0: Tier0Result,
    classifier: ClassifierOutcome,
    ratelimit: RateLimitOutcome | None,
    *,
    forced_categories: frozenset[str],
    enforcement: EnforcementVerdict | None,
) -> ShadowOutcome:
    """The candidate's decision on this request's inputs (`tier0` as the candidate sees
    it: the caller re-runs the detectors when `same_detectors` is false)."""
    incomplete = missing_inputs(candidate, live)
    rl = ratelimit if candidate.ratelimit == live.ratelimit else None
    outcome = decide(candidate, tier0, classifier, rl, forced_categories=forced_categories, enforcement=enforcement)
    return ShadowOutcome(candidate.version, outcome, incomplete)
