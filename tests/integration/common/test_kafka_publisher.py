"""The Kafka publisher against a real Kafka-protocol broker (Tansu): records are
delivered with their record ids; when the broker is down they go to the on-disk
spool and are replayed in order when it is back; none are lost, also across a
restart of the publishing process."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from services.common.kafka import Deduper, KafkaPublisher, ProducerConfig, PublisherMetrics, record_id_of
from services.common.spool import Record, Spool
from tests.support import EmbeddedKafka


def make_publisher(bootstrap: str, spool_path: Path, max_bytes: int = 50_000_000) -> KafkaPublisher:
    return KafkaPublisher(
        ProducerConfig(bootstrap=bootstrap, request_timeout_ms=2000, linger_ms=2),
        Spool(spool_path, max_bytes),
        PublisherMetrics(CollectorRegistry()),
    )


def records(topic: str, n: int, tag: str) -> list[Record]:
    return [Record(topic, f"tenant-{i % 3}".encode(), f"{tag}-{i}".encode(), f"{tag}-{i}") for i in range(n)]


async def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[str, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend((record_id_of(m.headers), m.value) for m in msgs)
    finally:
        await consumer.stop()
    return out


async def wait_drained(pub: KafkaPublisher, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while pub.pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert pub.pending == 0, f"{pub.pending} records still pending"


@pytest.fixture
def kafka():
    with EmbeddedKafka() as k:
        yield k


async def test_records_are_delivered_with_their_ids(kafka, tmp_path) -> None:
    topic = f"t.{uuid.uuid4().hex[:8]}"
    pub = make_publisher(kafka.bootstrap, tmp_path / "spool.db")
    await pub.start()
    for r in records(topic, 200, "a"):
        pub.publish(r)
    await wait_drained(pub)
    got = await read_all(kafka.bootstrap, topic, 200)
    await pub.close()
    assert sorted(i for i, _ in got) == sorted(f"a-{i}" for i in range(200))
    assert all(value.decode() == rid for rid, value in got)


async def test_broker_stopped_mid_run_then_restarted_loses_nothing(kafka, tmp_path) -> None:
    topic = f"t.{uuid.uuid4().hex[:8]}"
    pub = make_publisher(kafka.bootstrap, tmp_path / "spool.db")
    await pub.start()
    for r in records(topic, 100, "before"):
        pub.publish(r)
    await wait_drained(pub)
    before = await read_all(kafka.bootstrap, topic, 100)
    assert len(before) == 100

    kafka.stop()
    for r in records(topic, 150, "down"):
        pub.publish(r)  # never blocks, never raises
    await asyncio.sleep(2.5)
    assert pub.spool.depth >= 150
    kafka.start()  # same port; Tansu keeps data in memory, so this broker starts empty
    for r in records(topic, 50, "after"):
        pub.publish(r)
    await wait_drained(pub)
    after = await read_all(kafka.bootstrap, topic, 200)
    await pub.close()

    dedupe = Deduper()
    ids = [rid for rid, _ in before + after if dedupe.first_time(rid)]
    expected = (
        [f"before-{i}" for i in range(100)] + [f"down-{i}" for i in range(150)] + [f"after-{i}" for i in range(50)]
    )
    assert sorted(ids) == sorted(expected)
    # Replayed in order: within each key's partition, "down" records precede "after" ones.
    for key in range(3):
        seq = [rid for rid, value in after if int(rid.split("-")[1]) % 3 == key]
        tags = [rid.split("-")[0] for rid in seq]
        assert tags == sorted(tags, key=lambda t: 0 if t == "down" else 1)
        downs = [int(rid.split("-")[1]) for rid in seq if rid.startswith("down")]
        assert downs == sorted(downs)


async def test_spooled_records_survive_a_process_restart(tmp_path) -> None:
    topic = f"t.{uuid.uuid4().hex[:8]}"
    kafka = EmbeddedKafka()  # not started: the first publisher never reaches it
    pub = make_publisher(kafka.bootstrap, tmp_path / "spool.db")
    await pub.start()
    for r in records(topic, 40, "crash"):
        pub.publish(r)
    await pub.close()
    assert Spool(tmp_path / "spool.db", 10**9).depth == 40

    kafka.start()
    try:
        pub2 = make_publisher(kafka.bootstrap, tmp_path / "spool.db")
        await pub2.start()
        await wait_drained(pub2)
        got = await read_all(kafka.bootstrap, topic, 40)
        await pub2.close()
    finally:
        kafka.close()
    assert [rid for rid, _ in got if rid.endswith(("-0", "-3"))][:2] == ["crash-0", "crash-3"]
    assert sorted(rid for rid, _ in got) == sorted(f"crash-{i}" for i in range(40))


async def test_full_spool_refuses_and_counts_but_never_blocks(tmp_path) -> None:
    pub = make_publisher("127.0.0.1:1", tmp_path / "spool.db", max_bytes=2000)
    await pub.start()
    for r in records("t.full", 100, "x"):
        pub.publish(r)
    dropped = pub.metrics.dropped.labels("spool_full")._value.get()
    assert pub.spool.depth > 0 and dropped > 0
    assert pub.spool.depth + dropped == 100
    assert pub.spool.bytes <= 2000
    await pub.close()


def test_deduper_forgets_only_beyond_capacity() -> None:
    d = Deduper(capacity=2)
    assert d.first_time("a") and d.first_time("b")
    assert not d.first_time("a")
    assert d.first_time("c")  # evicts b (a was touched)
    assert d.first_time("b") and not d.first_time("c")
