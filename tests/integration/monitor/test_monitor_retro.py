"""Retro-screening and the overview's aggregates against a real PostgreSQL (and a
real Tansu broker for the rules' actions and the monitor process).

Proves: a retro follow-up (SURFACE_RETRO_SCREEN) counts as no decision (no bucket,
no tenant minute, no case), is written onto the decision it re-screened and counts
as a retro catch per tenant and per account; the overview's minutes hold verdict
completeness and mergeable latency buckets, and a replay changes nothing; a
ZERO_RETENTION decision is stored without a request id; expired decisions are
purged. A retro-catch rule issues one action after N catches (evidence = the
follow-ups), counts neither blocks nor re-screens that caught nothing, respects
dry-run and the per-tenant cap, and a decision rule does not count retro catches.
The monitor process exports retro catches by tenant and decisions by verdict.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import classifier_pb2, enforcement_pb2, safeguards_pb2, signals_pb2

from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.common.errors import NotFound
from services.monitor.decisions import NO_VERDICT, PARTIAL, decision_from_signal
from services.monitor.rules import RuleEngine, RuleMetrics, RuleSet, parse_rules
from services.monitor.store import Retention, Store, minute_of, utc
from tests.integration.monitor.monitor_support import make_signal, pg_database, read_topic, retro_signal
from tests.integration.monitor.test_monitor_service import Monitor, db_rows, encoded, produce, wait_for
from tests.support import EmbeddedKafka
from tools.run_mesh import create_topics

REGION = "mon-1"  # the helpers of test_monitor_service produce to this region's topic
HOUR = 3600.0
V = classifier_pb2


@pytest.fixture(scope="module")
def db_url():
    with pg_database("monretro") as url:
        yield url


@pytest.fixture(scope="module")
def kafka():
    k = EmbeddedKafka().start()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
async def store(db_url):
    s = Store(db_url, REGION, Retention(standard_s=10 * HOUR, metadata_only_s=5 * HOUR, zero_retention_s=1 * HOUR))
    await s.start()
    conn = await asyncpg.connect(db_url)
    await conn.execute(
        "TRUNCATE monitor_processed, monitor_buckets, monitor_cases, monitor_tenant_minutes, "
        "monitor_overview_minutes, monitor_account_minutes, monitor_decisions"
    )
    await conn.close()
    yield s
    await s.close()


def signal(action="ALLOW", *, verdict=V.VERDICT_COMPLETENESS_PARTIAL, latency_s=0.02, t=None, **kw):
    """A decision as the enforcer emits it, taken on `verdict`."""
    sig = make_signal(region=REGION, action=action, time_s=time.time() if t is None else t, **kw)
    sig.verdict = verdict
    if verdict != V.VERDICT_COMPLETENESS_FULL:
        sig.verdict_reason = "deadline" if verdict == V.VERDICT_COMPLETENESS_PARTIAL else "circuit open"
        sig.answered_by = "tier1" if verdict == V.VERDICT_COMPLETENESS_PARTIAL else ""
    else:
        sig.answered_by = "encoder"
    sig.latencies.total.FromNanoseconds(int(latency_s * 1e9))
    return sig


def retro(of: signals_pb2.SafeguardSignal, *, catch: bool = True, action: str = "BLOCK", t=None):
    return retro_signal(of, region=REGION, catch=catch, action=action, time_s=t)


def decided(signals):
    return [decision_from_signal(s, 0) for s in signals]


def this_hour():
    now = utc(time.time())
    return minute_of(now) - timedelta(minutes=59), minute_of(now) + timedelta(minutes=1)


# ---- the store -------------------------------------------------------------------------------
async def test_a_retro_follow_up_counts_as_no_decision_and_updates_the_decision_it_re_screened(store) -> None:
    original = signal("ALLOW", tenant="acme", account="a-1", request_id="req-77")
    caught = retro(original)
    result = await store.apply(decided([original]))
    assert result.verdicts == {PARTIAL: 1} and result.retro_catches == {}
    result = await store.apply(decided([caught]))
    # The catch opens one review case, on the decision it re-screened (not one of its own).
    assert (result.new, result.cases) == (1, 1)
    assert result.retro_catches == {"acme": 1} and result.verdicts == {}
    case = await store.get_case(original.decision_id)
    assert case.action == safeguards_pb2.ACTION_BLOCK and case.status == 1 and case.tenant == "acme"
    assert case.account_hmac == original.account_hmac and "jailbreak" in case.categories
    with pytest.raises(NotFound):
        await store.get_case(caught.decision_id)
    assert (await store.apply(decided([caught]))).cases == 0  # redelivered: nothing new

    buckets = await store.pool.fetch("SELECT category, action, count FROM monitor_buckets")
    assert [tuple(r) for r in buckets] == [("none", safeguards_pb2.ACTION_ALLOW, 1)]  # the decision only
    tenant = await store.pool.fetch("SELECT decisions, blocked FROM monitor_tenant_minutes")
    assert [tuple(r) for r in tenant] == [(1, 0)]

    d = await store.get_decision(original.decision_id)
    assert (d.action, d.verdict, d.verdict_reason, d.answered_by) == (
        safeguards_pb2.ACTION_ALLOW, PARTIAL, "deadline", "tier1",
    )  # fmt: skip
    assert d.request_id == "req-77" and d.surface == signals_pb2.SURFACE_SCREEN_PROMPT
    assert d.latency_ms == pytest.approx(20.0)
    assert d.rescreened and d.retro_catch and d.retro_action == safeguards_pb2.ACTION_BLOCK
    assert d.retro_decision_id == caught.decision_id and d.retro_answered_by == "encoder"
    assert d.retro_reasons == (("classifier.jailbreak", "score 0.97"),)
    assert [r.decision_id for r in await store.recent_retro_catches(this_hour()[0], 10)] == [original.decision_id]


async def test_the_overview_minutes_hold_completeness_retro_catches_and_latency(store) -> None:
    start, stop = this_hour()
    t = time.time()
    batch = [signal("ALLOW", verdict=V.VERDICT_COMPLETENESS_FULL, tenant="acme", latency_s=0.008, t=t)
             for _ in range(6)]  # fmt: skip
    partial = [signal("ALLOW", tenant="acme", account=f"p-{i}", latency_s=0.008, t=t) for i in range(2)]
    none = signal("ALLOW", verdict=V.VERDICT_COMPLETENESS_NONE, tenant="beta", account="n-1", latency_s=0.4, t=t)
    blocks = [signal("BLOCK", verdict=V.VERDICT_COMPLETENESS_FULL, tenant="beta", account="b-1", t=t)
              for _ in range(3)]  # fmt: skip
    follow_ups = [retro(partial[0], t=t), retro(none, t=t), retro(partial[1], catch=False, action="ALLOW", t=t)]
    everything = decided(batch + partial + [none] + blocks + follow_ups)
    first = await store.apply(everything)
    assert first.verdicts == {1: 9, PARTIAL: 2, NO_VERDICT: 1}
    snapshot = [tuple(r) for r in await store.pool.fetch("SELECT * FROM monitor_overview_minutes ORDER BY tenant")]
    assert (await store.apply(everything)).new == 0  # a replay changes nothing
    assert [tuple(r) for r in await store.pool.fetch("SELECT * FROM monitor_overview_minutes ORDER BY tenant")] == (
        snapshot
    )

    minutes = await store.overview_minutes(start, stop)
    assert len(minutes) == 1
    (m,) = minutes.values()
    assert (m.decisions, m.blocked, m.full, m.partial, m.no_verdict) == (12, 3, 9, 2, 1)
    assert (m.retro_screens, m.retro_catches) == (3, 2)
    assert sum(m.latency) == 12 and 5 < m.p50_ms <= 10 and 300 < m.p99_ms <= 500

    by_blocks = await store.top_tenants(start, stop, "blocked", 10)
    assert [(r.tenant, r.blocked, r.retro_catches) for r in by_blocks] == [("beta", 3, 1)]
    by_retro = await store.top_tenants(start, stop, "retro_catches", 10)
    assert [(r.tenant, r.retro_catches) for r in by_retro] == [("acme", 1), ("beta", 1)]
    accounts = await store.top_accounts(start, stop, "retro_catches", 10)
    assert {r.account_hmac for r in accounts} == {partial[0].account_hmac, none.account_hmac}
    assert [(r.account_hmac, r.blocked) for r in await store.top_accounts(start, stop, "blocked", 10)] == [
        (blocks[0].account_hmac, 3)
    ]
    # Stored: the decisions an operator may open (partial / none; blocks with a case), not the plain ALLOWs.
    stored = {r["decision_id"] for r in await store.pool.fetch("SELECT decision_id FROM monitor_decisions")}
    assert stored == {s.decision_id for s in partial + [none] + blocks}
    assert [d.decision_id for d in await store.account_decisions("beta", none.account_hmac, 10)] == [none.decision_id]


async def test_zero_retention_decisions_keep_no_request_id_and_expire_with_their_policy(store) -> None:
    zero = signal("ALLOW", tenant="zed", data_policy="ZERO_RETENTION", request_id="must-not-stay")
    await store.apply(decided([zero, retro(zero)]))
    d = await store.get_decision(zero.decision_id)
    assert d.request_id == "" and d.retro_catch
    row = await store.pool.fetchrow("SELECT * FROM monitor_decisions WHERE decision_id = $1", zero.decision_id)
    assert "must-not-stay" not in repr(dict(row))
    assert (row["expires_at"] - row["decided_at"]).total_seconds() == pytest.approx(HOUR, abs=120)
    purged = await store.purge(utc(time.time() + 2 * HOUR), bucket_retention_s=HOUR, dedupe_retention_s=HOUR)
    assert purged["decisions"] == 1
    assert await store.find_decision(zero.decision_id) is None
    assert await store.pool.fetchval("SELECT count(*) FROM monitor_overview_minutes") == 0


# ---- the retro-catch rule ---------------------------------------------------------------------
RETRO_RULES = """
rules:
  - name: retro-live
    match: {retro_catch: true, tenant: %(live)s}
    threshold: {count: 3, window_minutes: 30}
    enforce: {kind: SUSPEND_ACCOUNT, ttl_minutes: 60}
    dry_run: false
  - name: retro-dry
    match: {retro_catch: true, tenant: %(dry)s}
    threshold: {count: 2, window_minutes: 30}
    enforce: {kind: SUSPEND_ACCOUNT, ttl_minutes: 60}
    dry_run: true
  - name: blocks-live
    match: {category: jailbreak, action: BLOCK, tenant: %(live)s}
    threshold: {count: 3, window_minutes: 30}
    enforce: {kind: THROTTLE_ACCOUNT, requests_per_minute: 1, ttl_minutes: 60}
    dry_run: false
