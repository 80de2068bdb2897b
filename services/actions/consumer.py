"""The Kafka adapter that fills the projection from `safeguards.actions.<region>`.

Every replica reads the whole compacted topic from the start with no consumer group
(all partitions assigned, seek to the beginning), so each holds the full state and a
suspension issued anywhere applies everywhere as soon as its record arrives. Every
record is verified first (`records.verify`): an unsigned, forged, wrong-key or
tampered one is refused, counted by reason and never applied.

Readiness: `start()` waits until the consumer has read up to the end offsets it found
at start, or `catchup_timeout_s` passed (logged warning; with `wait_for_catchup` it
waits for as long as it takes, so the server does not listen before). The server
only reports SERVING after its start hooks, so a fresh replica does not allow traffic
that a suspension already on the topic would block. When Kafka goes away later the
last state stays in force and the consumer reconnects with backoff, resuming at the
offsets it had reached. A partition found shorter than what was read, or whose last
record read is no longer at its offset (a broker that came back without its log, and
the log grew back meanwhile), is read again from its beginning on top of that state.

Snapshot (`snapshot_path`): the state is written to a local file (`snapshot`) once
caught up and then whenever it changed (at most every `snapshot_interval_s`) and at
stop. At start a valid snapshot is served at once; the topic is then read from the
start into a fresh table which replaces the snapshot's when it has caught up, so the
topic stays the truth (an action revoked while this replica was down goes away then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from safeguards.v1 import enforcement_pb2
from tenacity import wait_exponential_jitter

from services.actions import snapshot
from services.actions.projection import ActionTable
from services.actions.records import KeyRing, Refused, Revocation, verify
from services.common.kafka import KafkaSecurity, log_replaced, record_digest, stop_within
from services.common.topics import actions_topic

log = logging.getLogger("safeguards.actions.consumer")


@dataclass(frozen=True)
class ObservedRecord:
    """A record of the actions topic as a replica applied it, for keepers of history
    (the monitor): `action` is None for a tombstone (a revoke)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str
    action: enforcement_pb2.EnforcementAction | None
    #: A tombstone's who, why and when (None when it did not say).
    revocation: Revocation | None = None


