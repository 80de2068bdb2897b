"""Publishing records to Kafka without ever blocking the hot path or losing one.

`publish()` only enqueues (in memory) and returns. One background task sends
batches with acks=all and compression; when Kafka cannot take records (down,
slow, unreachable), they go to the on-disk `Spool` in order, and the task replays
the spool, oldest first, before anything newer once Kafka answers again. While
the spool is non-empty new records are appended to it too, so the order of a
topic's records is kept. Idempotence is a setting (on for Apache Kafka; the Tansu
broker used locally rejects idempotent producers), and every record carries a
`record-id` header so consumers drop the duplicates that at-least-once delivery
may create (`Deduper`).

The producer is behind the small `Publisher` interface so services and tests
depend on the interface, with aiokafka as the one driver (faust / temporal style).

Every Kafka client of every service connects with the same transport security,
`KafkaSecurity` (TLS, mutual TLS, SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512), read
from the `--kafka-*` flags of `KafkaSettings`, which each service's settings include.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field, model_validator
from tenacity import wait_exponential_jitter

from services.common.errors import ConfigError
from services.common.spool import Record, Spool

log = logging.getLogger("safeguards.kafka")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client reaches the brokers: the one place aiokafka's security arguments
    are made (`client_kwargs`), for every producer, consumer and admin client."""

    protocol: SecurityProtocol = "PLAINTEXT"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    check_hostname: bool = True
    sasl_mechanism: SaslMechanism = ""
    sasl_username: str = ""
    sasl_password_file: str = ""

    def __post_init__(self) -> None:
        tls = self.protocol in ("SSL", "SASL_SSL")
        sasl = self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        if not tls and (self.ca_file or self.cert_file or self.key_file):
            raise ConfigError(
                "--kafka-ca-file/--kafka-cert-file/--kafka-key-file need --kafka-security-protocol SSL or SASL_SSL"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("--kafka-cert-file and --kafka-key-file go together (mutual TLS)")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password_file):
            raise ConfigError(
                f"--kafka-security-protocol {self.protocol} needs --kafka-sasl-mechanism, "
                "--kafka-sasl-username and --kafka-sasl-password-file"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password_file):
            raise ConfigError("--kafka-sasl-* settings need --kafka-security-protocol SASL_PLAINTEXT or SASL_SSL")

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka's keyword arguments; reads the CA, certificate, key and password
        files now (a missing file is a ConfigError naming it)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        for name in (self.ca_file, self.cert_file, self.key_file, self.sasl_password_file):
            if name and not Path(name).is_file():
                raise ConfigError(f"Kafka security: {name} is not a readable file")
        try:
            if self.protocol in ("SSL", "SASL_SSL"):
                ctx = create_ssl_context(
                    cafile=self.ca_file or None, certfile=self.cert_file or None, keyfile=self.key_file or None
                )
                ctx.check_hostname = self.check_hostname
                kwargs["ssl_context"] = ctx
            if self.sasl_mechanism:
                kwargs["sasl_mechanism"] = self.sasl_mechanism
                kwargs["sasl_plain_username"] = self.sasl_username
                kwargs["sasl_plain_password"] = Path(self.sasl_password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"Kafka security: cannot load {exc.filename or 'a file'}: {exc.strerror or exc}"
            ) from None
        return kwargs


class KafkaSettings(BaseModel):
    """The `--kafka-*` flags every service with Kafka clients includes in its settings
    (a mixin of its `ServiceSettings` subclass, so each gets its own env prefix)."""

    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="Kafka transport: PLAINTEXT, SSL (TLS; mutual TLS with --kafka-cert-file), SASL_PLAINTEXT "
        "or SASL_SSL",
    )
    kafka_ca_file: str = Field("", description="PEM CA bundle the brokers' certificates chain to (SSL, SASL_SSL)")
    kafka_cert_file: str = Field("", description="PEM client certificate presented to the brokers (mutual TLS)")
    kafka_key_file: str = Field("", description="PEM private key of --kafka-cert-file")
    kafka_check_hostname: bool = Field(True, description="verify that the broker certificate names the broker host")
    kafka_sasl_mechanism: SaslMechanism = Field(
        "", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT, SASL_SSL)"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password_file: str = Field("", description="file holding the SASL password (never on the command line)")

    @model_validator(mode="after")
    def _check_kafka_security(self) -> KafkaSettings:
        try:
            self.kafka_security()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            ca_file=self.kafka_ca_file,
            cert_file=self.kafka_cert_file,
            key_file=self.kafka_key_file,
            check_hostname=self.kafka_check_hostname,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password_file=self.kafka_sasl_password_file,
        )


