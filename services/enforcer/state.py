"""Account enforcement state, rebuilt from the compacted `safeguards.actions.<region>`
topic and kept in memory for O(1) lookups on the request path.

Every replica reads the whole topic from the start with no consumer group (all
partitions assigned, seek to the beginning): each one holds the full state, so a
suspension issued anywhere applies everywhere as soon as the record arrives. A
record's key names its target (`action_key`), so a newer action on the same target
replaces the older one, and a revoke is a tombstone (null value) on that key.
Expiry is checked at lookup time, so an action stops applying at its `expires_at`
with no record and no timer.

Readiness: `start()` waits until the consumer has read up to the end offsets it
found at start (or `catchup_timeout_s` passed, with a logged warning), and the
server only reports SERVING after its start hooks, so a fresh replica does not
allow traffic that a suspension already on the topic would block. When Kafka goes
away later the last state stays in force and the consumer reconnects with
backoff, resuming at the offsets it had reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge
from safeguards.v1 import enforcement_pb2
from tenacity import wait_exponential_jitter

from services.common.topics import actions_topic
from services.enforcer.decision import EnforcementVerdict
from services.enforcer.policy import Action

log = logging.getLogger("safeguards.enforcer.state")

K = enforcement_pb2
SUSPENDED = "enforcement.suspended"
KILL_SWITCH = "enforcement.kill_switch"
_NO_CATEGORIES: frozenset[str] = frozenset()

KIND_NAMES = {
    K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT: "suspend",
    K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT: "throttle",
    K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY: "force",
    K.ENFORCEMENT_KIND_KILL_SWITCH: "killswitch",
}


def _q(part: str) -> str:
    # Escaped so that a ':' inside a tenant or model cannot make two targets collide.
    return quote(part, safe="")


def suspend_key(tenant: str, account_hmac: str) -> str:
    return f"suspend:{_q(tenant)}:{_q(account_hmac)}"


def throttle_key(tenant: str, account_hmac: str) -> str:
    return f"throttle:{_q(tenant)}:{_q(account_hmac)}"


def force_key(tenant: str, category: str) -> str:
    return f"force:{_q(tenant)}:{_q(category)}"


def kill_tenant_key(tenant: str) -> str:
    return f"killswitch:tenant:{_q(tenant)}"


def kill_model_key(model: str) -> str:
    return f"killswitch:model:{_q(model)}"


def action_key(kind: int, target: enforcement_pb2.EnforcementTarget) -> str:
    """The Kafka key of an action's target: the one function producer and consumer
    share. Raises ValueError when the target lacks what its kind needs."""
    t = target
    if kind == K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT and t.tenant and t.account_hmac:
        return suspend_key(t.tenant, t.account_hmac)
    if kind == K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT and t.tenant and t.account_hmac:
        return throttle_key(t.tenant, t.account_hmac)
    if kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY and t.tenant and t.category:
        return force_key(t.tenant, t.category)
    if kind == K.ENFORCEMENT_KIND_KILL_SWITCH and bool(t.tenant) != bool(t.model):
        return kill_tenant_key(t.tenant) if t.tenant else kill_model_key(t.model)
    raise ValueError(f"target does not fit kind {K.EnforcementKind.Name(kind) if kind in KIND_NAMES else kind}")


_KIND_OF_PREFIX = {name: kind for kind, name in KIND_NAMES.items()}


def parse_key(key: str) -> tuple[int, enforcement_pb2.EnforcementTarget] | None:
    """The kind and target a record key names (`action_key`'s inverse), None when it
    is not one: what a tombstone revoked when the revoked record is gone."""
    parts = key.split(":")
    kind = _KIND_OF_PREFIX.get(parts[0])
    if kind is None or len(parts) != 3:
        return None
    a, b = unquote(parts[1]), unquote(parts[2])
    T = enforcement_pb2.EnforcementTarget
    if kind in (K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT):
        target = T(tenant=a, account_hmac=b)
    elif kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
        target = T(tenant=a, category=b)
    elif a == "tenant":
        target = T(tenant=b)
    elif a == "model":
        target = T(model=b)
    else:
        return None
    try:
        return (kind, target) if action_key(kind, target) == key else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ObservedRecord:
    """A record of the actions topic as a replica applied it, for keepers of history
    (the monitor): `action` is None for a tombstone (a revoke)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str
    action: enforcement_pb2.EnforcementAction | None


@dataclass(frozen=True)
class LiveAction:
    key: str
    action: enforcement_pb2.EnforcementAction
    expires_s: float  # unix seconds; 0 = never

    def in_force(self, now: float) -> bool:
        return not self.expires_s or now < self.expires_s


class StateMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str = "enforcer") -> None:
        self.applied = Counter(
            f"{prefix}_actions_applied",
            "Records of the actions topic applied, by kind (revoke = tombstone).",
            ["kind"],
            registry=registry,
        )
        self.malformed = Counter(
            f"{prefix}_actions_malformed", "Records of the actions topic skipped as malformed.", registry=registry
        )
        self.live = Gauge(
            f"{prefix}_actions_live", "Actions held in memory (expired ones included).", registry=registry
        )
        self.lag = Gauge(
            f"{prefix}_actions_lag", "Records between what this replica applied and the topic's end.", registry=registry
        )
        self.up = Gauge(
            f"{prefix}_actions_consumer_up", "1 while the actions consumer reaches Kafka.", registry=registry
        )
        self.caught_up = Gauge(
            f"{prefix}_actions_caught_up",
            "1 once the topic was read up to its end offsets at start.",
            registry=registry,
        )


