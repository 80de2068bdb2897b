"""The admin domain (services.actions.admin: roles, request validation, audit;
validation and authorisation happen before anything is produced) and the enforcer's
token front end (tokens file parsing, bearer tokens, the audit of calls that
identify nobody)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2 as pb
from safeguards.v1 import signals_pb2

from services.actions.admin import MAX_IDEMPOTENCY_KEYS, ActionAdmin, IssueRequest
from services.actions.authz import FailureThrottle, Operator, Role
from services.actions.keys import action_key
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.records import Revocation
from services.common.errors import (
    AlreadyExists,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.enforcer.admin import (
    EnforcementAdminServicer,
    TokenAuth,
    bearer_token,
    hash_token,
    load_tokens,
)
from tests.support import ROOT

VIEWER, OPERATOR, ADMIN = "viewer-token-1", "operator-token-1", "admin-token-1"


def tokens_file(tmp_path: Path) -> Path:
    f = tmp_path / "tokens.yaml"
    f.write_text(
        "tokens:\n"
        f"  {hash_token(VIEWER)}: {{name: vera, role: viewer}}\n"
        f"  {hash_token(OPERATOR)}: {{name: otto, role: operator}}\n"
        f"  {hash_token(ADMIN)}: {{name: ada, role: admin}}\n"
    )
    return f


def test_tokens_file_maps_digests_to_callers(tmp_path) -> None:
    callers = load_tokens(tokens_file(tmp_path))
    assert callers[hash_token(OPERATOR)].name == "otto" and callers[hash_token(OPERATOR)].role is Role.REVIEWER
    assert len(callers) == 3
    assert VIEWER not in callers  # digests only


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("tokens:\n  not-a-digest: {name: x, role: admin}\n", "is not a SHA-256 hex digest"),
        (f"tokens:\n  {'a' * 64}: {{name: x, role: root}}\n", "tokens." + "a" * 64 + ".role"),
        (f"tokens:\n  {'a' * 64}: {{name: x, role: admin, extra: 1}}\n", "extra"),
        (f"tokens:\n  {'a' * 64}: {{role: admin}}\n", ".name: Field required"),
        ("[1, 2]\n", "top level must be a mapping"),
        ("tokens: [\n", "not valid YAML"),
        ("token: {}\n", "token: Extra inputs are not permitted"),
    ],
)
def test_bad_tokens_files_say_what_is_wrong(tmp_path, text, error) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_tokens(f)
    assert error in str(err.value) and str(f) in str(err.value)


def test_example_tokens_file_is_valid_and_holds_the_documented_dev_token() -> None:
    callers = load_tokens(ROOT / "config" / "admin-tokens.example.yaml")
    assert callers[hash_token("dev-admin-token")].role is Role.ADMIN


def test_bearer_token_from_metadata() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("Authorization", "bearer  abc "),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) == ""
    assert bearer_token((("authorization", "Bearer "),)) == ""
    assert bearer_token(None) == ""


def test_hash_token_cli_reads_stdin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.enforcer.admin", "hash-token"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.strip() == hash_token("s3cret") and "s3cret" not in out.stdout


class CollectingPublisher:
    """The Publisher interface, keeping records in memory (audit content is checked
    end to end on a real broker in tests/e2e/test_enforcement_actions.py)."""

    def __init__(self) -> None:
        self.records = []

    def publish(self, record) -> None:
        self.records.append(record)

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class RefusingSink:
    """Validation and authorisation must reject before anything is produced."""

    async def send(self, topic, key, value, headers=None, *, revokes="", revocation=None) -> None:
        raise AssertionError("nothing may be produced for a rejected call")

    async def close(self) -> None: ...


VERA, OTTO, ADA = Operator("vera", Role.VIEWER), Operator("otto", Role.REVIEWER), Operator("ada", Role.ADMIN)


@pytest.fixture
def admin():
    return ActionAdmin(
        region="unit-1",
        key=RegionalKey.from_bytes("unit-1", b"k" * 32),
        table=ActionTable("unit-1", ActionMetrics(CollectorRegistry())),
        sink=RefusingSink(),
        publisher=CollectingPublisher(),
    )


def another_replica(admin: ActionAdmin, sink) -> ActionAdmin:
    """The admin domain of another replica of the same region: same key, its own table."""
    return ActionAdmin(
        region=admin.region,
        key=admin.key,
        table=ActionTable(admin.region, ActionMetrics(CollectorRegistry())),
        sink=sink,
        publisher=CollectingPublisher(),
    )


def audits(admin) -> list[signals_pb2.AdminAudit]:
    return [signals_pb2.SafeguardSignal.FromString(r.value).audit for r in admin.publisher.records]


async def test_roles(admin) -> None:
    assert await admin.list(VERA) == []
    assert await admin.list(ADA) == []
    assert await admin.list(OTTO) == []
    with pytest.raises(PermissionDenied, match="role viewer may not do account_action"):
        await admin.issue(VERA, IssueRequest(kind=0, reason=""))
    with pytest.raises(PermissionDenied):
        await admin.revoke(VERA, "x", "r")
    got = [(a.method, a.actor, a.role, a.allowed) for a in audits(admin)]
    assert got == [
        ("ListActions", "vera", "viewer", True),
        ("ListActions", "ada", "admin", True),
        ("ListActions", "otto", "reviewer", True),
        ("IssueAction", "vera", "viewer", False),
        ("RevokeAction", "vera", "viewer", False),
    ]
    assert all(
        signals_pb2.SafeguardSignal.FromString(r.value).surface == signals_pb2.SURFACE_ADMIN
        for r in admin.publisher.records
    )


class Context:
    """The one thing the servicer reads of a gRPC context (real gRPC calls are in
    tests/e2e/test_enforcement_actions.py)."""

    def __init__(self, token: str | None, peer: str = "ipv4:10.0.0.1:40000") -> None:
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._peer = peer

    def invocation_metadata(self):
        return self.metadata

    def peer(self) -> str:
        return self._peer


@pytest.fixture
def servicer(admin, tmp_path) -> EnforcementAdminServicer:
    tokens = ReloadingConfig(tokens_file(tmp_path), load_tokens)
    tokens.load_initial()
    return EnforcementAdminServicer(admin, TokenAuth(tokens))


async def test_tokens_name_the_caller_and_calls_that_identify_nobody_are_audited(servicer, admin) -> None:
    await servicer.ListActions(pb.ListActionsRequest(), Context(VIEWER))
    with pytest.raises(PermissionDenied):
        await servicer.IssueAction(pb.IssueActionRequest(tenant="t"), Context(VIEWER))
    with pytest.raises(Unauthenticated, match="missing credentials"):
        await servicer.ListActions(pb.ListActionsRequest(), Context(None))
    with pytest.raises(Unauthenticated, match="unknown token"):
        await servicer.RevokeAction(pb.RevokeActionRequest(action_id="x", reason="why"), Context("guess"))
    got = [(a.method, a.actor, a.role, a.allowed, a.reason) for a in audits(admin)]
    assert got == [
        ("ListActions", "vera", "viewer", True, ""),
        ("IssueAction", "vera", "viewer", False, ""),
        ("ListActions", "", "", False, ""),
        ("RevokeAction", "", "", False, "why"),
    ]


async def test_admin_api_without_tokens_file_refuses_everything(admin) -> None:
    servicer = EnforcementAdminServicer(admin, TokenAuth(None))
    with pytest.raises(FailedPrecondition, match="--admin-tokens"):
        await servicer.ListActions(pb.ListActionsRequest(), Context(ADMIN))


SUSPEND, THROTTLE, FORCE, KILL = (
    pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT,
    pb.ENFORCEMENT_KIND_THROTTLE_ACCOUNT,
    pb.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY,
    pb.ENFORCEMENT_KIND_KILL_SWITCH,
)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (dict(kind=0, tenant="t", account="a", reason="r"), "kind is required"),
        (dict(kind=99, tenant="t", account="a", reason="r"), "kind is required"),
        (dict(kind=SUSPEND, tenant="t", reason="r"), "SUSPEND_ACCOUNT needs account"),
        (dict(kind=SUSPEND, account="a", reason="r"), "SUSPEND_ACCOUNT needs tenant"),
        (dict(kind=SUSPEND, tenant="t", account="a", model="m", reason="r"), "SUSPEND_ACCOUNT does not use model"),
        (dict(kind=SUSPEND, tenant="t", account="a", reason=""), "reason is required"),
        (dict(kind=SUSPEND, tenant="t", account="a", reason="  "), "reason is required"),
        (dict(kind=SUSPEND, tenant="t", account="a", reason="r", ttl_s=-5), "ttl must not be negative"),
        (dict(kind=SUSPEND, tenant="t", account="a", reason="r", requests_per_minute=3), "THROTTLE_ACCOUNT only"),
        (dict(kind=THROTTLE, tenant="t", account="a", reason="r"), "requests_per_minute > 0"),
        (dict(kind=FORCE, tenant="t", reason="r"), "FORCE_BLOCK_CATEGORY needs category"),
        (dict(kind=FORCE, tenant="t", category="Jail Break", reason="r"), "category must be a classifier label"),
        (dict(kind=KILL, reason="r"), "exactly one of tenant or model"),
        (dict(kind=KILL, tenant="t", model="m", reason="r"), "exactly one of tenant or model"),
        (dict(kind=KILL, tenant="t", account="a", reason="r"), "exactly one of tenant or model"),
        (dict(kind=SUSPEND, tenant="t" * 300, account="a", reason="r"), "tenant is longer than 256"),
        (dict(kind=SUSPEND, tenant="t", account="a", reason="r" * 2000), "reason is longer than 1024"),
        (dict(kind=SUSPEND, tenant="t", account="a", account_hmac="f" * 64, reason="r"), "not both"),
        (dict(kind=SUSPEND, tenant="t", account_hmac="not-hex", reason="r"), "regional account pseudonym"),
    ],
)
async def test_issue_validation(admin, req, message) -> None:
    with pytest.raises(InvalidArgument) as err:
        await admin.issue(ADA, IssueRequest(**req))
    assert message in err.value.message
    assert audits(admin)[-1].allowed is False


async def test_revoke_validation(admin) -> None:
    with pytest.raises(InvalidArgument, match="action_id is required"):
        await admin.revoke(OTTO, "", "r")
    with pytest.raises(InvalidArgument, match="reason is required"):
        await admin.revoke(OTTO, "abc", "")
    with pytest.raises(Exception, match="no action 'abc' in force"):
        await admin.revoke(OTTO, "abc", "r")


class CollectingSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, str]] = []

    async def send(self, topic, key, value, headers=None, *, revokes="", revocation=None) -> None:
        self.sent.append((topic, key, value, revokes))

    async def close(self) -> None: ...


@pytest.mark.parametrize("apply_locally", [False, True])
async def test_issue_only_produces_unless_told_to_apply_locally(admin, apply_locally) -> None:
    """The enforcer's admin API writes no replica state: its own consumer applies the
    record like every replica's. The console (apply_locally) shows it at once."""
    admin.sink, admin.apply_locally = CollectingSink(), apply_locally
    action = await admin.issue(OTTO, IssueRequest(kind=SUSPEND, tenant="acme", account="a", reason="abuse"))
    ((topic, key, value, revokes),) = admin.sink.sent
    assert topic == "safeguards.actions.unit-1" and pb.EnforcementAction.FromString(value) == action
    assert revokes == "" and action.target.account_hmac != "a"  # pseudonymised
    assert [a.action_id for a in admin.table.actions()] == ([action.action_id] if apply_locally else [])


async def test_a_revoke_names_the_action_it_revokes(admin) -> None:
    admin.sink, admin.apply_locally = CollectingSink(), True
    action = await admin.issue(ADA, IssueRequest(kind=KILL, model="bad", reason="incident"))
    assert (await admin.revoke(ADA, action.action_id, "resolved")).revoked
    (_, key, value, revokes) = admin.sink.sent[-1]
    assert value is None and revokes == action.action_id and key == b"killswitch:model:bad"
    assert admin.table.actions() == []
    assert [(a.method, a.actor, a.reason, a.action_id) for a in audits(admin)][-1] == (
        "RevokeAction",
        "ada",
        "resolved",
        action.action_id,
    )


async def test_kill_switches_and_force_blocks_are_for_admins_only(admin) -> None:
    """One role matrix (services.actions.authz): a reviewer suspends accounts but flips
    no kill switch and force-blocks no category; an admin does both."""
    admin.sink = CollectingSink()
    for req in (
        IssueRequest(kind=KILL, tenant="acme", reason="incident"),
        IssueRequest(kind=FORCE, tenant="acme", category="jailbreak", reason="incident"),
    ):
        with pytest.raises(PermissionDenied, match="role reviewer may not do tenant_action"):
            await admin.issue(OTTO, req)
        assert (await admin.issue(ADA, req)).actor == "ada"
    assert (await admin.issue(OTTO, IssueRequest(kind=SUSPEND, tenant="acme", account="a", reason="r"))).actor
    assert len(admin.sink.sent) == 3