class Publisher(Protocol):
    def publish(self, record: Record) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ProducerConfig:
    bootstrap: str
    client_id: str = "safeguards"
    idempotence: bool = False
    acks: str = "all"
    compression: str = "gzip"
    linger_ms: int = 5
    max_batch_bytes: int = 256 * 1024
    request_timeout_ms: int = 5000
    queue_size: int = 10000
    replay_batch: int = 500
    close_timeout_s: float = 5.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


async def stop_within(client: Any, timeout_s: float) -> None:
    """Stop an aiokafka client, waiting at most `timeout_s`. Not `asyncio.wait_for`:
    it waits for the cancelled stop() to finish, and aiokafka's stop() can outlive a
    cancel while its broker is away, which once left a reconnect loop stuck for good.
    A stop() still running is left to finish (or fail) on its own."""
    stopping = asyncio.ensure_future(client.stop())
    stopping.add_done_callback(_retrieve)
    await asyncio.wait({stopping}, timeout=timeout_s)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a failed stop() of a dropped client is not worth a log line


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "kafka_records_published", "Records delivered to Kafka (acknowledged).", ["topic"], registry=registry
        )
        self.spooled = Counter("kafka_records_spooled", "Records written to the local spool.", registry=registry)
        self.dropped = Counter(
            "kafka_records_dropped",
            "Records lost because the spool refused them: reason spool_full, or spool_error (its disk failed).",
            ["reason"],
            registry=registry,
        )
        self.spool_depth = Gauge(
            "kafka_spool_records", "Records waiting in the local spool.", registry=registry, multiprocess_mode="sum"
        )
        self.spool_bytes = Gauge(
            "kafka_spool_bytes", "Bytes waiting in the local spool.", registry=registry, multiprocess_mode="sum"
        )
        self.latency = Histogram(
            "kafka_produce_latency_seconds",
            "Time from publish() to the broker's acknowledgement.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.up = Gauge(
            "kafka_up", "1 while the producer can deliver, else 0.", registry=registry, multiprocess_mode="min"
        )