"""


async def _engine(db_url: str, kafka: EmbeddedKafka, region: str, rules: str, cap: int = 5):
    store = Store(db_url, region, Retention(HOUR, HOUR, HOUR))
    await store.start(create=False)
    registry = CollectorRegistry()
    sink = KafkaActionSink(
        kafka.bootstrap, keys=KeyRing.insecure_dev(), idempotence=False, timeout_s=5, client_id="retro-rule-test"
    )
    engine = RuleEngine(
        region=region,
        rules=RuleSet(tuple(parse_rules(rules, "retro.yaml"))),
        sink=sink,
        metrics=RuleMetrics(registry),
        max_per_tenant_hour=cap,
        case_retention_s=store.retention.for_policy,
    )
    await create_topics(kafka.bootstrap, region)
    return store, engine, registry


async def _apply(store: Store, engine: RuleEngine, signals) -> None:
    await store.apply(decided(signals), engine.after_apply)
    engine.committed()


def _in_region(region: str, signals):
    for s in signals:
        s.region = region
    return signals


async def test_n_retro_catches_suspend_the_account_once_and_nothing_else_counts(db_url, kafka) -> None:
    region = f"retro-{uuid.uuid4().hex[:6]}"
    live, dry = f"live-{region}", f"dry-{region}"
    store, engine, registry = await _engine(db_url, kafka, region, RETRO_RULES % {"live": live, "dry": dry})
    try:
        partial = [signal("ALLOW", tenant=live, account="attacker") for _ in range(5)]
        # Two catches, a re-screen that caught nothing, and two decision BLOCKs: below both thresholds.
        catches = [retro(p) for p in partial[:2]]
        blocks = [signal("BLOCK", verdict=V.VERDICT_COMPLETENESS_FULL, tenant=live, account="attacker")
                  for _ in range(2)]  # fmt: skip
        await _apply(store, engine, _in_region(region, partial + catches + blocks
                                               + [retro(partial[2], catch=False, action="ALLOW")]))  # fmt: skip
        assert await store.pool.fetchval("SELECT count(*) FROM monitor_rule_actions WHERE region = $1", region) == 0

        third = retro(partial[3])
        await _apply(store, engine, _in_region(region, [third]))
        rows = await store.pool.fetch("SELECT * FROM monitor_rule_actions WHERE region = $1", region)
        assert [(r["rule"], r["mode"]) for r in rows] == [("retro-live", "live")]
        assert sorted(rows[0]["evidence"]) == sorted(s.decision_id for s in catches + [third])
        assert await engine.flush(store.pool) == 1
        actions = [enforcement_pb2.EnforcementAction.FromString(r.value)
                   for r in await read_topic(kafka.bootstrap, f"safeguards.actions.{region}")]  # fmt: skip
        assert len(actions) == 1
        action = actions[0]
        assert action.kind == enforcement_pb2.ENFORCEMENT_KIND_SUSPEND_ACCOUNT and action.actor == "automation"
        assert action.target.account_hmac == partial[0].account_hmac and "retro-confirmed" in action.reason
        case = await store.get_case(f"rule-{action.action_id}")
        assert case.categories == ("jailbreak",) and "3 retro catches" in case.reasons[0][1]

        # A fourth catch while the suspension is live fires nothing more; the third decision
        # BLOCK fires the decision rule, which never counted the catches (evidence: blocks only).
        fourth_block = signal("BLOCK", verdict=V.VERDICT_COMPLETENESS_FULL, tenant=live, account="attacker")
        await _apply(store, engine, _in_region(region, [retro(partial[4]), fourth_block]))
        rows = await store.pool.fetch(
            "SELECT rule, evidence FROM monitor_rule_actions WHERE region = $1 ORDER BY fired_at", region
        )
        assert [r["rule"] for r in rows] == ["retro-live", "blocks-live"]
        assert sorted(rows[1]["evidence"]) == sorted(s.decision_id for s in blocks + [fourth_block])
        matches = registry.get_sample_value("safeguards_monitor_rule_matches_total", {"rule": "retro-live",
                                                                                       "mode": "live"})  # fmt: skip
        assert matches == 1
    finally:
        await engine.stop()
        await store.close()


async def test_a_dry_run_retro_rule_records_and_produces_nothing(db_url, kafka) -> None:
    region = f"retrod-{uuid.uuid4().hex[:6]}"
    live, dry = f"live-{region}", f"dry-{region}"
    store, engine, registry = await _engine(db_url, kafka, region, RETRO_RULES % {"live": live, "dry": dry})
    try:
        partial = [signal("ALLOW", tenant=dry, account="someone") for _ in range(2)]
        await _apply(store, engine, _in_region(region, partial + [retro(p) for p in partial]))
        rows = await store.pool.fetch("SELECT rule, mode, produced_at FROM monitor_rule_actions WHERE region = $1",
                                      region)  # fmt: skip
        assert [tuple(r) for r in rows] == [("retro-dry", "dry_run", None)]
        assert await engine.flush(store.pool) == 0
        assert await read_topic(kafka.bootstrap, f"safeguards.actions.{region}") == []
        # The only cases are the catches' own review cases (on the re-screened decisions).
        cases = await store.pool.fetch("SELECT case_id FROM monitor_cases WHERE region = $1", region)
        assert sorted(r["case_id"] for r in cases) == sorted(p.decision_id for p in partial)
        assert (
            registry.get_sample_value("safeguards_monitor_rule_matches_total", {"rule": "retro-dry", "mode": "dry_run"})
            == 1
        )
    finally:
        await engine.stop()
        await store.close()


async def test_the_per_tenant_cap_holds_for_retro_rules(db_url, kafka) -> None:
    region = f"retroc-{uuid.uuid4().hex[:6]}"
    live, dry = f"live-{region}", f"dry-{region}"
    store, engine, registry = await _engine(db_url, kafka, region, RETRO_RULES % {"live": live, "dry": dry}, cap=2)
    try:
        for i in range(4):  # four accounts, each with three retro catches
            partial = [signal("ALLOW", tenant=live, account=f"acct-{i}") for _ in range(3)]
            await _apply(store, engine, _in_region(region, partial + [retro(p) for p in partial]))
        assert (
            await store.pool.fetchval(
                "SELECT count(*) FROM monitor_rule_actions WHERE region = $1 AND mode = 'live'", region
            )
            == 2
        )
        assert registry.get_sample_value("safeguards_monitor_rule_suppressed_total", {"rule": "retro-live"}) == 2
    finally:
        await engine.stop()
        await store.close()


# ---- the monitor process ------------------------------------------------------------------------
def test_the_monitor_exports_retro_catches_by_tenant_and_decisions_by_verdict(db_url, kafka, tmp_path) -> None:
    asyncio.run(create_topics(kafka.bootstrap, REGION))
    mon = Monitor(kafka, db_url, tmp_path).start()
    try:
        tenant = f"metrics-{uuid.uuid4().hex[:6]}"
        partial = signal("ALLOW", tenant=tenant, account="m-1")
        none = signal("ALLOW", tenant=tenant, account="m-2", verdict=V.VERDICT_COMPLETENESS_NONE)
        full = signal("ALLOW", tenant=tenant, verdict=V.VERDICT_COMPLETENESS_FULL)
        caught = retro(partial)
        asyncio.run(produce(kafka.bootstrap, encoded([partial, none, full, caught])))

        def metric(name, **labels):
            return mon.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

        wait_for(lambda: metric("safeguards_monitor_retro_catches_total", tenant=tenant) == 1, what="the catch")
        assert metric("safeguards_monitor_decisions_by_verdict_total", verdict="partial") >= 1
        assert metric("safeguards_monitor_decisions_by_verdict_total", verdict="none") >= 1
        assert metric("safeguards_monitor_decisions_by_verdict_total", verdict="full") >= 1
        rows = asyncio.run(
            db_rows(db_url, "SELECT retro_catch FROM monitor_decisions WHERE decision_id = $1", partial.decision_id)
        )
        assert [r["retro_catch"] for r in rows] == [True]
    finally:
        mon.stop()
