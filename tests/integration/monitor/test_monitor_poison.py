"""Records PostgreSQL refuses, and a store that cannot take the consumer's writes:
the monitor as a real process (real Tansu broker, real PostgreSQL, real gRPC health).

Proves (issue 14, item 3 and the stuck store):
- a signal with NUL characters (`model = "cla\\x00ude"`, the issue's repro) and one
  with an over-long account no longer stop the consumer: every later decision is
  stored, the NUL one with the NUL removed, and the offsets are committed;
- a record PostgreSQL refuses (a real CHECK constraint) is bisected out of its
  batch and parked as a dead letter (counted, the dead_letters alert fires, content
  cut to its data policy) while the rest of the batch is stored and committed; after
  the fix, `python -m services.monitor.deadletters replay` brings it back and the
  alert resolves;
- a store that refuses every write (its table renamed away) or stalls it (a lock
  held) is not poison: nothing is parked, the batch is retried, the consumer reports
  itself stuck (gauge, health NOT_SERVING, the consumer_stuck alert), and all of it
  clears once the table is back, with every decision stored once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
import uuid

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.monitor.monitor_support import make_signal, pg_database
from tests.support import ROOT, EmbeddedKafka, ServiceProcess, free_port
from tools.run_mesh import create_topics

REGION = "poison-1"
TOPIC = f"safeguards.signals.{REGION}"
STUCK_S = 2.0
MARKER = "quokka-" + uuid.uuid4().hex[:8]  # content of a ZERO_RETENTION signal: never kept


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("poison")
    kafka = EmbeddedKafka().start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        with pg_database("monpoison") as db_url:
            metrics_port = free_port()
            group = f"mon-poison-{uuid.uuid4().hex[:6]}"
            mon = ServiceProcess(
                "services.monitor",
                [
                    "--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                    "--region", REGION, "--kafka-bootstrap", kafka.bootstrap, "--database-url", db_url,
                    "--group-id", group, "--batch-wait-ms", "50", "--spool-dir", str(tmp / "spool"),
                    "--drain-grace-seconds", "2", "--consumer-stuck-seconds", str(STUCK_S),
                    "--alerts-interval-seconds", "0.5", "--alert-resolve-seconds", "0",
                ],
            ).start(timeout=60)  # fmt: skip
            try:
                yield {"kafka": kafka, "db": db_url, "mon": mon, "metrics": metrics_port, "group": group}
            finally:
                mon.stop()
    finally:
        kafka.close()


# ---- helpers ---------------------------------------------------------------------------------------
async def produce(bootstrap: str, signals) -> dict[int, int]:
    """Produce the signals; returns partition -> the offset after the last one written."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(TOPIC, s.SerializeToString(), key=s.tenant.encode() or b"t") for s in signals]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*sent):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


async def sql(db_url: str, query: str, *args):
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def q(env, query: str, *args):
    return asyncio.run(sql(env["db"], query, *args))


def processed(env, ids) -> int:
    return q(env, "SELECT count(*) AS n FROM monitor_processed WHERE decision_id = ANY($1)", list(ids))[0]["n"]


def wait_for(predicate, timeout: float = 45.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(env, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{env['metrics']}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def health(env) -> int:
    with grpc.insecure_channel(env["mon"].address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def firing(env, kind: str) -> int:
    return q(env, "SELECT count(*) AS n FROM monitor_alerts WHERE kind = $1 AND state = 'firing'", kind)[0]["n"]


async def committed_past(bootstrap: str, group: str, ends: dict[int, int]) -> bool:
    """Whether the group's committed offsets passed every record of `ends` (partition -> offset)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        done = {p: await consumer.committed(TopicPartition(TOPIC, p)) or 0 for p in ends}
        return all(done[p] >= end for p, end in ends.items())
    finally:
        await consumer.stop()


def committed(env, ends: dict[int, int]) -> bool:
    return asyncio.run(committed_past(env["kafka"].bootstrap, env["group"], ends))


def good(n: int, tenant: str = "acme"):
    return [make_signal(region=REGION, tenant=tenant, action="BLOCK") for _ in range(n)]


# ---- poison records ------------------------------------------------------------------------------------
def test_a_nul_in_a_field_and_an_overlong_account_no_longer_stop_the_consumer(env) -> None:
    nul = make_signal(region=REGION, tenant="acme", model="model-x")
    nul.model = "cla\x00ude"  # the repro: PostgreSQL text cannot hold NUL
    nul.reasons[0].detail = "score\x00 0.97"
    long_account = make_signal(region=REGION, tenant="acme")
    long_account.account_hmac = uuid.uuid4().hex * 400  # ~13 kB: no pseudonym is that long
    later = good(5)
    ends = asyncio.run(produce(env["kafka"].bootstrap, [nul, long_account, *later]))
    wait_for(lambda: processed(env, [s.decision_id for s in (nul, *later)]) == 6, what="the later decisions")
    assert processed(env, [long_account.decision_id]) == 0  # refused at the edge as invalid, not stored
    models = {r["model"] for r in q(env, "SELECT DISTINCT model FROM monitor_buckets WHERE tenant = 'acme'")}
    assert "claude" in models
    wait_for(lambda: committed(env, ends), what="offsets committed")
    assert q(env, "SELECT count(*) AS n FROM monitor_dead_letters")[0]["n"] == 0


def test_a_record_postgresql_refuses_is_parked_the_rest_applied_and_replayed_after_the_fix(env) -> None:
    # A real refusal by PostgreSQL (SQLSTATE 23514): what any value the edge lets through but a
    # column, a constraint or an index will not take looks like to the consumer.
    q(env, "ALTER TABLE monitor_buckets ADD CONSTRAINT no_poison CHECK (model <> 'poison-model')")
    try:
        poison = [make_signal(region=REGION, tenant="acme", model="poison-model") for _ in range(2)]
        zero = make_signal(region=REGION, tenant="zero", model="poison-model", data_policy="ZERO_RETENTION")
        zero.content.redacted_snippet = f"leaked {MARKER}"  # a producer that sent content it should not have
        rest = good(20)
        batch = [*rest[:7], poison[0], *rest[7:15], zero, poison[1], *rest[15:]]
        ends = asyncio.run(produce(env["kafka"].bootstrap, batch))
        wait_for(lambda: processed(env, [s.decision_id for s in rest]) == 20, what="the good records of the batch")
        wait_for(lambda: metric(env, "safeguards_monitor_signals_total", result="dead_letter") == 3, what="3 parked")
        parked = q(env, "SELECT * FROM monitor_dead_letters WHERE replayed_at IS NULL")
        assert len(parked) == 3
        assert all("CheckViolationError" in r["error"] and "23514" in r["error"] for r in parked)
        assert all(MARKER.encode() not in bytes(r["record"]) for r in parked)
        assert processed(env, [s.decision_id for s in (*poison, zero)]) == 0
        wait_for(lambda: committed(env, ends), what="offsets committed")
        wait_for(lambda: firing(env, "dead_letters") == 1, what="the dead_letters alert")
        wait_for(lambda: metric(env, "safeguards_monitor_dead_letters_pending") == 3, what="the pending gauge")
        assert health(env) == health_pb2.HealthCheckResponse.SERVING  # poison is not a stuck store
    finally:
        q(env, "ALTER TABLE monitor_buckets DROP CONSTRAINT IF EXISTS no_poison")  # the fix
    replay = subprocess.run(
        [sys.executable, "-m", "services.monitor.deadletters", "replay", "--database-url", env["db"],
         "--region", REGION, "--kafka-bootstrap", env["kafka"].bootstrap],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert "replayed 3, left pending 0" in replay.stdout
    wait_for(lambda: processed(env, [s.decision_id for s in (*poison, zero)]) == 3, what="the replayed records")
    wait_for(lambda: firing(env, "dead_letters") == 0, what="the dead_letters alert to resolve")
    assert processed(env, [s.decision_id for s in rest]) == 20
    listed = subprocess.run(
        [sys.executable, "-m", "services.monitor.deadletters", "list", "--database-url", env["db"], "--region", REGION],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0 and listed.stdout.count("replayed") == 3


# ---- a stuck store ------------------------------------------------------------------------------------
def test_a_store_that_refuses_every_write_is_retried_not_parked_and_reported_stuck(env) -> None:
    dead_before = q(env, "SELECT count(*) AS n FROM monitor_dead_letters")[0]["n"]
    q(env, "ALTER TABLE monitor_processed RENAME TO monitor_processed_away")
    signals = good(3, tenant="stuck")
    try:
        asyncio.run(produce(env["kafka"].bootstrap, signals))
        wait_for(lambda: metric(env, "safeguards_monitor_consumer_stuck_seconds") >= STUCK_S, what="stuck gauge")
        wait_for(lambda: health(env) == health_pb2.HealthCheckResponse.NOT_SERVING, what="health NOT_SERVING")
        wait_for(lambda: firing(env, "consumer_stuck") == 1, what="the consumer_stuck alert")
        assert metric(env, "safeguards_monitor_store_errors_total") > 0
        assert q(env, "SELECT count(*) AS n FROM monitor_dead_letters")[0]["n"] == dead_before  # not poison
    finally:
        q(env, "ALTER TABLE monitor_processed_away RENAME TO monitor_processed")
    wait_for(lambda: processed(env, [s.decision_id for s in signals]) == 3, what="the batch after the store is back")
    wait_for(lambda: health(env) == health_pb2.HealthCheckResponse.SERVING, what="health SERVING again")
    assert metric(env, "safeguards_monitor_consumer_stuck_seconds") == 0
    wait_for(lambda: firing(env, "consumer_stuck") == 0, what="the consumer_stuck alert to resolve")


def test_a_store_that_stalls_the_writes_is_reported_stuck_too(env) -> None:
    """No error at all: a lock held on a table the batch writes (a long migration, VACUUM FULL)."""

    async def scenario() -> list:
        holder = await asyncpg.connect(env["db"])
        signals = good(2, tenant="stall")
        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE monitor_buckets IN ACCESS EXCLUSIVE MODE")
            await produce(env["kafka"].bootstrap, signals)
            await asyncio.to_thread(
                wait_for, lambda: health(env) == health_pb2.HealthCheckResponse.NOT_SERVING, 45.0, "NOT_SERVING"
            )
            assert metric(env, "safeguards_monitor_consumer_stuck_seconds") >= STUCK_S
            await tx.rollback()
        finally:
            await holder.close()
        return signals

    signals = asyncio.run(scenario())
    wait_for(lambda: processed(env, [s.decision_id for s in signals]) == 2, what="the batch after the lock")
    wait_for(lambda: health(env) == health_pb2.HealthCheckResponse.SERVING, what="health SERVING again")
