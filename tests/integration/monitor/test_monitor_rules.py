"""Automated enforcement rules in a real monitor process: real Tansu broker, real
PostgreSQL, rules from YAML files.

Proves: a dry-run rule records its match (row + metric) and produces nothing (the
actions topic, read from the start, is empty); a live rule produces exactly one
EnforcementAction (actor=automation, evidence = the decision ids, keyed as the
enforcer keys it, with an expiry from the ttl) and opens a review case after N BLOCK
signals, and neither replaying those signals nor more BLOCKs while the action is live
produce a second one; the per-tenant hourly cap holds and is counted; a broken rules
file is rejected while the last good rules stay live; an action fired while Kafka
is down waits in the outbox and is produced once when Kafka is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2

from services.actions.keys import action_key
from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.monitor.decisions import decision_from_signal
from services.monitor.rules import RuleEngine, RuleMetrics, RuleSet, parse_rules
from services.monitor.store import Retention, Store
from tests.integration.monitor.monitor_support import KEY, make_signal, pg_database, read_topic
from tests.integration.monitor.test_monitor_service import Monitor, db_rows, encoded, produce, wait_for
from tests.support import EmbeddedKafka
from tools.run_mesh import create_topics

REGION = "mon-1"  # the helpers of test_monitor_service produce to this region's topic
ACTIONS = f"safeguards.actions.{REGION}"
RUN = uuid.uuid4().hex[:6]
T_DRY, T_LIVE, T_CAP = f"dry-{RUN}", f"live-{RUN}", f"cap-{RUN}"
CAP = 2

RULES = f"""
rules:
  - name: dry-jb
    match: {{category: jailbreak, action: BLOCK, tenant: {T_DRY}}}
    threshold: {{count: 3, window_minutes: 10}}
    enforce: {{kind: SUSPEND_ACCOUNT, ttl_minutes: 60}}
    dry_run: true
  - name: live-jb
    match: {{category: jailbreak, action: BLOCK, tenant: {T_LIVE}}}
    threshold: {{count: 3, window_minutes: 10}}
    enforce: {{kind: THROTTLE_ACCOUNT, requests_per_minute: 2, ttl_minutes: 30}}
    dry_run: false
  - name: cap-jb
    match: {{category: jailbreak, action: BLOCK, tenant: {T_CAP}}}
    threshold: {{count: 2, window_minutes: 10}}
    enforce: {{kind: SUSPEND_ACCOUNT, ttl_minutes: 60}}
    dry_run: false
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor-rules")
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    kafka = EmbeddedKafka().start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        with pg_database("monrules") as db_url:
            mon = Monitor(kafka, db_url, tmp)
            mon.args += [
                "--rules", str(rules_dir), "--rules-poll-seconds", "0.2",
                "--max-automated-actions-per-tenant-per-hour", str(CAP), "--actions-flush-seconds", "0.3",
            ]  # fmt: skip
            mon.start()
            try:
                yield kafka, db_url, mon, rules_dir
            finally:
                mon.stop()
    finally:
        kafka.close()


async def read_actions(bootstrap: str, topic: str = ACTIONS) -> list[tuple[bytes, enforcement_pb2.EnforcementAction]]:
    """Every record of an actions topic, from the start to its current end."""
    return [(r.key, enforcement_pb2.EnforcementAction.FromString(r.value)) for r in await read_topic(bootstrap, topic)]


def blocks(tenant: str, account: str, n: int):
    return [make_signal(region=REGION, tenant=tenant, account=account, action="BLOCK") for _ in range(n)]


def rule_rows(db_url: str, tenant: str):
    return asyncio.run(
        db_rows(db_url, "SELECT * FROM monitor_rule_actions WHERE tenant = $1 ORDER BY fired_at", tenant)
    )


def metric(mon: Monitor, name: str, **labels) -> float:
    return mon.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_dry_run_rule_records_its_match_and_produces_nothing(env) -> None:
    kafka, db_url, mon, _ = env
    sigs = blocks(T_DRY, "acct-dry", 3)
    asyncio.run(produce(kafka.bootstrap, encoded(sigs)))
    wait_for(lambda: len(rule_rows(db_url, T_DRY)) == 1, what="the dry-run match stored")
    row = rule_rows(db_url, T_DRY)[0]
    assert (row["rule"], row["mode"], row["produced_at"]) == ("dry-jb", "dry_run", None)
    assert sorted(row["evidence"]) == sorted(s.decision_id for s in sigs)
    assert row["account_hmac"] == KEY.account(T_DRY, "acct-dry")
    assert metric(mon, "safeguards_monitor_rule_matches_total", rule="dry-jb", mode="dry_run") == 1
    time.sleep(1.0)  # more than one outbox flush interval
    assert asyncio.run(read_actions(kafka.bootstrap)) == []
    cases = asyncio.run(db_rows(db_url, "SELECT * FROM monitor_cases WHERE case_id LIKE 'rule-%'"))
    assert cases == []  # a dry run opens no case either


