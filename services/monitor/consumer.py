"""The signal consumer: `safeguards.signals.<region>` in a consumer group,
at-least-once, idempotent by decision id.

One loop: fetch a batch, turn each record into a `Decision`, apply the batch to
PostgreSQL in one transaction (`Store.apply`, which skips decision ids already
processed), and only then commit the Kafka offsets. A crash anywhere before the
commit means the batch is delivered again, and the processed-ids table makes that
second delivery change nothing. The automated rules run last inside
that transaction (services.monitor.rules), and the actions they queue in its outbox
are produced after it commits. A record that cannot be parsed is counted and
skipped (it would never parse on a retry either). SURFACE_ADMIN signals (the audit
of an operator call at an enforcer's admin API) are no decisions: they go to the
operators' audit log (`operations.store_audit_signals`), once each. A record PostgreSQL refuses (a
data error: services.monitor.deadletters) is bisected out of its batch, parked as
a dead letter (counted, alerted, replayable) and the rest of the batch applied.
When PostgreSQL is unavailable (or refuses for any other reason) the loop waits
and retries the same batch without committing, and reports itself stuck
(`stuck_seconds`, `safeguards_monitor_consumer_stuck_seconds`): past
`--consumer-stuck-seconds` health turns NOT_SERVING and the consumer_stuck alert
fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from safeguards.v1 import signals_pb2

from services.common.errors import InvalidArgument
from services.common.kafka import KafkaSecurity, log_replaced, record_digest
from services.common.metrics import BoundedLabels
from services.common.topics import signals_topic
from services.monitor import deadletters
from services.monitor.decisions import VERDICTS, Decision, decision_from_signal, is_audit
from services.monitor.operations import store_audit_signals
from services.monitor.rules import RuleEngine
from services.monitor.store import Store

log = logging.getLogger("safeguards.monitor.consumer")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, max_tenants: int = 200) -> None:
        self.records = Counter(
            "safeguards_monitor_signals",
            "Signal records consumed, by result: new (counted), duplicate (replay, no effect), audit (admin "
            "audit, not a decision), invalid (unparseable, skipped), wrong_region (skipped), dead_letter "
            "(PostgreSQL refused it: parked in monitor_dead_letters).",
            ["result"],
            registry=registry,
        )
        self.cases = Counter("safeguards_monitor_cases_opened", "Review cases opened.", registry=registry)
        self.batch_seconds = Histogram(
            "safeguards_monitor_batch_seconds",
            "Time to apply one batch to PostgreSQL.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.lag = Gauge(
            "safeguards_monitor_consumer_lag", "Signals on the assigned partitions not yet consumed.", registry=registry
        )
        self.store_errors = Counter(
            "safeguards_monitor_store_errors", "Batches that failed to apply and were retried.", registry=registry
        )
        self.stuck = Gauge(
            "safeguards_monitor_consumer_stuck_seconds",
            "How long the batch in hand has been failing (or waiting) to be applied to PostgreSQL; 0 when none is.",
            registry=registry,
        )
        self.last_applied = Gauge(
            "safeguards_monitor_consumer_last_applied_timestamp_seconds",
            "When the consumer last finished applying a batch (Unix time).",
            registry=registry,
        )
        self.committed = Counter(
            "safeguards_monitor_batches_committed", "Batches applied and their offsets committed.", registry=registry
        )
        self.rewinds = Counter(
            "safeguards_monitor_partition_rewinds",
            "Partitions found shorter than what was consumed (recreated, or the broker lost its log) and read "
            "again from their beginning (the processed-ids table drops what was applied already).",
            registry=registry,
        )
        self.verdicts = Counter(
            "safeguards_monitor_decisions_by_verdict",
            "Decisions consumed, by the completeness of the classifier verdict they rest on (full, partial, none).",
            ["verdict"],
            registry=registry,
        )
        self.retro_catches = Counter(
            "safeguards_monitor_retro_catches",
            "Retro-screen follow-ups whose full verdict called for a stricter action than the decision took, by "
            "tenant (the first N tenants seen keep their name, the rest count as _other).",
            ["tenant"],
            registry=registry,
        )
        #: Tenant names are client data: a bounded set of label values.
        self.tenants = BoundedLabels(max_tenants)
        for name in VERDICTS.values():
            self.verdicts.labels(name)


class SignalConsumer:
    def __init__(
        self,
        *,
        bootstrap: str,
        region: str,
        group_id: str,
        store: Store,
        metrics: ConsumerMetrics,
        max_records: int = 500,
        wait_ms: int = 200,
        rules: RuleEngine | None = None,
        security: KafkaSecurity | None = None,
        silence_s: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.silence_s = silence_s
        self.security = security or KafkaSecurity()
        self.region = region
        self.group_id = group_id
        self.store = store
        self.metrics = metrics
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.rules = rules
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._positions: dict[TopicPartition, int] = {}
        #: Per partition, the offset and digest of the last record applied (`_check_after_silence`).
        self._last_read: dict[TopicPartition, tuple[int, bytes]] = {}
        #: Per partition, when its last batch arrived (`_check_after_silence`).
        self._fetched_at: dict[TopicPartition, float] = {}
        self._applying_since: float | None = None
        #: SURFACE_ADMIN signals of the batch in hand (kept in the audit log).
        self._audits: list[signals_pb2.SafeguardSignal] = []
        metrics.stuck.set_function(lambda: self.stuck_seconds)

    def _decode(self, record) -> Decision | None:
        try:
            sig = signals_pb2.SafeguardSignal.FromString(record.value or b"")
        except DecodeError:
            self.metrics.records.labels("invalid").inc()
            return None
        if is_audit(sig):
            self.metrics.records.labels("audit").inc()
            self._audits.append(sig)
            return None
        if sig.region and sig.region != self.region:
            self.metrics.records.labels("wrong_region").inc()
            return None
        try:
            return decision_from_signal(sig, record.timestamp / 1000 if record.timestamp else time.time())
        except InvalidArgument as exc:
            self.metrics.records.labels("invalid").inc()
            log.warning(
                "signal skipped", extra={"why": exc.message, "partition": record.partition, "offset": record.offset}
            )
            return None

    @property
    def stuck_seconds(self) -> float:
        """How long the batch in hand has been failing (or waiting) to be applied; 0
        when none is. A healthy batch takes milliseconds: this growing means the store
        cannot take the consumer's writes (the health check and the consumer_stuck
        alert read it)."""
        since = self._applying_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    async def _apply(self, items: list[tuple[ConsumerRecord, Decision]]) -> None:
        """Apply the batch; records PostgreSQL refuses are parked, everything else waits
        until it is applied: an unavailable database must not skip a batch."""
        self._applying_since = time.monotonic()
        try:
            await self._apply_or_park(items)
        finally:
            self._applying_since = None
        self.metrics.last_applied.set(time.time())
        if self.rules is not None:
            await self._flush_actions()

    async def _apply_or_park(self, items: list[tuple[ConsumerRecord, Decision]]) -> None:
        """A data error blames some record of the batch: halve it until the records that
        fail on their own are found, park those and apply the rest. Any other failure
        (connection, missing table, lock timeout) is retried as it is, never parked."""
        delay = 0.2
        while True:
            t0 = time.perf_counter()
            try:
                result = await self.store.apply([d for _, d in items], self.rules.after_apply if self.rules else None)
            except Exception as exc:  # noqa: BLE001 - sorted below: poison (park) or the store's (retry)
                if self.rules is not None:
                    self.rules.rolled_back()
                if self._stopping:
                    raise
                if deadletters.is_poison(exc):
                    if len(items) > 1:
                        half = len(items) // 2
                        await self._apply_or_park(items[:half])
                        await self._apply_or_park(items[half:])
                    else:
                        await self._park(items[0][0], exc)
                    return
                self.metrics.store_errors.inc()
                log.error("batch not applied; retrying", extra={"error": type(exc).__name__, "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.records.labels("new").inc(result.new)
            self.metrics.records.labels("duplicate").inc(result.duplicates)
            self.metrics.cases.inc(result.cases)
            for verdict, n in result.verdicts.items():
                self.metrics.verdicts.labels(VERDICTS.get(verdict, "full")).inc(n)
            for tenant, n in result.retro_catches.items():
                self.metrics.retro_catches.labels(self.metrics.tenants(tenant)).inc(n)
            if self.rules is not None:
                self.rules.committed()
            return

    async def _park(self, record: ConsumerRecord, exc: BaseException) -> None:
        """Keep a record PostgreSQL refuses in the dead-letter table (until that works)."""
        delay = 0.2
        while True:
            try:
                parked = await deadletters.park(self.store.pool, self.region, record, exc)
            except Exception as park_exc:  # noqa: BLE001 - the store again: retry
                if self._stopping:
                    raise
                self.metrics.store_errors.inc()
                log.error("dead letter not parked; retrying", extra={"error": type(park_exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if parked:
                self.metrics.records.labels("dead_letter").inc()
            log.error(
                "signal refused by PostgreSQL: parked as a dead letter",
                extra={"error": deadletters.describe(exc), "partition": record.partition, "offset": record.offset},
            )
            return

    async def _keep_audits(self) -> None:
        """Store the batch's admin audit records (`operations.store_audit_signals`);
        like a batch, retried until PostgreSQL takes them (the offsets wait)."""
        delay = 0.2
        while True:
            self._applying_since = self._applying_since or time.monotonic()
            try:
                await store_audit_signals(self.store.pool, self.region, self._audits)
            except Exception as exc:  # noqa: BLE001 - the store's: retry
                if self._stopping:
                    raise
                self.metrics.store_errors.inc()
                log.error("audit records not stored; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._audits = []
            self._applying_since = None
            return

    async def _flush_actions(self) -> None:
        """Produce the automated actions this batch queued; a failure leaves them in
        the durable outbox for the next batch or the periodic flush."""
        try:
            await self.rules.flush(self.store.pool)
        except Exception as exc:  # noqa: BLE001
            log.warning("automated actions not flushed; retried later", extra={"error": type(exc).__name__})

    async def _loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
            except KafkaError as exc:
                log.warning("fetch failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)
                continue
            if not batches:
                await self._rewind_truncated(consumer)
                self._update_lag()
                continue
            batches = await self._check_after_silence(consumer, batches)
            if not batches:  # all of it to be read again
                continue
            items = []
            for records in batches.values():
                for record in records:
                    d = self._decode(record)
                    if d is not None:
                        items.append((record, d))
            if self._audits:
                await self._keep_audits()
            if items:
                await self._apply(items)
            # Commit exactly what was fetched and applied (not positions moved by a
            # concurrent rebalance).
            offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
            self._positions.update(offsets)
            self._last_read.update(
                {tp: (records[-1].offset, record_digest(records[-1])) for tp, records in batches.items() if records}
            )
            try:
                await consumer.commit(offsets)
                self.metrics.committed.inc()
            except (CommitFailedError, IllegalStateError) as exc:
                # Partitions were reassigned meanwhile: their new owner gets these
                # records again and the processed-ids table drops the replays.
                log.warning("commit refused after a rebalance", extra={"error": type(exc).__name__})
            self._update_lag()

    async def _rewind_truncated(self, consumer: AIOKafkaConsumer) -> None:
        """A partition whose end (the high-water mark of the last fetch) lies before
        what was consumed was recreated or lost its log (a broker that keeps it in
        memory, an unclean leader election). A broker that answers such a fetch with
        nothing instead of OFFSET_OUT_OF_RANGE would leave the consumer waiting for its
        old offset while new signals land below it: read the partition again from its
        beginning instead."""
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            done = self._positions.get(tp)
            if high is not None and done is not None and high < done:
                await self._reread(consumer, tp, "is shorter than what was consumed")

    async def _check_after_silence(self, consumer: AIOKafkaConsumer, batches: dict) -> dict:
        """A partition's first batch after a silence (a broker away, or no traffic) is
        looked at before it is applied: the silence may have been a broker that lost its
        log and whose new log the enforcers' spools refilled past where this consumer
        had read, so the batch continues the old offsets but skips the new log's first
        records (offsets alone cannot tell). The record before the batch must still be
        the one last applied there. Costs one one-record fetch per partition after each
        silence of `silence_s`; nothing while records flow."""
        now = time.monotonic()
        kept = {}
        for tp, records in batches.items():
            silent = now - self._fetched_at.get(tp, now) > self.silence_s
            self._fetched_at[tp] = now
            mark = self._last_read.get(tp)
            if not (records and silent and mark is not None and records[0].offset == mark[0] + 1):
                kept[tp] = records
                continue
            try:
                replaced = await log_replaced(consumer, tp, mark[0], mark[1], records[-1].offset + 1)
            except (KafkaError, IllegalStateError) as exc:
                log.info("partition check failed; the batch is fetched again", extra={"error": type(exc).__name__})
                replaced = None
            if replaced is None:  # no answer: fetch the batch again and look again then
                with contextlib.suppress(IllegalStateError):  # reassigned meanwhile: its new owner reads it
                    consumer.seek(tp, records[0].offset)
                self._fetched_at[tp] = float("-inf")
            elif replaced:
                await self._reread(consumer, tp, "was replaced by a new log")
            else:
                kept[tp] = records
        return kept

    async def _reread(self, consumer: AIOKafkaConsumer, tp: TopicPartition, why: str) -> None:
        """Read a partition again from its beginning (the store drops what it already
        applied, by record id)."""
        log.warning(
            f"signals partition {why}: re-reading it",
            extra={"partition": tp.partition, "consumed": self._positions.get(tp)},
        )
        self.metrics.rewinds.inc()
        self._positions.pop(tp, None)
        self._last_read.pop(tp, None)
        await consumer.seek_to_beginning(tp)

    @property
    def lag(self) -> int:
        """Records on the assigned partitions not yet applied and committed, from the
        broker's latest high-water marks: it keeps growing while a batch is stuck
        (e.g. PostgreSQL stalls), which is when the lag alert must see it."""
        consumer = self._consumer
        if consumer is None:
            return 0
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            done = self._positions.get(tp)
            if high is not None and done is not None:
                lag += max(0, high - done)
        return lag

    def _update_lag(self) -> None:
        self.metrics.lag.set(self.lag)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            signals_topic(self.region),
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=f"monitor-{self.region}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.security.client_kwargs(),
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="signal-consumer")

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("signal consumer stopped")
            raise

    async def stop(self) -> None:
        """Finish the batch in hand (apply + commit), then leave the group."""
        self._stopping = True
        if self._task:
            try:
                await asyncio.wait_for(self._task, 15)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    def assigned(self) -> list[TopicPartition]:
        return sorted(self._consumer.assignment()) if self._consumer else []