class ActionsConsumer:
    def __init__(
        self,
        table: ActionTable,
        *,
        keys: KeyRing,
        bootstrap: str,
        client_id: str,
        security: KafkaSecurity | None = None,
        catchup_timeout_s: float = 30.0,
        wait_for_catchup: bool = False,
        probe_interval_s: float = 5.0,
        snapshot_path: Path | None = None,
        snapshot_interval_s: float = 1.0,
        observer: Callable[[ObservedRecord], None] | None = None,
    ) -> None:
        self.table = table
        self.keys = keys
        self.metrics = table.metrics
        self.topic = actions_topic(table.region)
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.security = security or KafkaSecurity()
        self.catchup_timeout_s = catchup_timeout_s
        self.wait_for_catchup = wait_for_catchup
        self.probe_interval_s = probe_interval_s
        self.snapshot_path = snapshot_path
        self.snapshot_interval_s = snapshot_interval_s
        self.observer = observer
        #: Where records are applied: the served table, or until the first catch-up
        #: after a snapshot was loaded, a fresh one that then replaces it.
        self._target = table
        self._positions: dict[TopicPartition, int] = {}
        #: Per partition, the offset and digest of the last record read (`_rewind_replaced`).
        self._last_read: dict[TopicPartition, tuple[int, bytes]] = {}
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dirty = False
        self._last_write = 0.0
        self._write_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set()

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Restore the snapshot (if any), start consuming, and wait for the catch-up
        (or the timeout, with a warning)."""
        self._restore()
        self._task = asyncio.create_task(self._run(), name="actions-consumer")
        if self.wait_for_catchup:
            log.info("waiting for the actions topic to be read to its end before serving")
            await asyncio.shield(self._caught_up.wait())
        try:
            await asyncio.wait_for(asyncio.shield(self._caught_up.wait()), self.catchup_timeout_s)
            log.info("enforcement state caught up", extra={"actions": len(self.table)})
        except TimeoutError:
            log.warning(
                "enforcement state not caught up; serving with what was read so far"
                + (" and the local snapshot" if self._target is not self.table else ""),
                extra={"timeout_s": self.catchup_timeout_s, "actions": len(self.table)},
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close_consumer()
        await self._write_snapshot()

    # ---- the snapshot -------------------------------------------------------------------
    def _restore(self) -> None:
        if self.snapshot_path is None:
            return
        snap = snapshot.read(self.snapshot_path, self.keys, self.topic)
        if snap is None:
            return
        applied = sum(self.table.apply(k.encode(), v) for k, v in snap.records)
        self._target = ActionTable(self.table.region, self.metrics, clock=self.table.clock)
        self.metrics.snapshot_loaded.set(1)
        log.warning(
            "enforcement state restored from the local snapshot until the topic is read",
            extra={
                "actions": applied,
                "age_s": round(time.time() - snap.written_at, 1),
                "positions": {str(p): o for p, o in snap.positions.items()},
            },
        )

    async def _write_snapshot(self) -> None:
        """Write the served state (only a state read to the topic's end: never replace
        a good snapshot with a partial one)."""
        if self.snapshot_path is None or not self._caught_up.is_set() or self._target is not self.table:
            return
        async with self._write_lock:
            snap = snapshot.Snapshot(
                topic=self.topic,
                written_at=time.time(),
                positions={tp.partition: o for tp, o in self._positions.items()},
                records=[(live.key, live.action.SerializeToString()) for live in self.table.in_force()],
            )
            self._dirty = False
            self._last_write = time.monotonic()
            try:
                await asyncio.to_thread(snapshot.write, self.snapshot_path, self.keys, snap)
                self.metrics.snapshot_writes.labels("ok").inc()
            except OSError as exc:
                self._dirty = True
                self.metrics.snapshot_writes.labels("error").inc()
                log.error("actions snapshot not written", extra={"error": exc.strerror or type(exc).__name__})

    def _set_caught_up(self) -> None:
        if self._target is not self.table:
            self.table.replace_with(self._target)
            self._target = self.table
            self.metrics.snapshot_loaded.set(0)
            log.info("enforcement state read from the topic replaces the snapshot", extra={"actions": len(self.table)})
        self._caught_up.set()
        self.metrics.caught_up.set(1)
        self._dirty = True

    # ---- applying records ---------------------------------------------------------------
    def _apply_record(self, tp: TopicPartition, r) -> None:
        try:
            verified = verify(self.keys, tp.topic, r.key, r.value, r.headers)
        except Refused as exc:
            self.metrics.refused.labels(exc.reason).inc()
            log.warning(
                "action record refused: not applied",
                extra={"reason": exc.reason, "partition": tp.partition, "offset": r.offset},
            )
            return
        if not self._target.apply(r.key, r.value, verified.revokes, verified.revocation):
            return
        self._dirty = True
        if self.observer is not None:
            skey = r.key.decode()  # apply() accepted it: a usable key
            live = self._target.get(skey) if r.value is not None else None
            self.observer(
                ObservedRecord(
                    tp.partition, r.offset, r.timestamp, skey, live.action if live else None, verified.revocation
                )
            )

    # ---- the consumer -------------------------------------------------------------------
    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_within(consumer, 2.0)

    async def _run(self) -> None:
        wait = wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)
        attempt = 0
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka errors, timeouts: keep the state, reconnect
                self.metrics.up.set(0)
                attempt += 1
                delay = wait(_Attempt(attempt))
                log.warning(
                    "actions consumer lost Kafka; keeping the last state and reconnecting",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2), "attempt": attempt},
                    exc_info=not isinstance(exc, KafkaError | TimeoutError | OSError | _Repartitioned),
                )
                await self._close_consumer()
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=5000,
            metadata_max_age_ms=10_000,
            **self.security.client_kwargs(),
        )
        self._consumer = consumer  # closed by _run's handler whatever fails below, start() included
        await asyncio.wait_for(consumer.start(), 10)
        partitions = await self._partitions(consumer)
        consumer.assign(partitions)
        for tp in partitions:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])  # a reconnect resumes where it was
            else:
                await consumer.seek_to_beginning(tp)
        end = await self._end_offsets(consumer, partitions)
        await self._rewind_truncated(consumer, end)
        self.metrics.up.set(1)
        next_probe = time.monotonic() + self.probe_interval_s
        while True:
            batches = await consumer.getmany(timeout_ms=250, max_records=2000)
            for tp, records in batches.items():
                for r in records:
                    self._apply_record(tp, r)
                    self._positions[tp] = r.offset + 1
                if records:
                    self._last_read[tp] = (records[-1].offset, record_digest(records[-1]))
            if not self._caught_up.is_set() and await self._reached(consumer, end):
                self._set_caught_up()
            if self._dirty and time.monotonic() - self._last_write >= self.snapshot_interval_s:
                await self._write_snapshot()
            if time.monotonic() >= next_probe:
                # The probe notices an outage (aiokafka's fetcher retries silently) and
                # measures the lag; a failure raises and reconnects with backoff.
                end = await self._end_offsets(consumer, partitions)
                await self._rewind_truncated(consumer, end)
                await self._rewind_replaced(consumer, end)
                lag = 0
                for tp in partitions:
                    lag += max(0, end[tp] - await _position(consumer, tp))
                self.metrics.lag.set(lag)
                self.metrics.up.set(1)
                next_probe = time.monotonic() + self.probe_interval_s
                if len(await self._partitions(consumer, wait=False)) != len(partitions):
                    raise _Repartitioned()

    async def _rewind_truncated(self, consumer: AIOKafkaConsumer, end: dict) -> None:
        """A partition that ends before where this replica had read was recreated
        (or its broker lost its log): read it again from its beginning. The state
        already built stays; the topic's records apply on top of it."""
        for tp, offset in end.items():
            if await _position(consumer, tp) > offset:
                log.warning(
                    "actions partition is shorter than what was read: re-reading it",
                    extra={"partition": tp.partition, "end_offset": offset},
                )
                self._positions.pop(tp, None)
                self._last_read.pop(tp, None)
                await consumer.seek_to_beginning(tp)

    async def _rewind_replaced(self, consumer: AIOKafkaConsumer, end: dict) -> None:
        """A partition read to its end whose last record read is no longer the record
        at that offset was recreated and grew back to (or past) its old length before
        the probe saw it shorter (a broker that lost its log; offsets alone cannot tell).
        Read it again from its beginning, on top of the state built. The record looked
        at is the partition's newest, which compaction never removes."""
        for tp, (offset, digest) in list(self._last_read.items()):
            position = await _position(consumer, tp)
            if end.get(tp) != position or position != offset + 1:
                continue  # not caught up (or shorter: `_rewind_truncated`)
            replaced = await log_replaced(consumer, tp, offset, digest, position)
            if replaced is None:
                return  # no answer: the broker is away or slow; the next probe looks again
            if not replaced:
                continue
            log.warning(
                "actions partition was replaced by a new log: re-reading it",
                extra={"partition": tp.partition, "end_offset": end.get(tp)},
            )
            self._positions.pop(tp, None)
            del self._last_read[tp]
            await consumer.seek_to_beginning(tp)

    async def _partitions(self, consumer: AIOKafkaConsumer, wait: bool = True) -> list[TopicPartition]:
        """The topic's partitions; a topic that does not exist yet holds no actions,
        so the replica counts as caught up while it waits for it to appear."""
        while True:
            await asyncio.wait_for(consumer.topics(), 10)
            parts = consumer.partitions_for_topic(self.topic)
            if parts or not wait:
                return [TopicPartition(self.topic, p) for p in sorted(parts or ())]
            if not self._caught_up.is_set():
                log.warning("actions topic does not exist yet: no actions", extra={"topic": self.topic})
                self._set_caught_up()
            self.metrics.up.set(1)
            await asyncio.sleep(2.0)

    @staticmethod
    async def _end_offsets(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> dict:
        return await asyncio.wait_for(consumer.end_offsets(list(partitions)), 10)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, end: dict) -> bool:
        for tp, offset in end.items():
            if await _position(consumer, tp) < offset:
                return False
        return True


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The consumer's position, bounded: aiokafka waits for a pending offset reset for
    as long as it takes (forever while the partition's topic is gone, as when a broker
    came back empty), which must raise and reconnect instead."""
    return await asyncio.wait_for(consumer.position(tp), 10)


class _Repartitioned(Exception):
    """The topic's partition count changed: reassign (positions are kept)."""


class _Attempt:
    """The bit of tenacity's RetryCallState its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt
