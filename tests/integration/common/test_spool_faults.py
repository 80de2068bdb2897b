"""The spool under real SQLite faults: a full disk (SQLITE_FULL, made real with
`PRAGMA max_page_count`: SQLite refuses to grow the file past it, exactly as on a full
file system) and a write lock held by another connection (SQLITE_BUSY, as on a spool
folder shared by two replicas). A failed write rolls back and refuses its batch, the
next one starts clean, `publish()` never raises into the request path and counts the
drops, and the publisher's background loop survives read/delete failures and delivers
everything once the fault is gone."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.common.kafka import KafkaPublisher, ProducerConfig, PublisherMetrics
from services.common.spool import Record, Spool, SpoolError
from tests.integration.common.test_kafka_publisher import read_all, wait_drained
from tests.support import EmbeddedKafka

SECRET = "4111-1111-1111-1111 the prompt itself"


def records(n: int, tag: str, size: int = 200, topic: str = "t.spool") -> list[Record]:
    return [Record(topic, b"tenant", f"{SECRET} {tag}-{i} ".encode() + b"x" * size, f"{tag}-{i}") for i in range(n)]


@contextmanager
def disk_full(spool: Spool) -> Iterator[None]:
    """No page beyond those the file has now (connection-level, like a full disk)."""
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        spool._db.execute("PRAGMA max_page_count = 1073741823")


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_full_disk_rolls_back_the_batch_and_the_next_write_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, 10**9)
    assert spool.append(records(5, "before")) == []
    with disk_full(spool):
        batch = records(200, "full", size=2000)  # far more than the free pages hold
        refused = spool.append(batch)
        assert refused == batch  # all of it: nothing half-written
        assert spool.last_error == "SQLITE_FULL" and spool.failures == 1
        assert not spool._db.in_transaction
        assert spool.depth == 5
        assert spool.append(records(1, "still-full", size=5000))  # refused again, not "transaction within"
    assert spool.append(records(3, "after")) == []
    assert spool.last_error == ""
    ids = [r.record_id for _, r in spool.peek(100)]
    assert ids == [f"before-{i}" for i in range(5)] + [f"after-{i}" for i in range(3)]
    spool.close()
    reopened = Spool(path, 10**9)  # what is on disk agrees: the failed batch left nothing
    assert reopened.depth == 8 and [r.record_id for _, r in reopened.peek(100)] == ids
    assert reopened.bytes == sum(r.size for _, r in reopened.peek(100))
    reopened.close()


def test_lock_held_elsewhere_refuses_fast_and_ack_raises_spool_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, 10**9)
    spool.append(records(4, "a"))
    with write_locked(path):
        assert spool.append(records(2, "b")) == records(2, "b")
        assert spool.last_error == "SQLITE_BUSY"
        ids = [rowid for rowid, _ in spool.peek(10)]  # WAL: reading is not blocked
        assert len(ids) == 4
        with pytest.raises(SpoolError) as err:
            spool.ack(ids[:2])
        assert isinstance(err.value, OSError)  # the publisher's loop backs off on OSError
        assert spool.depth == 4 and not spool._db.in_transaction
    spool.ack(ids[:2])
    assert spool.depth == 2
    assert spool.append(records(2, "c")) == [] and spool.depth == 4
    spool.close()


async def test_publish_never_raises_and_counts_drops_by_reason(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    # No broker: every record goes to the spool.
    pub = KafkaPublisher(
        ProducerConfig(bootstrap="127.0.0.1:1", request_timeout_ms=500),
        Spool(tmp_path / "spool.db", 10**9),
        PublisherMetrics(CollectorRegistry()),
    )
    await pub.start()
    try:
        for r in records(10, "ok"):
            pub.publish(r)
        with disk_full(pub.spool):
            for r in records(50, "lost", size=4000):
                pub.publish(r)  # never raises
        with write_locked(pub.spool.path):
            for r in records(7, "busy"):
                pub.publish(r)
        for r in records(10, "ok-again"):
            pub.publish(r)
        dropped = pub.metrics.dropped.labels("spool_error")._value.get()
        assert dropped == 57
        assert pub.metrics.dropped.labels("spool_full")._value.get() == 0
        assert pub.spool.depth == 20 and pub.metrics.spool_depth._value.get() == 20
        messages = [r.getMessage() + str(r.__dict__) for r in caplog.records]
        assert any("spool writes failing" in m for m in messages)
        assert not any(SECRET in m or "lost-" in m for m in messages)
    finally:
        await pub.close()


async def test_publisher_loop_survives_spool_failures_and_delivers_everything(tmp_path: Path) -> None:
    kafka = EmbeddedKafka().start()
    path = tmp_path / "spool.db"
    try:
        spool = Spool(path, 10**9)
        spool.append(records(30, "queued", topic="t.survive"))  # left by an earlier outage
        pub = KafkaPublisher(
            ProducerConfig(bootstrap=kafka.bootstrap, request_timeout_ms=2000, linger_ms=2),
            spool,
            PublisherMetrics(CollectorRegistry()),
        )
        with write_locked(path):  # replay sends, then cannot delete what it sent
            await pub.start()
            await asyncio.sleep(2.0)
            assert pub._task is not None and not pub._task.done()
            assert spool.depth == 30
        await wait_drained(pub)
        got = await read_all(kafka.bootstrap, "t.survive", expect=30)
        assert {rid for rid, _ in got} == {f"queued-{i}" for i in range(30)}  # duplicates allowed, no loss
        await pub.close()
    finally:
        kafka.close()
