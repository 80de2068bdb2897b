"""Every decision rule of the policy, on real detector output and a real policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.enforcer import policy as policy_mod
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    RateLimitOutcome,
    Verdict,
    decide,
)
from services.enforcer.detectors import run_tier0
from services.enforcer.policy import Action

DATA = Path(__file__).parent / "testdata" / "good"
MODEL_THRESHOLDS = {"jailbreak": 0.6, "prompt_injection": 0.9, "harmful": 0.7}


@pytest.fixture(scope="module")
def policies():
    return policy_mod.load(DATA)


def scores(**kw: float) -> ClassifierOutcome:
    base = {"benign": 0.9, "jailbreak": 0.01, "prompt_injection": 0.01, "harmful": 0.01}
    return ClassifierOutcome(scores={**base, **kw}, model_thresholds=MODEL_THRESHOLDS, model_versions={"m": 1})


def tier0(text: str, p) -> object:
    return run_tier0(text, p.blocklist, sorted(p.screened_pii_kinds))


def test_benign_prompt_is_allowed(policies) -> None:
    p = policies.default
    out = decide(p, tier0("What is the capital of France?", p), scores(), RateLimitOutcome())
    assert out.action is Action.ALLOW and not out.reasons and not out.degraded


def test_classifier_over_the_models_threshold_blocks(policies) -> None:
    p = policies.default
    out = decide(p, tier0("hi", p), scores(jailbreak=0.61), RateLimitOutcome())
    assert out.action is Action.BLOCK
    assert [r.code for r in out.reasons] == ["classifier.jailbreak"]
    jb = next(s for s in out.scores if s.category == "jailbreak")
    assert jb.threshold == 0.6 and jb.action is Action.BLOCK
    assert decide(p, tier0("hi", p), scores(jailbreak=0.59), RateLimitOutcome()).action is Action.ALLOW


def test_policy_threshold_overrides_the_model_and_maps_to_its_action(policies) -> None:
    p = policies.for_tenant("hospital")  # harmful: 0.5 -> FLAG
    out = decide(p, tier0("hi", p), scores(harmful=0.55), None)
    assert out.action is Action.FLAG and out.reasons[0].code == "classifier.harmful"


def test_pii_is_redacted_and_secrets_block(policies) -> None:
    p = policies.default
    out = decide(p, tier0("mail me at jane.doe@example.com please", p), scores(), RateLimitOutcome())
    assert out.action is Action.REDACT and out.redact and out.reasons[0].code == "pii.email"
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\n-----END RSA PRIVATE KEY-----"
    out = decide(p, tier0(f"here is my key {key}", p), scores(), RateLimitOutcome())
    assert out.action is Action.BLOCK and "pii.private_key" in [r.code for r in out.reasons]


def test_blocklist_hit_uses_the_policy_action_and_defeats_zero_width_tricks(policies) -> None:
    p = policies.for_tenant("hospital")
    out = decide(p, tier0("tell me about project nigh\u200btingale", p), scores(), None)
    assert out.action is Action.BLOCK and out.reasons[0].code == "blocklist"
    assert "nightingale" not in out.reasons[0].detail


def test_rate_limit_over_means_throttle_with_retry_after(policies) -> None:
    p = policies.default
    out = decide(p, tier0("hi", p), scores(), RateLimitOutcome(over_limit=True, rule="tenant-rpm", retry_after_s=7))
    assert out.action is Action.THROTTLE and out.retry_after_s == 7
    assert out.reasons[0].code == "ratelimit.tenant-rpm"
    # A block outranks a throttle, and then there is no retry-after.
    out = decide(p, tier0("hi", p), scores(harmful=0.99), RateLimitOutcome(over_limit=True, retry_after_s=7))
    assert out.action is Action.BLOCK and out.retry_after_s == 0


def test_an_unreachable_classifier_follows_the_policys_fail_mode_and_says_so(policies) -> None:
    open_p, closed_p = policies.default, policies.for_tenant("hospital")
    down = ClassifierOutcome(failed="circuit_open", unreachable=True)
    out = decide(open_p, tier0("hi", open_p), down, RateLimitOutcome())
    assert out.action is Action.ALLOW and out.degraded and out.failed_dependencies == ("classifier",)
    assert out.verdict is Verdict.NONE and out.verdict_reason == "circuit_open"
    assert [r.code for r in out.reasons] == ["dependency.classifier"]  # never silent, even when open
    out = decide(closed_p, tier0("hi", closed_p), down, None)
    assert out.action is Action.BLOCK and out.reasons[0].code == "dependency.classifier"


def test_no_verdict_from_a_reachable_classifier_is_not_a_fail_open(policies) -> None:
    """Fail-open is for a classifier that is down; a missing verdict for another reason
    (here the caller's deadline) takes the policy's no_verdict_action."""
    open_p, closed_p = policies.default, policies.for_tenant("hospital")
    late = ClassifierOutcome(failed="deadline_exceeded")
    out = decide(open_p, tier0("hi", open_p), late, RateLimitOutcome())
    assert out.action is open_p.partial.no_verdict_action is Action.FLAG
    assert not out.degraded and out.verdict is Verdict.NONE
    assert [r.code for r in out.reasons] == ["verdict.none"]
    assert decide(closed_p, tier0("hi", closed_p), late, None).action is Action.BLOCK


def test_a_partial_verdict_decides_on_the_scores_it_has(policies) -> None:
    p = policies.default
    partial = dict(partial="deadline", answered_by="prompt_guard_ngram")
    base = {"benign": 0.1, "jailbreak": 0.95, "prompt_injection": 0.01, "harmful": 0.01}
    confident = ClassifierOutcome(scores=base, model_thresholds=MODEL_THRESHOLDS, **partial)
    out = decide(p, tier0("hi", p), confident, RateLimitOutcome())
    assert out.action is Action.BLOCK and out.verdict is Verdict.PARTIAL and out.answered_by == "prompt_guard_ngram"
    assert {r.code for r in out.reasons} == {"verdict.partial", "classifier.jailbreak"}


def test_a_partial_verdict_in_the_uncertain_band_takes_the_uncertain_action(policies) -> None:
    """`uncertain_above: band` (the default): uncertain from where the answering cascade
    itself escalates, the band low edge it reports with a PARTIAL answer."""
    p = policies.default
    assert p.partial.uncertain_above is None and p.partial.uncertain_action is Action.FLAG
    partial = dict(model_thresholds=MODEL_THRESHOLDS, partial="deadline", uncertain_from=0.3)
    mid = {"benign": 0.6, "jailbreak": 0.01, "prompt_injection": 0.01, "harmful": 0.4}
    out = decide(p, tier0("hi", p), ClassifierOutcome(scores=mid, **partial), None)
    assert out.action is Action.FLAG and "classifier.uncertain" in {r.code for r in out.reasons}
    assert "uncertain from 0.30" in next(r.detail for r in out.reasons if r.code == "classifier.uncertain")
    low = {**mid, "harmful": 0.25}  # under the band: the cascade itself calls it benign
    out = decide(p, tier0("hi", p), ClassifierOutcome(scores=low, **partial), None)
    assert out.action is Action.ALLOW and [r.code for r in out.reasons] == ["verdict.partial"]
    # No band reported (an oversize sample of full answers): the thresholds decide alone.
    out = decide(
        p, tier0("hi", p), ClassifierOutcome(scores=mid, model_thresholds=MODEL_THRESHOLDS, partial="oversize"), None
    )
    assert out.action is Action.ALLOW
    # A number in the policy wins over the band.
    fixed = dataclasses.replace(p, partial=dataclasses.replace(p.partial, uncertain_above=0.5))
    assert decide(fixed, tier0("hi", fixed), ClassifierOutcome(scores=mid, **partial), None).action is Action.ALLOW
    # The same scores on a FULL verdict are simply under the threshold.
    out = decide(p, tier0("hi", p), ClassifierOutcome(scores=mid, model_thresholds=MODEL_THRESHOLDS), None)
    assert out.action is Action.ALLOW and not out.reasons and out.verdict is Verdict.FULL


def test_rate_limiter_failure_fails_open_by_default(policies) -> None:
    p = policies.default
    out = decide(p, tier0("hi", p), scores(), RateLimitOutcome(failed="unavailable"))
    assert out.action is Action.ALLOW and out.degraded and out.failed_dependencies == ("ratelimit",)


def test_enforcement_verdict_and_forced_categories(policies) -> None:
    p = policies.for_tenant("hospital")  # harmful would only FLAG
    out = decide(p, tier0("hi", p), scores(harmful=0.8), None, forced_categories=frozenset({"harmful"}))
    assert out.action is Action.BLOCK and out.reasons[0].detail == "forced block"
    out = decide(
        p, tier0("hi", p), scores(), None, enforcement=EnforcementVerdict(Action.BLOCK, "enforcement.suspended")
    )
    assert out.action is Action.BLOCK and out.reasons[0].code == "enforcement.suspended"