def test_a_live_rule_produces_one_action_with_evidence_and_a_replay_produces_no_second(env) -> None:
    kafka, db_url, mon, _ = env
    account_hmac = KEY.account(T_LIVE, "acct-live")
    # Two blocks are below the threshold; an ALLOW and another account's blocks don't count.
    first = blocks(T_LIVE, "acct-live", 2)
    other = blocks(T_LIVE, "acct-other", 2)
    allow = [make_signal(region=REGION, tenant=T_LIVE, account="acct-live", action="ALLOW")]
    asyncio.run(produce(kafka.bootstrap, encoded(first + other + allow)))
    wait_for(lambda: mon.consumed("new") >= 3 + 5, what="the first signals consumed")
    time.sleep(0.5)
    assert rule_rows(db_url, T_LIVE) == []
    third = blocks(T_LIVE, "acct-live", 1)
    asyncio.run(produce(kafka.bootstrap, encoded(third)))
    wait_for(lambda: any(r["produced_at"] for r in rule_rows(db_url, T_LIVE)), what="the action produced")

    actions = [(k, a) for k, a in asyncio.run(read_actions(kafka.bootstrap)) if a.target.tenant == T_LIVE]
    assert len(actions) == 1
    key, action = actions[0]
    assert action.actor == "automation" and "live-jb" in action.reason
    assert action.kind == enforcement_pb2.ENFORCEMENT_KIND_THROTTLE_ACCOUNT and action.requests_per_minute == 2
    assert action.target.account_hmac == account_hmac and action.region == REGION
    assert sorted(action.evidence) == sorted(s.decision_id for s in first + third)
    assert key == action_key(action.kind, action.target).encode()
    ttl = action.expires_at.ToSeconds() - action.issued_at.ToSeconds()
    assert 30 * 60 - 1 <= ttl <= 30 * 60 + 1 and abs(action.issued_at.ToSeconds() - time.time()) < 60
    case = asyncio.run(db_rows(db_url, "SELECT * FROM monitor_cases WHERE case_id = $1", f"rule-{action.action_id}"))
    assert len(case) == 1 and case[0]["account_hmac"] == account_hmac and case[0]["status"] == 1
    assert metric(mon, "safeguards_monitor_rule_matches_total", rule="live-jb", mode="live") == 1

    # Replay every signal so far, and add fresh blocks while the action is live.
    duplicates = mon.consumed("duplicate")
    asyncio.run(produce(kafka.bootstrap, encoded(first + other + allow + third)))
    more = blocks(T_LIVE, "acct-live", 3)
    asyncio.run(produce(kafka.bootstrap, encoded(more)))
    wait_for(lambda: mon.consumed("duplicate") >= duplicates + 6, what="the replay consumed")
    wait_for(
        lambda: asyncio.run(
            db_rows(db_url, "SELECT 1 FROM monitor_processed WHERE decision_id = $1", more[-1].decision_id)
        ),
        what="the fresh blocks consumed",
    )
    time.sleep(1.0)  # more than one outbox flush interval
    assert len(rule_rows(db_url, T_LIVE)) == 1
    assert [a for _, a in asyncio.run(read_actions(kafka.bootstrap)) if a.target.tenant == T_LIVE] == [action]
    assert metric(mon, "safeguards_monitor_rule_matches_total", rule="live-jb", mode="live") == 1


