"""Every decision rule of the policy, on real detector output and a real policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.enforcer import policy as policy_mod
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    RateLimitOutcome,
    combine_model_scores,
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


def test_classifier_failure_follows_the_policys_fail_mode(policies) -> None:
    open_p, closed_p = policies.default, policies.for_tenant("hospital")
    down = ClassifierOutcome(failed="deadline exceeded")
    out = decide(open_p, tier0("hi", open_p), down, RateLimitOutcome())
    assert out.action is Action.ALLOW and out.degraded and out.failed_dependencies == ("classifier",)
    out = decide(closed_p, tier0("hi", closed_p), down, None)
    assert out.action is Action.BLOCK and out.reasons[0].code == "dependency.classifier"


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


def test_several_models_combine_by_maximum() -> None:
    assert combine_model_scores([{"a": 0.2, "b": 0.9}, {"a": 0.7}]) == {"a": 0.7, "b": 0.9}