class KafkaPublisher:
    def __init__(self, config: ProducerConfig, spool: Spool, metrics: PublisherMetrics) -> None:
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self._queue: deque[tuple[Record, float]] = deque()
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._up = False
        self._update_spool_metrics()

    # ---- the hot path -----------------------------------------------------------------
    def publish(self, record: Record) -> None:
        """Enqueue a record; never blocks and never raises."""
        if self.spool.depth or not self._up or len(self._queue) >= self.config.queue_size:
            self._to_spool([record])
        else:
            self._queue.append((record, time.monotonic()))
        self._wake.set()

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-publisher")

    async def close(self) -> None:
        """Deliver what is queued within close_timeout_s; spool the rest (kept on disk)."""
        self._closing = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.config.close_timeout_s)
            except TimeoutError:
                self._task.cancel()
        if self._queue:
            self._to_spool([r for r, _ in self._queue])
            self._queue.clear()
        if self._producer is not None:
            await stop_within(self._producer, self.config.close_timeout_s)
        self.spool.close()

    @property
    def pending(self) -> int:
        return len(self._queue) + self.spool.depth

    # ---- internals ----------------------------------------------------------------------
    def _to_spool(self, records: list[Record]) -> None:
        refused = self.spool.append(records)
        self.metrics.spooled.inc(len(records) - len(refused))
        if refused:
            reason = "spool_error" if self.spool.last_error else "spool_full"
            self.metrics.dropped.labels(reason).inc(len(refused))
            log.error(
                "records dropped", extra={"dropped": len(refused), "reason": reason, "spool_bytes": self.spool.bytes}
            )
        self._update_spool_metrics()

    def _update_spool_metrics(self) -> None:
        self.metrics.spool_depth.set(self.spool.depth)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            log.log(logging.INFO if up else logging.ERROR, "kafka up" if up else "kafka unavailable; spooling")
        self._up = up
        self.metrics.up.set(1 if up else 0)

    async def _connect(self) -> None:
        c = self.config
        producer = AIOKafkaProducer(
            bootstrap_servers=c.bootstrap,
            client_id=c.client_id,
            acks=c.acks,
            enable_idempotence=c.idempotence,
            compression_type=c.compression,
            linger_ms=c.linger_ms,
            max_batch_size=c.max_batch_bytes,
            request_timeout_ms=c.request_timeout_ms,
            **c.security.client_kwargs(),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _send(self, records: list[tuple[Record, float]]) -> list[bool]:
        """Send a batch; returns per-record success."""
        assert self._producer is not None
        futures = []
        for record, _t in records:
            futures.append(
                await self._producer.send(record.topic, record.value, key=record.key, headers=record.kafka_headers())
            )
        results = await asyncio.gather(*futures, return_exceptions=True)
        now = time.monotonic()
        ok = []
        for (record, t0), res in zip(records, results, strict=True):
            good = not isinstance(res, BaseException)
            ok.append(good)
            if good:
                self.metrics.published.labels(record.topic).inc()
                self.metrics.latency.observe(now - t0)
        return ok

    async def _run(self) -> None:
        wait = wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)
        attempt = 0
        while True:
            if self._closing and not self._queue and (not self._up or not self.spool.depth):
                return
            try:
                if self._producer is None:
                    await self._connect()
                    self._set_up(True)
                if self.spool.depth:
                    await self._replay()
                    self._set_up(True)
                elif self._queue:
                    await self._drain_queue()
                    self._set_up(True)
                else:
                    self._wake.clear()
                    await self._wake.wait()
                attempt = 0
            except (TimeoutError, KafkaError, OSError) as exc:
                self._set_up(False)
                await self._reset_producer()
                if self._queue:
                    self._to_spool([r for r, _ in self._queue])
                    self._queue.clear()
                if self._closing:
                    return
                attempt += 1
                delay = wait(_RetryState(attempt))
                log.warning("kafka send failed; retrying", extra={"error": type(exc).__name__, "retry_in_s": delay})
                await asyncio.sleep(delay)

    async def _reset_producer(self) -> None:
        """Drop a producer that failed; a fresh one is made on the next attempt
        (simpler and more predictable than nursing a half-broken connection)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_within(producer, 1.0)

    async def _replay(self) -> None:
        batch = self.spool.peek(self.config.replay_batch)
        ok = await self._send([(r, time.monotonic()) for _, r in batch])
        delivered = [rowid for (rowid, _), good in zip(batch, ok, strict=True) if good]
        self.spool.ack(delivered)
        self._update_spool_metrics()
        if not all(ok):
            raise KafkaError("replay batch partly failed")
        if not self.spool.depth:
            log.info("spool replayed")

    async def _drain_queue(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.config.replay_batch))]
        ok = await self._send(batch)
        failed = [r for (r, _), good in zip(batch, ok, strict=True) if not good]
        if failed:
            # Keep order: the failed ones first, then everything queued after them.
            self._to_spool(failed + [r for r, _ in self._queue])
            self._queue.clear()
            raise KafkaError(f"{len(failed)} records not acknowledged")


def record_digest(r: Any) -> bytes:
    """What tells one consumed record from another at the same offset: key, value
    (a tombstone apart from an empty value) and headers."""
    h = hashlib.sha256()
    for part in (r.key or b"", b"\x00" if r.value is None else b"\x01" + r.value):
        h.update(len(part).to_bytes(8, "big") + part)
    for name, raw in r.headers or ():
        h.update(len(name).to_bytes(8, "big") + name.encode() + len(raw or b"").to_bytes(8, "big") + (raw or b""))
    return h.digest()


async def log_replaced(consumer: Any, tp: Any, offset: int, digest: bytes, resume_at: int) -> bool | None:
    """Whether the record at `offset` of `tp` is no longer the one consumed there
    (`digest`): the partition was recreated and grew back past where it had been read,
    as after a broker that lost its log, which offsets alone cannot tell. Fetches that
    one record; unless replaced, leaves the consumer at `resume_at`. None: no answer
    within a second (a broker away or slow: look again later)."""
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
    first = next(iter(batch.get(tp, ())), None)
    if first is None or (first.offset == offset and record_digest(first) == digest):
        consumer.seek(tp, resume_at)
        return None if first is None else False
    return True


class _RetryState:
    """The bit of tenacity's RetryCallState its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt


class Deduper:
    """Remembers the last `capacity` record ids: consumers skip replays and the
    duplicates at-least-once delivery can produce."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, record_id: str) -> bool:
        if record_id in self._seen:
            self._seen.move_to_end(record_id)
            return False
        self._seen[record_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


def record_id_of(headers) -> str:
    for key, value in headers or ():
        if key == "record-id":
            return value.decode()
    return ""