def test_the_per_tenant_cap_holds(env) -> None:
    kafka, db_url, mon, _ = env
    accounts = [f"acct-cap-{i}" for i in range(CAP + 2)]
    for account in accounts:
        asyncio.run(produce(kafka.bootstrap, encoded(blocks(T_CAP, account, 2))))
    wait_for(
        lambda: metric(mon, "safeguards_monitor_rule_suppressed_total", rule="cap-jb") == 2,
        what="two firings suppressed",
    )
    rows = rule_rows(db_url, T_CAP)
    assert len(rows) == CAP
    wait_for(lambda: all(r["produced_at"] for r in rule_rows(db_url, T_CAP)), what="the capped actions produced")
    suspended = [a for _, a in asyncio.run(read_actions(kafka.bootstrap)) if a.target.tenant == T_CAP]
    assert len(suspended) == CAP
    assert {a.kind for a in suspended} == {enforcement_pb2.ENFORCEMENT_KIND_SUSPEND_ACCOUNT}
    assert len({a.target.account_hmac for a in suspended}) == CAP


def test_a_broken_rules_file_keeps_the_last_good_rules_live(env) -> None:
    kafka, db_url, mon, rules_dir = env
    loads_ok = metric(mon, "safeguards_monitor_rules_loads_total", result="ok")
    (rules_dir / "rules.yaml").write_text(RULES.replace("threshold: {count: 3", "threshold: {cuont: 3", 1))
    wait_for(
        lambda: metric(mon, "safeguards_monitor_rules_loads_total", result="error") >= 1, what="the bad file rejected"
    )
    assert metric(mon, "safeguards_monitor_rules_loads_total", result="ok") == loads_ok
    assert metric(mon, "safeguards_monitor_rules", mode="live") == 2
    # The live rule still fires for a new account.
    asyncio.run(produce(kafka.bootstrap, encoded(blocks(T_LIVE, "acct-after-bad-file", 3))))
    hmac = KEY.account(T_LIVE, "acct-after-bad-file")
    wait_for(
        lambda: any(r["account_hmac"] == hmac and r["produced_at"] for r in rule_rows(db_url, T_LIVE)),
        what="the last good rule fired",
    )


def test_an_action_fired_while_kafka_is_down_waits_in_the_outbox(env) -> None:
    _, db_url, _, _ = env
    asyncio.run(_outbox(db_url))


async def _outbox(db_url: str) -> None:
    region, tenant = f"out-{RUN}", f"out-{RUN}"
    topic = f"safeguards.actions.{region}"
    kafka = EmbeddedKafka()  # not started yet: Kafka is down
    store = Store(db_url, region, Retention(3600, 3600, 3600))
    await store.start(create=False)
    registry = CollectorRegistry()
    rule = parse_rules(
        "rules:\n  - name: live-jb\n    match: {category: jailbreak}\n    threshold: {count: 3, window_minutes: 10}\n"
        "    enforce: {kind: SUSPEND_ACCOUNT, ttl_minutes: 5}\n    dry_run: false\n",
        "outbox.yaml",
    )[0]
    assert rule.name == "live-jb" and not rule.dry_run
    sink = KafkaActionSink(
        kafka.bootstrap, keys=KeyRing.insecure_dev(), idempotence=False, timeout_s=1.5, client_id="outbox-test"
    )
    engine = RuleEngine(
        region=region,
        rules=RuleSet((rule,)),
        sink=sink,
        metrics=RuleMetrics(registry),
        max_per_tenant_hour=5,
        case_retention_s=store.retention.for_policy,
    )
    try:
        decisions = [decision_from_signal(s, time.time()) for s in blocks(tenant, "acct-out", 3)]
        assert (await store.apply(decisions, engine.after_apply)).new == 3
        engine.committed()
        assert await engine.flush(store.pool) == 0  # Kafka down: nothing acknowledged, nothing lost
        assert registry.get_sample_value("safeguards_monitor_rule_actions_pending") == 1
        assert registry.get_sample_value("safeguards_monitor_rule_produce_errors_total") >= 1

        kafka.start()
        await create_topics(kafka.bootstrap, region)
        assert await engine.flush(store.pool) == 1
        assert await engine.flush(store.pool) == 0
        assert registry.get_sample_value("safeguards_monitor_rule_actions_pending") == 0
        # A replay of the batch (e.g. offsets not committed before a crash) fires nothing.
        assert (await store.apply(decisions, engine.after_apply)).new == 0
        engine.committed()
        assert await engine.flush(store.pool) == 0
        actions = await read_actions(kafka.bootstrap, topic)
        assert len(actions) == 1
        assert sorted(actions[0][1].evidence) == sorted(d.decision_id for d in decisions)
        assert (
            registry.get_sample_value("safeguards_monitor_rule_matches_total", {"rule": "live-jb", "mode": "live"}) == 1
        )
    finally:
        await engine.stop()
        await store.close()
        kafka.close()