async def test_region_scope_is_checked_before_the_role(admin) -> None:
    elsewhere = Operator("eve", Role.ADMIN, frozenset({"other-region"}))
    with pytest.raises(PermissionDenied, match="no access to region unit-1"):
        await admin.list(elsewhere)
    assert await admin.list(Operator("ann", Role.VIEWER, frozenset({"unit-1"}))) == []


async def test_a_reviewer_cannot_revoke_a_kill_switch(admin) -> None:
    admin.sink, admin.apply_locally = CollectingSink(), True
    action = await admin.issue(ADA, IssueRequest(kind=KILL, tenant="acme", reason="incident"))
    with pytest.raises(PermissionDenied):
        await admin.revoke(OTTO, action.action_id, "not mine to lift")
    assert [a.action_id for a in admin.table.actions()] == [action.action_id]


async def test_a_second_revoke_answers_already_revoked_and_keeps_the_first(admin) -> None:
    """Before the tombstone is read back (the enforcer does not apply locally) a second
    revoke must not produce again nor answer revoked=True; the first revoke's actor
    and reason are kept, each call audited with its own."""
    admin.sink = CollectingSink()
    action = await admin.issue(OTTO, IssueRequest(kind=SUSPEND, tenant="acme", account="a", reason="abuse"))
    admin.table.apply(*admin.sink.sent[-1][1:3])  # read back from the topic
    first = await admin.revoke(OTTO, action.action_id, "appeal accepted")
    again = await admin.revoke(ADA, action.action_id, "cleanup")
    assert first.revoked and not again.revoked
    assert (again.original.actor, again.original.reason) == ("otto", "appeal accepted")
    assert [s[3] for s in admin.sink.sent] == ["", action.action_id]  # one tombstone
    admin.table.apply(admin.sink.sent[-1][1], None, revokes=action.action_id)
    assert not (await admin.revoke(ADA, action.action_id, "later")).revoked
    got = [(a.actor, a.reason, a.allowed) for a in audits(admin) if a.method == "RevokeAction"]
    assert got == [("otto", "appeal accepted", True), ("ada", "cleanup", True), ("ada", "later", True)]


async def test_a_second_revoke_on_another_replica_names_the_first(admin) -> None:
    """The tombstone carries who revoked and why: a replica that only read it answers
    a second revoke with the first one's actor and reason."""
    admin.sink, admin.apply_locally = CollectingSink(), True
    action = await admin.issue(OTTO, IssueRequest(kind=SUSPEND, tenant="acme", account="a", reason="abuse"))
    key, value = action_key(action.kind, action.target).encode(), action.SerializeToString()
    other = another_replica(admin, RefusingSink())
    other.table.apply(key, value)
    first = Revocation("otto", "appeal granted", 1_700_000_000.0)
    other.table.apply(key, None, revokes=action.action_id, revocation=first)  # read from the topic
    result = await other.revoke(ADA, action.action_id, "again")
    assert not result.revoked and result.original == first


async def test_a_revoke_seen_only_on_the_topic_answers_already_revoked(admin) -> None:
    """Another replica's revoke: this one read the tombstone, knows no actor."""
    action = pb.EnforcementAction(
        action_id="a1", kind=SUSPEND, target=pb.EnforcementTarget(tenant="acme", account_hmac="f" * 64)
    )
    key = b"suspend:acme:" + b"f" * 64
    admin.table.apply(key, action.SerializeToString())
    admin.table.apply(key, None, revokes="a1")
    result = await admin.revoke(OTTO, "a1", "again")
    assert not result.revoked and result.original is None


class Labels:
    def __init__(self, *names: str, tenants: tuple[str, ...] = (), models: tuple[str, ...] = ()) -> None:
        self.names = frozenset(names)
        self.known_tenants, self.known_models = frozenset(tenants), frozenset(models)

    async def categories(self) -> frozenset[str]:
        return self.names

    async def tenants(self) -> frozenset[str]:
        return self.known_tenants

    async def models(self) -> frozenset[str]:
        return self.known_models


async def test_a_force_block_of_an_unknown_category_is_refused_naming_the_valid_ones(admin) -> None:
    admin.catalog = Labels("jailbreak", "injection")
    with pytest.raises(InvalidArgument, match="unknown category 'jailbrek'.*injection, jailbreak"):
        await admin.issue(ADA, IssueRequest(kind=FORCE, tenant="acme", category="jailbrek", reason="typo"))
    assert audits(admin)[-1].allowed is False
    admin.sink = CollectingSink()
    await admin.issue(ADA, IssueRequest(kind=FORCE, tenant="acme", category="jailbreak", reason="incident"))
    assert len(admin.sink.sent) == 1


async def test_tenants_and_models_the_catalog_does_not_know_are_refused(admin) -> None:
    admin.catalog = Labels("jailbreak", tenants=("acme", "globex"), models=("claude",))
    for req, message in (
        (IssueRequest(kind=KILL, tenant="acme-typo", reason="r"), "unknown tenant 'acme-typo'.*acme, globex"),
        (IssueRequest(kind=KILL, model="claud", reason="r"), "unknown model 'claud'.*claude"),
        (IssueRequest(kind=SUSPEND, tenant="initech", account="a", reason="r"), "unknown tenant 'initech'"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            await admin.issue(ADA, req)  # RefusingSink: nothing produced
    admin.sink = CollectingSink()
    await admin.issue(ADA, IssueRequest(kind=KILL, model="claude", reason="incident"))
    await admin.issue(OTTO, IssueRequest(kind=SUSPEND, tenant="globex", account="a", reason="abuse"))
    admin.catalog = Labels()  # nothing known (a fresh monitor): nothing checked
    await admin.issue(ADA, IssueRequest(kind=KILL, tenant="anyone", reason="incident"))
    assert len(admin.sink.sent) == 3


async def test_failed_calls_are_throttled_per_caller(admin, tmp_path) -> None:
    tokens = ReloadingConfig(tokens_file(tmp_path), load_tokens)
    tokens.load_initial()
    servicer = EnforcementAdminServicer(admin, TokenAuth(tokens), FailureThrottle(max_failures=3, window_s=60))
    attacker = "ipv4:10.9.9.9:5000"
    for i in range(3):
        with pytest.raises(Unauthenticated):
            await servicer.ListActions(pb.ListActionsRequest(), Context(f"guess-{i}", attacker))
    with pytest.raises(ResourceExhausted, match="too many failed calls"):
        await servicer.ListActions(pb.ListActionsRequest(), Context("guess-x", "ipv4:10.9.9.9:5001"))
    with pytest.raises(ResourceExhausted):  # the caller, whatever it sends now
        await servicer.ListActions(pb.ListActionsRequest(), Context(VIEWER, attacker))
    # Another caller with a valid token is not locked out.
    await servicer.ListActions(pb.ListActionsRequest(), Context(VIEWER, "ipv4:10.0.0.2:4000"))
    throttled = [a for a in audits(admin) if a.method.endswith(".throttled")]
    assert len(throttled) == 1  # audited once, not at every refused call


def test_failure_throttle_window_ends_and_keys_are_bounded() -> None:
    now = [0.0]
    t = FailureThrottle(max_failures=2, window_s=10, max_keys=3, clock=lambda: now[0])
    keys = FailureThrottle.keys("ipv6:[::1]:1234", "tok")
    assert keys[0] == "addr:::1"
    t.failed(keys)
    assert t.failed(keys) is True
    with pytest.raises(ResourceExhausted, match="retry in 10s"):
        t.check(keys)
    now[0] = 10.0
    t.check(keys)
    for i in range(10):
        t.failed((f"addr:10.0.0.{i}",))
    assert len(t._keys) == 3


class UnacknowledgingSink(CollectingSink):
    """Writes the record, then answers as a broker that acknowledged too late: the
    record is on the topic, the caller got UNAVAILABLE (the kafka-pause fault)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, topic, key, value, headers=None, *, revokes="", revocation=None) -> None:
        await super().send(topic, key, value, headers, revokes=revokes)
        if self.failures:
            self.failures -= 1
            raise Unavailable("the actions topic did not acknowledge the record in time")


def suspend(key: str, account: str = "a", reason: str = "abuse", ttl_s: float = 0.0) -> IssueRequest:
    return IssueRequest(kind=SUSPEND, tenant="acme", account=account, reason=reason, ttl_s=ttl_s, idempotency_key=key)


async def test_a_retry_with_the_same_idempotency_key_issues_the_same_action_once(admin) -> None:
    admin.sink = UnacknowledgingSink(failures=1)
    with pytest.raises(Unavailable):
        await admin.issue(OTTO, suspend("k-1", ttl_s=3600))
    first = pb.EnforcementAction.FromString(admin.sink.sent[0][2])
    admin._clock = lambda: 2e9  # the retry comes later: the record it sends does not change
    action = await admin.issue(OTTO, suspend("k-1", ttl_s=3600))
    assert action == first and len(admin.sink.sent) == 2 and admin.sink.sent[1] == admin.sink.sent[0]
    # Acknowledged now: a third try answers the same action and writes nothing.
    assert await admin.issue(OTTO, suspend("k-1", ttl_s=3600)) == first and len(admin.sink.sent) == 2
    # Without a key, every call is a new action.
    a = await admin.issue(OTTO, suspend(""))
    b = await admin.issue(OTTO, suspend(""))
    assert a.action_id != b.action_id


async def test_an_idempotency_key_gives_the_same_action_id_on_every_replica(admin) -> None:
    """Another replica (or a restarted one) knows nothing of the first try: the id is
    derived from region, caller and key, so the topic holds one action id; and when
    the first try was read back already, the retry answers it and writes nothing."""
    admin.sink = UnacknowledgingSink(failures=1)
    with pytest.raises(Unavailable):
        await admin.issue(OTTO, suspend("k-2"))
    other = another_replica(admin, CollectingSink())
    retried = await other.issue(OTTO, suspend("k-2"))
    assert retried.action_id == pb.EnforcementAction.FromString(admin.sink.sent[0][2]).action_id
    assert (await admin.issue(ADA, suspend("k-2"))).action_id != retried.action_id  # keys are per caller
    third = ActionAdmin(
        region="unit-1", key=admin.key, table=other.table, sink=RefusingSink(), publisher=CollectingPublisher()
    )
    other.table.apply(*admin.sink.sent[0][1:3])  # the first try, read back from the topic
    assert (await third.issue(OTTO, suspend("k-2"))).action_id == retried.action_id  # nothing produced
    with pytest.raises(AlreadyExists):
        await third.issue(OTTO, suspend("k-2", account="someone-else"))


async def test_an_idempotency_key_reused_for_another_action_or_after_a_revoke_is_refused(admin) -> None:
    admin.sink, admin.apply_locally = CollectingSink(), True
    action = await admin.issue(OTTO, suspend("k-3"))
    for other in (suspend("k-3", account="b"), suspend("k-3", reason="other"), suspend("k-3", ttl_s=60)):
        with pytest.raises(AlreadyExists, match=action.action_id):
            await admin.issue(OTTO, other)
    await admin.revoke(OTTO, action.action_id, "mistake")
    with pytest.raises(FailedPrecondition, match="revoked"):
        await admin.issue(OTTO, suspend("k-3"))
    assert admin.table.actions() == []  # a revoked action is never brought back by a retry


async def test_a_flood_of_idempotency_keys_is_bounded_and_an_evicted_key_still_names_its_action(admin) -> None:
    """An operator script (or a stolen token) sending a new key per call cannot grow
    the replica's memory: past the bound the oldest keys are forgotten. A retry with
    a forgotten key still writes the same action id (derived, not remembered), so the
    projection replaces the record on its key and no second action appears."""
    admin.sink = CollectingSink()
    first = await admin.issue(OTTO, suspend("flood-0", account="acct-0"))
    for i in range(1, MAX_IDEMPOTENCY_KEYS + 50):
        await admin.issue(OTTO, suspend(f"flood-{i}", account=f"acct-{i % 7}"))
    assert len(admin._issued) == MAX_IDEMPOTENCY_KEYS
    assert ("otto", "flood-0") not in admin._issued and ("otto", f"flood-{MAX_IDEMPOTENCY_KEYS + 49}") in admin._issued
    sent = len(admin.sink.sent)
    again = await admin.issue(OTTO, suspend("flood-0", account="acct-0"))
    assert again.action_id == first.action_id and len(admin.sink.sent) == sent + 1
    table = ActionTable(admin.region, ActionMetrics(CollectorRegistry()))
    for _topic, key, value, _revokes in (admin.sink.sent[0], admin.sink.sent[-1]):
        table.apply(key, value)
    assert [a.action_id for a in table.actions()] == [first.action_id]


@pytest.mark.parametrize("key", ["x" * 129, "has space", "tab\t", "ünïcode", "nul\x00"])
async def test_bad_idempotency_keys_are_refused_before_anything_is_produced(admin, key) -> None:
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        await admin.issue(OTTO, suspend(key))
