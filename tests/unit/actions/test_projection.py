"""The projection's tables (services.actions.projection), fed with real
EnforcementAction records as they come off the actions topic (key bytes, value bytes
or None for a tombstone), and the enforcer's view of them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2 as pb

from services.actions.keys import action_key, force_key, kill_model_key, kill_tenant_key, suspend_key, throttle_key
from services.actions.projection import KILL_SWITCH, SUSPENDED, ActionMetrics, ActionTable
from services.enforcer.policy import Action
from services.enforcer.state import ActionLookups

REGION = "unit-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def state(clock, registry) -> ActionTable:
    return ActionTable(REGION, ActionMetrics(registry), clock=clock)


def action(kind, *, action_id="a1", ttl_s=0.0, now=1_700_000_000.0, rpm=0, region=REGION, **target):
    a = pb.EnforcementAction(
        action_id=action_id,
        kind=kind,
        target=pb.EnforcementTarget(**target),
        actor="alice",
        reason="test",
        requests_per_minute=rpm,
        region=region,
    )
    a.issued_at.FromNanoseconds(int(now * 1e9))
    if ttl_s:
        a.expires_at.FromNanoseconds(int((now + ttl_s) * 1e9))
    return a


def record(a: pb.EnforcementAction) -> tuple[bytes, bytes]:
    return action_key(a.kind, a.target).encode(), a.SerializeToString()


def test_keys_name_the_target_and_escape_separators() -> None:
    assert suspend_key("acme", "h1") == "suspend:acme:h1"
    assert throttle_key("acme", "h1") == "throttle:acme:h1"
    assert force_key("acme", "jailbreak") == "force:acme:jailbreak"
    assert kill_tenant_key("acme") == "killswitch:tenant:acme"
    assert kill_model_key("claude") == "killswitch:model:claude"
    # A ':' in a tenant cannot make two different targets share a key.
    assert suspend_key("a:b", "c") != suspend_key("a", "b:c")
    with pytest.raises(ValueError):
        action_key(pb.ENFORCEMENT_KIND_KILL_SWITCH, pb.EnforcementTarget(tenant="t", model="m"))
    with pytest.raises(ValueError):
        action_key(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, pb.EnforcementTarget(tenant="t"))


def test_suspended_account_is_blocked_and_others_are_not(state) -> None:
    assert state.blocking("acme", "h1", "claude") is None
    assert state.apply(*record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme", account_hmac="h1")))
    v = state.blocking("acme", "h1", "claude")
    assert v is not None and v.code == SUSPENDED and "a1" in v.detail
    assert state.blocking("acme", "h2", "claude") is None
    assert state.blocking("other", "h1", "claude") is None
    assert state.blocking("acme", "", "claude") is None


def test_tombstone_unsuspends(state, registry) -> None:
    key, value = record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme", account_hmac="h1"))
    state.apply(key, value)
    assert state.find("a1") is not None
    assert state.apply(key, None)
    assert state.blocking("acme", "h1", "") is None
    assert state.find("a1") is None and state.actions() == []
    assert registry.get_sample_value("enforcer_actions_applied_total", {"kind": "revoke"}) == 1
    assert registry.get_sample_value("enforcer_actions_live") == 0


def test_expired_action_stops_applying_at_lookup_time(state, clock) -> None:
    state.apply(*record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, ttl_s=60, tenant="acme", account_hmac="h1")))
    clock.now += 59
    assert state.blocking("acme", "h1", "") is not None
    assert [a.action_id for a in state.actions()] == ["a1"]
    clock.now += 2
    assert state.blocking("acme", "h1", "") is None
    assert state.actions() == []
    # Still found by id, so an operator can revoke (tombstone) it explicitly.
    assert state.find("a1") is not None


def test_kill_switch_for_a_tenant_or_a_model(state) -> None:
    state.apply(*record(action(pb.ENFORCEMENT_KIND_KILL_SWITCH, action_id="t", tenant="acme")))
    state.apply(*record(action(pb.ENFORCEMENT_KIND_KILL_SWITCH, action_id="m", model="bad-model")))
    v = state.blocking("acme", "h9", "good-model")
    assert v is not None and v.code == KILL_SWITCH
    v = state.blocking("globex", "h9", "bad-model")
    assert v is not None and v.code == KILL_SWITCH and "model" in v.detail
    assert state.blocking("globex", "h9", "good-model") is None
    assert state.blocking("globex", "", "") is None


def test_forced_categories_per_tenant(state, clock) -> None:
    state.apply(
        *record(action(pb.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY, action_id="f1", tenant="acme", category="harmful"))
    )
    state.apply(
        *record(
            action(
                pb.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY, action_id="f2", tenant="acme", category="jailbreak", ttl_s=10
            )
        )
    )
    assert state.forced_categories("acme") == {"harmful", "jailbreak"}
    assert state.forced_categories("globex") == frozenset()
    clock.now += 11
    assert state.forced_categories("acme") == {"harmful"}
    state.apply(force_key("acme", "harmful").encode(), None)
    assert state.forced_categories("acme") == frozenset()
    assert state.blocking("acme", "h", "m") is None  # forcing a category is not a block by itself


def test_throttle_limit(state) -> None:
    assert state.account_limit("acme", "h1") is None
    state.apply(*record(action(pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT, tenant="acme", account_hmac="h1", rpm=5)))
    assert state.account_limit("acme", "h1") == 5
    assert state.account_limit("acme", "h2") is None
    assert state.account_limit("acme", "") is None
    assert state.blocking("acme", "h1", "") is None  # throttled, not blocked


def test_newer_action_on_the_same_target_replaces_the_older(state) -> None:
    state.apply(
        *record(action(pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT, action_id="old", tenant="acme", account_hmac="h1", rpm=5))
    )
    state.apply(
        *record(action(pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT, action_id="new", tenant="acme", account_hmac="h1", rpm=50))
    )
    assert state.account_limit("acme", "h1") == 50
    assert state.find("old") is None and state.find("new") is not None
    assert [a.action_id for a in state.actions()] == ["new"]


def test_malformed_records_are_skipped_without_logging_content(state, registry, caplog) -> None:
    good_key, good_value = record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme", account_hmac="h1"))
    secret = b"raw-account-zzz-42"
    bad = [
        (None, good_value),  # no key
        (b"\xff\xfe", good_value),  # key not UTF-8
        (good_key, b"\x0a\xff" + secret),  # not a protobuf
        (good_key, pb.EnforcementAction(action_id="x").SerializeToString()),  # no kind
        (b"suspend:acme:" + secret, good_value),  # key does not match the target
        (good_key, action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme").SerializeToString()),  # no account
        record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, region="elsewhere", tenant="acme", account_hmac="h")),
        record(action(pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT, tenant="acme", account_hmac="h1", rpm=0)),
    ]
    with caplog.at_level("WARNING"):
        for key, value in bad:
            assert state.apply(key, value) is False
    assert registry.get_sample_value("enforcer_actions_malformed_total") == len(bad)
    assert state.actions() == [] and state.blocking("acme", "h1", "") is None
    assert secret.decode() not in caplog.text and "malformed action record skipped" in caplog.text
    # A good record after the bad ones still applies.
    assert state.apply(good_key, good_value)
    assert state.blocking("acme", "h1", "") is not None


def test_list_filters_by_tenant_oldest_first(state) -> None:
    state.apply(*record(action(pb.ENFORCEMENT_KIND_KILL_SWITCH, action_id="b", now=2e9, tenant="acme")))
    state.apply(
        *record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, action_id="a", now=1e9, tenant="acme", account_hmac="h"))
    )
    state.apply(*record(action(pb.ENFORCEMENT_KIND_KILL_SWITCH, action_id="c", tenant="globex")))
    assert [a.action_id for a in state.actions("acme")] == ["a", "b"]
    assert {a.action_id for a in state.actions()} == {"a", "b", "c"}


def test_the_enforcers_view_answers_in_decision_terms(state) -> None:
    view = ActionLookups(state)
    assert view.verdict("acme", "h1", "claude") is None
    state.apply(*record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme", account_hmac="h1")))
    state.apply(
        *record(action(pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT, action_id="t", tenant="acme", account_hmac="h2", rpm=7))
    )
    v = view.verdict("acme", "h1", "claude")
    assert v is not None and v.action is Action.BLOCK and v.code == SUSPENDED and "a1" in v.detail
    assert view.account_limit("acme", "h2") == 7 and view.forced_categories("acme") == frozenset()


def test_a_revoke_removes_only_the_action_it_names(state, registry) -> None:
    """A copy of an old revoke produced again must not lift a later action on the same target."""
    key, first = record(
        action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, action_id="first", tenant="acme", account_hmac="h1")
    )
    state.apply(key, first)
    assert state.apply(key, None, revokes="first")
    _, second = record(
        action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, action_id="second", tenant="acme", account_hmac="h1")
    )
    state.apply(key, second)
    assert state.apply(key, None, revokes="first") is False  # the replayed revoke
    assert state.blocking("acme", "h1", "") is not None
    assert registry.get_sample_value("enforcer_actions_refused_total", {"reason": "stale_revoke"}) == 1
    assert state.apply(key, None, revokes="second")
    assert state.blocking("acme", "h1", "") is None


def test_a_late_copy_of_a_revoked_action_is_not_applied(state, registry) -> None:
    """An idempotent retry's first try, held by a stalled broker, lands after the
    action was revoked: a revoke is final."""
    key, value = record(action(pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, action_id="once", tenant="acme", account_hmac="h1"))
    assert state.apply(key, value)
    assert state.apply(key, None, revokes="once")
    assert state.apply(key, value) is False
    assert state.blocking("acme", "h1", "") is None
    assert registry.get_sample_value("enforcer_actions_refused_total", {"reason": "revoked"}) == 1
