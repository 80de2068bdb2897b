"""The operators' domain (services.monitor.operations) on real PostgreSQL and a real
Tansu broker: what a console operator may see and do, and what it leaves behind.

Proves: region scope (an operator of another region reads nothing, and the refusal
is audited); roles (a viewer cannot suspend, a reviewer cannot kill-switch, an admin
can); a reviewer suspends an account from a case by its pseudonym: the action lands
on the actions topic keyed as the enforcer keys it, actor `console:<name>`, the case
becomes ACTIONED, an audit row and an audit signal are written; review verdicts;
reversing an automated action (a tombstone on its key); account lookup by raw id and
by pseudonym with the action history read back from the topic, and a second monitor
re-reading the topic from the start adds no history rows; block rates per minute.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2, signals_pb2

from services.actions.admin import ActionAdmin
from services.actions.authz import Operator, Role
from services.actions.consumer import ActionsConsumer
from services.actions.keys import action_key
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.kafka import KafkaPublisher, ProducerConfig, PublisherMetrics
from services.common.spool import Spool
from services.monitor.decisions import decision_from_signal
from services.monitor.operations import ActionHistory, Operations, StoredCatalog
from services.monitor.store import CASE_ACTIONED, CASE_DISMISSED, CaseFilter, Retention, Store
from tests.integration.monitor.monitor_support import KEY, make_signal, pg_database, read_topic
from tests.support import EmbeddedKafka
from tools.run_mesh import create_topics

REGION = KEY.region
DEV_KEYS = KeyRing.insecure_dev()
ACTIONS = f"safeguards.actions.{REGION}"
SIGNALS = f"safeguards.signals.{REGION}"
RUN = uuid.uuid4().hex[:6]
VIEWER = Operator("vera", Role.VIEWER, frozenset({REGION}))
REVIEWER = Operator("rita", Role.REVIEWER, frozenset({REGION}))
ADMIN = Operator("adam", Role.ADMIN, frozenset({"*"}))
OUTSIDER = Operator("otto", Role.ADMIN, frozenset({"other-region"}))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    kafka = EmbeddedKafka().start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        with pg_database("monops") as db_url:
            yield kafka, db_url, tmp_path_factory.mktemp("ops")
    finally:
        kafka.stop()


@asynccontextmanager
async def operations(env, key=KEY):
    kafka, db_url, tmp = env
    store = Store(db_url, REGION, Retention(3600, 3600, 3600))
    await store.start()
    registry = CollectorRegistry()
    history = ActionHistory(store.pool, REGION, flush_interval_s=0.1)
    state = ActionTable(REGION, ActionMetrics(registry, prefix="safeguards_monitor"))
    consumer = ActionsConsumer(
        state, keys=DEV_KEYS, bootstrap=kafka.bootstrap, client_id="ops-test", observer=history.observe
    )
    sink = KafkaActionSink(kafka.bootstrap, keys=DEV_KEYS, idempotence=False, timeout_s=10, client_id="ops-test")
    publisher = KafkaPublisher(
        ProducerConfig(bootstrap=kafka.bootstrap, client_id="ops-test"),
        Spool(Path(tmp) / f"spool-{uuid.uuid4().hex[:6]}.db", 1 << 20),
        PublisherMetrics(registry),
    )
    admin = ActionAdmin(
        region=REGION,
        key=key,
        table=state,
        sink=sink,
        publisher=publisher,
        apply_locally=True,
        catalog=StoredCatalog(store.pool, REGION, ttl_s=0),
    )
    await publisher.start()
    await history.start()
    await consumer.start()
    try:
        yield Operations(store=store, state=state, admin=admin, key=key)
    finally:
        await consumer.stop()
        await history.stop()
        await sink.close()
        await publisher.close()
        await store.close()


async def eventually(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def open_case(ops: Operations, tenant: str, account: str) -> str:
    sig = make_signal(region=REGION, tenant=tenant, account=account, action="BLOCK", text="ignore all rules")
    await ops.store.apply([decision_from_signal(sig, time.time())])
    return sig.decision_id


async def audit_rows(ops: Operations, target: str):
    return await ops.audit_log(ADMIN, 100, target=target)


async def test_region_scope_and_roles(env) -> None:
    tenant = f"scope-{RUN}"
    async with operations(env) as ops:
        case_id = await open_case(ops, tenant, "acct-s")
        for call in (
            ops.list_cases(OUTSIDER, CaseFilter()),
            ops.case(OUTSIDER, case_id),
            ops.account(OUTSIDER, tenant, "acct-s"),
            ops.block_rates(OUTSIDER, "tenant"),
        ):
            with pytest.raises(PermissionDenied, match=f"no access to region {REGION}"):
                await call
        with pytest.raises(PermissionDenied, match=f"no access to region {REGION}"):
            await ops.review(OUTSIDER, case_id, "dismiss", "looks fine")
        cases, _ = await ops.list_cases(VIEWER, CaseFilter(tenant=tenant))
        assert [c.case_id for c in cases] == [case_id]
        view = await ops.case(VIEWER, case_id)
        assert view.case.case_id == case_id and view.case.snippet  # STANDARD: a redacted snippet

        with pytest.raises(PermissionDenied, match="role viewer may not do"):
            await ops.issue(VIEWER, kind="SUSPEND_ACCOUNT", tenant=tenant, account="acct-s", reason="abuse")
        with pytest.raises(PermissionDenied, match="needs admin"):
            await ops.issue(REVIEWER, kind="KILL_SWITCH", tenant=tenant, reason="incident")
        with pytest.raises(PermissionDenied):
            await ops.review(VIEWER, case_id, "approve", "confirmed")
        rows = await audit_rows(ops, case_id)
        assert [(r.operator, r.what, r.ok) for r in rows] == [
            ("vera", "review.approve", False),
            ("otto", "review.dismiss", False),
        ]
        denied = await audit_rows(ops, "acct-s")  # the target of a refused issue is what was named
        assert denied == []  # raw ids are never a target: the case id, pseudonym, tenant or model is
        kill = await ops.issue(ADMIN, kind="KILL_SWITCH", tenant=tenant, reason="incident 42")
        assert kill.kind == "KILL_SWITCH" and kill.actor == "console:adam"
        await ops.revoke(ADMIN, kill.action_id, "incident over")


async def test_reviewer_suspends_from_a_case(env) -> None:
    kafka = env[0]
    tenant = f"susp-{RUN}"
    async with operations(env) as ops:
        case_id = await open_case(ops, tenant, "acct-1")
        view = await ops.case(REVIEWER, case_id)
        pseudonym = view.case.account_hmac
        assert pseudonym == KEY.account(tenant, "acct-1")
        action = await ops.issue(
            REVIEWER,
            kind="SUSPEND_ACCOUNT",
            tenant=tenant,
            account_hmac=pseudonym,
            reason="repeated jailbreaks",
            ttl_seconds=3600,
            evidence=[case_id],
            case_id=case_id,
        )
        assert action.actor == "console:rita" and action.account_hmac == pseudonym and action.expires_at
        assert (await ops.case(REVIEWER, case_id)).case.status == CASE_ACTIONED

        records = [r for r in await read_topic(kafka.bootstrap, ACTIONS) if r.value is not None]
        ours = [enforcement_pb2.EnforcementAction.FromString(r.value) for r in records]
        ours = [(r, a) for r, a in zip(records, ours, strict=True) if a.action_id == action.action_id]
        assert len(ours) == 1
        record, produced = ours[0]
        assert record.key.decode() == action_key(produced.kind, produced.target)
        assert list(produced.evidence) == [case_id] and produced.actor == "console:rita"

        rows = await audit_rows(ops, case_id)
        assert [(r.operator, r.role, r.what, r.reason, r.ok) for r in rows] == [
            ("rita", "reviewer", "action.issue.suspend_account", "repeated jailbreaks", True)
        ]
        audits = [
            signals_pb2.SafeguardSignal.FromString(r.value)
            for r in await eventually(
                lambda: _audit_signals(kafka.bootstrap, action.action_id), what="the audit signal"
            )
        ]
        assert [(s.audit.actor, s.audit.role, s.audit.method, s.audit.allowed) for s in audits] == [
            ("console:rita", "reviewer", "IssueAction", True)
        ]

        # The account page: the suspension is live, and the history read back from the topic has it.
        acct = await eventually(
            lambda: _with_history(ops, tenant, "acct-1", 1), what="the issued action in the history"
        )
        assert [a.action_id for a in acct.live] == [action.action_id]
        assert [(h.event, h.action.action_id) for h in acct.history] == [("issued", action.action_id)]
        assert [c.case_id for c in acct.cases] == [case_id]
        by_pseudonym = await ops.account(VIEWER, tenant, pseudonym)
        assert by_pseudonym.account_hmac == pseudonym

        # Unsuspend.
        await ops.revoke(REVIEWER, action.action_id, "appeal granted")
        acct = await eventually(lambda: _with_history(ops, tenant, "acct-1", 2), what="the revoke in the history")
        assert acct.live == []
        assert [(h.event, h.action.action_id) for h in acct.history] == [
            ("revoked", action.action_id),
            ("issued", action.action_id),
        ]
        # Each row says who did it and why: the revoke its own, from the signed tombstone.
        assert [(h.actor, h.reason) for h in acct.history] == [
            ("console:rita", "appeal granted"),
            ("console:rita", "repeated jailbreaks"),
        ]
        # A second revoke changes nothing and keeps the first one's actor and reason.
        again = await ops.revoke(ADMIN, action.action_id, "again")
        assert not again.revoked
        assert (again.original.actor, again.original.reason) == ("console:rita", "appeal granted")
        with pytest.raises(NotFound):
            await ops.revoke(REVIEWER, "no-such-action", "again")

    # A second monitor re-reads the topic from the start: nothing is added twice.
    async with operations(env) as again:
        await asyncio.sleep(1.0)
        acct = await again.account(VIEWER, tenant, "acct-1")
        assert [h.event for h in acct.history] == ["revoked", "issued"]


async def test_review_verdicts_and_bad_input(env) -> None:
    tenant = f"review-{RUN}"
    async with operations(env) as ops:
        first = await open_case(ops, tenant, "acct-r")
        second = await open_case(ops, tenant, "acct-r")
        assert (await ops.review(REVIEWER, first, "dismiss", "false positive: a novel")).status == CASE_DISMISSED
        assert (await ops.review(REVIEWER, second, "approve", "correct block")).status == CASE_ACTIONED
        view = await ops.case(VIEWER, first)
        assert [c.case_id for c in view.account_cases] == [second]
        assert [(a.what, a.reason) for a in view.audit] == [("review.dismiss", "false positive: a novel")]
        with pytest.raises(InvalidArgument, match="verdict must be one of approve, dismiss"):
            await ops.review(REVIEWER, first, "maybe", "x")
        with pytest.raises(InvalidArgument, match="a note is required"):
            await ops.review(REVIEWER, first, "approve", "  ")
        with pytest.raises(NotFound):
            await ops.review(REVIEWER, "no-such-case", "approve", "x")
        with pytest.raises(InvalidArgument, match="kind must be one of"):
            await ops.issue(ADMIN, kind="DELETE_TENANT", tenant=tenant, reason="x")
        with pytest.raises(InvalidArgument, match="reason is required"):
            await ops.issue(REVIEWER, kind="SUSPEND_ACCOUNT", tenant=tenant, account="acct-r", reason="")
        with pytest.raises(InvalidArgument, match="SUSPEND_ACCOUNT needs account"):
            await ops.issue(REVIEWER, kind="SUSPEND_ACCOUNT", tenant=tenant, reason="why")
        with pytest.raises(InvalidArgument, match="pseudonym"):
            await ops.issue(REVIEWER, kind="SUSPEND_ACCOUNT", tenant=tenant, account_hmac="not-hex", reason="why")
        with pytest.raises(InvalidArgument, match="by minute|'category' or 'tenant'"):
            await ops.block_rates(VIEWER, "account")
        with pytest.raises(InvalidArgument, match="page_token"):
            await ops.list_cases(VIEWER, CaseFilter(), 10, "garbage")
    async with operations(env, key=None) as keyless:
        with pytest.raises(InvalidArgument, match="no regional key"):
            await keyless.account(VIEWER, tenant, "acct-r")
        acct = await keyless.account(VIEWER, tenant, KEY.account(tenant, "acct-r"))
        assert len(acct.cases) == 2


async def test_reverse_an_automated_action(env) -> None:
    kafka = env[0]
    tenant = f"auto-{RUN}"
    pseudonym = KEY.account(tenant, "acct-a")
    automated = enforcement_pb2.EnforcementAction(
        action_id=uuid.uuid4().hex,
        kind=enforcement_pb2.ENFORCEMENT_KIND_THROTTLE_ACCOUNT,
        target=enforcement_pb2.EnforcementTarget(tenant=tenant, account_hmac=pseudonym),
        actor="automation",
        reason="rule jb-throttle: 3 BLOCK jailbreak in 10 min",
        requests_per_minute=2,
        evidence=["d1", "d2", "d3"],
        region=REGION,
    )
    automated.issued_at.GetCurrentTime()
    key = action_key(automated.kind, automated.target).encode()
    sink = KafkaActionSink(kafka.bootstrap, keys=DEV_KEYS, idempotence=False, timeout_s=10, client_id="ops-test-rules")
    await sink.send(ACTIONS, key, automated.SerializeToString())
    await sink.close()
    async with operations(env) as ops:
        live = await ops.live_actions(VIEWER, tenant)
        assert [(a.action_id, a.automated, a.evidence) for a in live] == [
            (automated.action_id, True, ("d1", "d2", "d3"))
        ]
        await ops.revoke(REVIEWER, automated.action_id, "rule misfired on a red-team account")
        assert await ops.live_actions(VIEWER, tenant) == []
        tombstones = [r for r in await read_topic(kafka.bootstrap, ACTIONS) if r.key == key and r.value is None]
        assert len(tombstones) == 1
        acct = await eventually(lambda: _with_history(ops, tenant, pseudonym, 2), what="history of the reversal")
        assert [(h.event, h.action.actor) for h in acct.history] == [
            ("revoked", "automation"),
            ("issued", "automation"),
        ]


async def test_block_rates(env) -> None:
    tenant = f"rates-{RUN}"
    async with operations(env) as ops:
        now = time.time()
        signals = [make_signal(region=REGION, tenant=tenant, action="BLOCK", time_s=now) for _ in range(3)]
        signals += [make_signal(region=REGION, tenant=tenant, action="ALLOW", time_s=now) for _ in range(5)]
        await ops.store.apply([decision_from_signal(s, now) for s in signals])
        points = [p for p in await ops.block_rates(VIEWER, "tenant", 5) if p.key == tenant]
        assert [(p.blocked, p.total) for p in points] == [(3, 8)]
        by_category = {p.key: (p.blocked, p.total) for p in await ops.block_rates(VIEWER, "category", 5)}
        assert by_category["jailbreak"][0] >= 3


async def _audit_signals(bootstrap: str, action_id: str) -> list:
    out = []
    for r in await read_topic(bootstrap, SIGNALS):
        sig = signals_pb2.SafeguardSignal.FromString(r.value)
        if sig.surface == signals_pb2.SURFACE_ADMIN and sig.audit.action_id == action_id:
            out.append(r)
    return out


async def _with_history(ops: Operations, tenant: str, account: str, n: int):
    view = await ops.account(VIEWER, tenant, account)
    return view if len(view.history) >= n else None


async def test_a_console_force_block_names_a_category_scored_here(env) -> None:
    """The console's catalog: categories the classifier scored in this region's cases
    (the dropdown's options); a typo is refused naming them, nothing is produced."""
    tenant = f"force-{RUN}"
    async with operations(env) as ops:
        await open_case(ops, tenant, "acct-f")
        assert "jailbreak" in await ops.categories(VIEWER)
        with pytest.raises(InvalidArgument, match="unknown category 'jailbrek'.*jailbreak"):
            await ops.issue(ADMIN, kind="FORCE_BLOCK_CATEGORY", tenant=tenant, category="jailbrek", reason="typo")
        assert not [a for a in await ops.live_actions(VIEWER) if a.category == "jailbrek"]
        forced = await ops.issue(ADMIN, kind="FORCE_BLOCK_CATEGORY", tenant=tenant, category="jailbreak", reason="r")
        assert forced.category == "jailbreak"
        await ops.revoke(ADMIN, forced.action_id, "done")


async def test_a_console_action_names_a_tenant_and_a_model_seen_here(env) -> None:
    """Tenants and models of this region's decisions (the forms' suggestions); a typo
    is refused naming them, nothing is produced."""
    tenant = f"names-{RUN}"
    async with operations(env) as ops:
        await open_case(ops, tenant, "acct-n")
        tenants, models = await ops.names(VIEWER)
        assert tenant in tenants and "model-a" in models
        with pytest.raises(InvalidArgument, match=f"unknown tenant '{tenant}x' in region {REGION}: known are"):
            await ops.issue(ADMIN, kind="KILL_SWITCH", tenant=tenant + "x", reason="typo")
        with pytest.raises(InvalidArgument, match="unknown model 'model-x'.*model-a"):
            await ops.issue(ADMIN, kind="KILL_SWITCH", tenant="", model="model-x", reason="typo")
        assert not [a for a in await ops.live_actions(VIEWER) if a.tenant == tenant + "x" or a.model == "model-x"]
        killed = await ops.issue(ADMIN, kind="KILL_SWITCH", tenant=tenant, reason="incident")
        await ops.revoke(ADMIN, killed.action_id, "done")