class EnforcementState:
    """The tables and the consumer that fills them. Lookups never await."""

    def __init__(
        self,
        region: str,
        metrics: StateMetrics,
        *,
        bootstrap: str = "",
        catchup_timeout_s: float = 30.0,
        probe_interval_s: float = 5.0,
        observer: Callable[[ObservedRecord], None] | None = None,
        clock=time.time,
    ) -> None:
        self.region = region
        self.observer = observer
        self.topic = actions_topic(region)
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.catchup_timeout_s = catchup_timeout_s
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._by_key: dict[str, LiveAction] = {}
        self._key_of_id: dict[str, str] = {}
        self._forced: dict[str, dict[str, LiveAction]] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    # ---- lookups (the request path) -------------------------------------------------
    def _in_force(self, key: str, now: float) -> LiveAction | None:
        live = self._by_key.get(key)
        return live if live is not None and live.in_force(now) else None

    def verdict(self, tenant: str, account_hmac: str, model: str) -> EnforcementVerdict | None:
        if not self._by_key:
            return None
        now = self._clock()
        if account_hmac and (live := self._in_force(suspend_key(tenant, account_hmac), now)):
            return EnforcementVerdict(Action.BLOCK, SUSPENDED, f"action {live.action.action_id}")
        if live := self._in_force(kill_tenant_key(tenant), now):
            return EnforcementVerdict(Action.BLOCK, KILL_SWITCH, f"tenant; action {live.action.action_id}")
        if model and (live := self._in_force(kill_model_key(model), now)):
            return EnforcementVerdict(Action.BLOCK, KILL_SWITCH, f"model; action {live.action.action_id}")
        return None

    def forced_categories(self, tenant: str) -> frozenset[str]:
        forced = self._forced.get(tenant)
        if not forced:
            return _NO_CATEGORIES
        now = self._clock()
        return frozenset(c for c, live in forced.items() if live.in_force(now))

    def account_limit(self, tenant: str, account_hmac: str) -> int | None:
        """Requests per minute an account is throttled to, if it is."""
        if not account_hmac or not self._by_key:
            return None
        live = self._in_force(throttle_key(tenant, account_hmac), self._clock())
        return live.action.requests_per_minute if live else None

    # ---- admin reads ----------------------------------------------------------------
    def actions(self, tenant: str = "") -> list[enforcement_pb2.EnforcementAction]:
        """Actions in force, oldest first (optionally of one tenant)."""
        now = self._clock()
        out = [
            live.action
            for live in self._by_key.values()
            if live.in_force(now) and (not tenant or live.action.target.tenant == tenant)
        ]
        return sorted(out, key=lambda a: (a.issued_at.ToNanoseconds(), a.action_id))

    def find(self, action_id: str) -> LiveAction | None:
        key = self._key_of_id.get(action_id)
        return self._by_key.get(key) if key is not None else None

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set()

    # ---- applying records -------------------------------------------------------------
    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record of the topic; False (logged, counted) when malformed.
        Never logs content: only sizes and what is wrong."""
        try:
            skey = key.decode() if key else ""
        except UnicodeDecodeError:
            skey = ""
        if not skey:
            return self._malformed("record without a usable key", key, value)
        if value is None:
            self._remove(skey)
            self.metrics.applied.labels("revoke").inc()
            return True
        try:
            action = enforcement_pb2.EnforcementAction.FromString(value)
        except DecodeError:
            return self._malformed("value is not an EnforcementAction", key, value)
        if not action.action_id or action.kind not in KIND_NAMES:
            return self._malformed("action id or kind missing", key, value)
        try:
            expected = action_key(action.kind, action.target)
        except ValueError:
            return self._malformed("target does not fit the kind", key, value)
        if expected != skey:
            return self._malformed("key does not match the action's target", key, value)
        if action.region and action.region != self.region:
            return self._malformed("action is for another region", key, value)
        if action.kind == K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT and action.requests_per_minute <= 0:
            return self._malformed("throttle without requests_per_minute", key, value)
        expires = action.expires_at.ToNanoseconds() / 1e9 if action.HasField("expires_at") else 0.0
        self._remove(skey)
        live = LiveAction(skey, action, expires)
        self._by_key[skey] = live
        self._key_of_id[action.action_id] = skey
        if action.kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
            self._forced.setdefault(action.target.tenant, {})[action.target.category] = live
        self.metrics.applied.labels(KIND_NAMES[action.kind]).inc()
        self.metrics.live.set(len(self._by_key))
        return True

    def _apply_record(self, tp: TopicPartition, r) -> None:
        if self.observer is None:
            self.apply(r.key, r.value)
            return
        if self.apply(r.key, r.value):
            skey = r.key.decode()  # apply() accepted it: a usable key
            live = self._by_key.get(skey) if r.value is not None else None
            self.observer(ObservedRecord(tp.partition, r.offset, r.timestamp, skey, live.action if live else None))

    def _remove(self, key: str) -> None:
        old = self._by_key.pop(key, None)
        if old is None:
            return
        self._key_of_id.pop(old.action.action_id, None)
        if old.action.kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
            forced = self._forced.get(old.action.target.tenant, {})
            forced.pop(old.action.target.category, None)
            if not forced:
                self._forced.pop(old.action.target.tenant, None)
        self.metrics.live.set(len(self._by_key))

    def _malformed(self, why: str, key: bytes | None, value: bytes | None) -> bool:
        self.metrics.malformed.inc()
        log.warning(
            "malformed action record skipped",
            extra={"why": why, "key_bytes": len(key or b""), "value_bytes": len(value or b"")},
        )
        return False

    # ---- the consumer -------------------------------------------------------------------
    async def start(self) -> None:
        """Start consuming and wait for the catch-up (or the timeout, with a warning)."""
        self._task = asyncio.create_task(self._run(), name="enforcement-state")
        try:
            await asyncio.wait_for(asyncio.shield(self._caught_up.wait()), self.catchup_timeout_s)
            log.info("enforcement state caught up", extra={"actions": len(self._by_key)})
        except TimeoutError:
            log.warning(
                "enforcement state not caught up; serving with what was read so far",
                extra={"timeout_s": self.catchup_timeout_s, "actions": len(self._by_key)},
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close_consumer()

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 2.0)
            except (TimeoutError, KafkaError, OSError):
                pass

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
                await self._close_consumer()
                attempt += 1
                delay = wait(_Attempt(attempt))
                log.warning(
                    "actions consumer lost Kafka; keeping the last state and reconnecting",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2), "attempt": attempt},
                    exc_info=not isinstance(exc, KafkaError | TimeoutError | OSError | _Repartitioned),
                )
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"enforcer-actions-{self.region}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=5000,
            metadata_max_age_ms=10_000,
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
            if not self._caught_up.is_set() and await self._reached(consumer, end):
                self._caught_up.set()
                self.metrics.caught_up.set(1)
            if time.monotonic() >= next_probe:
                # The probe notices an outage (aiokafka's fetcher retries silently) and
                # measures the lag; a failure raises and reconnects with backoff.
                end = await self._end_offsets(consumer, partitions)
                await self._rewind_truncated(consumer, end)
                lag = 0
                for tp in partitions:
                    lag += max(0, end[tp] - await consumer.position(tp))
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
            if await consumer.position(tp) > offset:
                log.warning(
                    "actions partition is shorter than what was read: re-reading it",
                    extra={"partition": tp.partition, "end_offset": offset},
                )
                self._positions.pop(tp, None)
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
                self._caught_up.set()
                self.metrics.caught_up.set(1)
            self.metrics.up.set(1)
            await asyncio.sleep(2.0)

    @staticmethod
    async def _end_offsets(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> dict:
        return await asyncio.wait_for(consumer.end_offsets(list(partitions)), 10)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, end: dict) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True


class _Repartitioned(Exception):
    """The topic's partition count changed: reassign (positions are kept)."""


class _Attempt:
    """The bit of tenacity's RetryCallState its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt
