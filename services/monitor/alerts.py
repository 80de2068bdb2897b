"""Alerts: spikes against a series' own baseline, dependency degradation and
consumer lag, with Alertmanager's lifecycle, paged once per incident.

The detectors (services.monitor.detectors) run every `--alerts-interval-seconds` on
the last *closed* minute (one that
ended `--alerts-grace-seconds` ago), reading only what PostgreSQL holds, so a
restarted monitor recomputes every baseline from stored minutes:

- tenant block rate: the minute's BLOCK share (`monitor_tenant_minutes`, one count
  per decision) against an EWMA mean / standard deviation of the tenant's earlier
  minutes with decisions;
- category volume: the minute's decisions in a category (`monitor_buckets`) against
  the EWMA of its earlier minutes (zeros included, from its first minute seen);
- dependency degradation: decisions taken without a dependency (the signal's
  `failed_dependencies`, `monitor_dependency_minutes`) as a share of all decisions
  of the last `--alert-dependency-window-minutes`;
- consumer lag: this process's signal-consumer lag above `--alert-lag-records` for
  `--alert-lag-seconds` (the only detector with in-memory state: a restart re-arms it);
- consumer stuck: this process's signal consumer has not been able to apply its
  batch for `--consumer-stuck-seconds` (PostgreSQL refuses or stalls its writes:
  lag alone misses it when signals are few);
- dead letters: signal records PostgreSQL refused, parked and not yet replayed
  (services.monitor.deadletters).

When PostgreSQL is down altogether no alert state can be written: the consumer's
own health (NOT_SERVING) and `safeguards_monitor_consumer_stuck_seconds` page then.

Lifecycle (Alertmanager semantics): fingerprint = hash of kind + subject; a finding
without a firing alert of that fingerprint opens one (notify), a firing one seen
again notifies at most every `--alert-repeat-seconds`, and one whose condition has
been clear for `--alert-resolve-seconds` resolves (notify once). Alert state lives in
`monitor_alerts` (at most one firing row per region and fingerprint, a unique
index) and every transition happens in one transaction under a per-region advisory
lock, so of several replicas exactly one opens, repeats or resolves an alert.

Each transition writes a notification (an `Alert` record) to the outbox
`monitor_alert_outbox` in that transaction; `deliver()` produces it to
`safeguards.alerts.<region>` (acks=all, keyed by fingerprint, `record-id` header)
and POSTs it to the webhook, each channel marked done on success, so an outage
delays a notification but loses none. Receivers dedupe by `notification_id`.
Alerts carry counts, rates and tenant / category / dependency names, never content
or account identifiers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge
from safeguards.v1 import alerts_pb2

from services.common.errors import InvalidArgument
from services.common.pbtime import timestamp
from services.common.topics import alerts_topic
from services.monitor.deadletters import pending as dead_letters_pending
from services.monitor.detectors import (
    CATEGORY_VOLUME,
    CONSUMER_LAG,
    CONSUMER_STUCK,
    DEAD_LETTERS,
    DEPENDENCY_DEGRADED,
    TENANT_BLOCK_RATE,
    AlertConfig,
    Finding,
    LagWatch,
    StuckWatch,
    category_volume,
    dead_letters,
    dependency_degraded,
    evaluated_minute,
    tenant_block_rate,
)
from services.monitor.outbox import Outbox
from services.monitor.rules import ActionSink
from services.monitor.store import utc
from services.monitor.webhook import Webhook, WebhookRejected, webhook_payload

log = logging.getLogger("safeguards.monitor.alerts")

A = alerts_pb2
#: kind -> (proto enum, severity)
KINDS = {
    TENANT_BLOCK_RATE: (A.ALERT_KIND_TENANT_BLOCK_RATE, "warning"),
    CATEGORY_VOLUME: (A.ALERT_KIND_CATEGORY_VOLUME, "warning"),
    DEPENDENCY_DEGRADED: (A.ALERT_KIND_DEPENDENCY_DEGRADED, "critical"),
    CONSUMER_LAG: (A.ALERT_KIND_CONSUMER_LAG, "warning"),
    CONSUMER_STUCK: (A.ALERT_KIND_CONSUMER_STUCK, "critical"),
    DEAD_LETTERS: (A.ALERT_KIND_DEAD_LETTERS, "warning"),
}
SEVERITIES = {"warning": A.ALERT_SEVERITY_WARNING, "critical": A.ALERT_SEVERITY_CRITICAL}
FIRING, RESOLVED = "firing", "resolved"
STATES = (FIRING, RESOLVED)
MAX_LIST = 1000
PURGE_EVERY_S = 300.0

#: Each channel of the notification outbox.
OUTBOXES = {
    channel: Outbox(
        what="alert notification",
        table="monitor_alert_outbox",
        id_column="notification_id",
        done_column=f"{channel}_done_at",
        columns=("record",),
        order_by="created_at, notification_id",
    )
    for channel in ("kafka", "webhook")
}


# ---- alert rows (the console reads these) -----------------------------------------------------
@dataclass(frozen=True)
class AlertRow:
    """One incident, for the console: newest first from `list_alerts`."""

    alert_id: str
    fingerprint: str
    kind: str
    subject: str
    severity: str
    state: str
    summary: str
    value: float
    baseline: float
    fired_at: datetime
    last_seen_at: datetime
    notified_at: datetime
    resolved_at: datetime | None


def _row(r: asyncpg.Record) -> AlertRow:
    return AlertRow(**{name: r[name] for name in AlertRow.__dataclass_fields__})


async def list_alerts(pool: asyncpg.Pool, region: str, *, limit: int = 100, state: str = "") -> list[AlertRow]:
    """A region's alerts, newest first; `state` "firing" or "resolved" filters (empty: both)."""
    if state and state not in STATES:
        raise InvalidArgument(f"state must be one of {', '.join(STATES)} (or empty for both), not {state[:32]!r}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidArgument(f"limit must be 1..{MAX_LIST}")
    rows = await pool.fetch(
        "SELECT * FROM monitor_alerts WHERE region = $1 AND ($2 = '' OR state = $2) "
        "ORDER BY fired_at DESC, alert_id DESC LIMIT $3",
        region,
        state,
        limit,
    )
    return [_row(r) for r in rows]


# ---- metrics --------------------------------------------------------------------------------
class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.firing = Gauge(
            "safeguards_monitor_alerts_firing", "Alerts firing in this region, by kind.", ["kind"], registry=registry
        )
        self.notifications = Counter(
            "safeguards_monitor_alert_notifications",
            "Alert notifications by channel (kafka, webhook) and result: sent, failed (retried later), "
            "rejected (the webhook answered 4xx: not retried).",
            ["channel", "result"],
            registry=registry,
        )
        self.pending = Gauge(
            "safeguards_monitor_alert_notifications_pending",
            "Alert notifications not yet delivered, by channel.",
            ["channel"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "safeguards_monitor_dead_letters_pending",
            "Signal records PostgreSQL refused, parked in monitor_dead_letters and not replayed yet.",
            registry=registry,
        )
        self.evaluations = Counter(
            "safeguards_monitor_alert_evaluations", "Alert evaluation rounds by result (ok, error).", ["result"],
            registry=registry,
        )  # fmt: skip
        for kind in KINDS:
            self.firing.labels(kind).set(0)


# ---- lifecycle and delivery -----------------------------------------------------------------------
def alert_record(region: str, row: asyncpg.Record | dict, status: str, notified_at: datetime) -> A.Alert:
    kind, severity = KINDS[row["kind"]]
    rec = A.Alert(
        notification_id=uuid.uuid4().hex,
        alert_id=row["alert_id"],
        fingerprint=row["fingerprint"],
        region=region,
        kind=kind,
        subject=row["subject"],
        severity=SEVERITIES[severity],
        status=A.ALERT_STATUS_FIRING if status == FIRING else A.ALERT_STATUS_RESOLVED,
        summary=row["summary"],
        value=row["value"],
        baseline=row["baseline"],
        starts_at=timestamp(row["fired_at"]),
        notified_at=timestamp(notified_at),
    )
    if status == RESOLVED:
        rec.ends_at.CopyFrom(timestamp(notified_at))
    return rec


class AlertEvaluator:
    """One replica's alerting: detect, transition (under the region lock), deliver
    the outbox; one background round every `interval_s`."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        region: str,
        config: AlertConfig,
        metrics: AlertMetrics,
        sink: ActionSink | None,  # shared with the rules (its owner closes it)
        webhook: Webhook | None,
        lag: LagWatch | None = None,
        stuck: StuckWatch | None = None,
        interval_s: float = 30.0,
        keep_s: float = 48 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.region = region
        self.config = config
        self.metrics = metrics
        self.sink = sink
        self.webhook = webhook
        self.lag = lag
        self.stuck = stuck
        self.interval_s = interval_s
        self.keep_s = keep_s
        self._clock = clock
        self.topic = alerts_topic(region)
        self._task: asyncio.Task | None = None
        self._deliver_lock = asyncio.Lock()

    async def detect(self, now: float) -> list[Finding]:
        minute = evaluated_minute(now, self.config.grace_s)
        cfg = self.config
        async with self.pool.acquire() as conn:
            found = await tenant_block_rate(conn, self.region, minute, cfg)
            found += await category_volume(conn, self.region, minute, cfg)
            found += await dependency_degraded(conn, self.region, minute, cfg)
            found += await dead_letters(conn, self.region)
        if self.lag is not None:
            found += self.lag.check(now)
        if self.stuck is not None:
            found += self.stuck.check(now)
        return found

    async def evaluate(self, now: float | None = None) -> list[A.Alert]:
        """Run the detectors and apply the transitions; returns the notifications queued."""
        now = self._clock() if now is None else now
        findings = await self.detect(now)
        async with self.pool.acquire() as conn, conn.transaction():
            # One evaluator of this region at a time: the transitions below are then
            # decided on the state the previous one left, so an incident pages once.
            await conn.execute("SELECT pg_advisory_xact_lock(5407, hashtext($1))", self.region)
            queued = await self._transition(conn, findings, utc(now))
        for rec in queued:
            log.info(
                "alert " + ("resolved" if rec.status == A.ALERT_STATUS_RESOLVED else "firing"),
                extra={"kind": A.AlertKind.Name(rec.kind), "fingerprint": rec.fingerprint, "summary": rec.summary},
            )
        return queued

    async def _transition(self, conn: asyncpg.Connection, findings: Sequence[Finding], now: datetime) -> list[A.Alert]:
        cfg = self.config
        firing = {
            r["fingerprint"]: r
            for r in await conn.fetch(
                "SELECT * FROM monitor_alerts WHERE region = $1 AND state = 'firing' FOR UPDATE", self.region
            )
        }
        queued: list[A.Alert] = []
        seen: set[str] = set()
        for f in findings:
            fp = f.fingerprint
            if fp in seen:
                continue
            seen.add(fp)
            row = firing.pop(fp, None)
            if row is None:
                new = dict(
                    alert_id=uuid.uuid4().hex, fingerprint=fp, kind=f.kind, subject=f.subject, summary=f.summary,
                    value=f.value, baseline=f.baseline, fired_at=now,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO monitor_alerts (alert_id, region, fingerprint, kind, subject, severity, state, "
                    "summary, value, baseline, fired_at, last_seen_at, notified_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, 'firing', $7, $8, $9, $10, $10, $10)",
                    new["alert_id"], self.region, fp, f.kind, f.subject, KINDS[f.kind][1], f.summary, f.value,
                    f.baseline, now,
                )  # fmt: skip
                queued.append(alert_record(self.region, new, FIRING, now))
                continue
            repeat = (now - row["notified_at"]).total_seconds() >= cfg.repeat_s
            await conn.execute(
                "UPDATE monitor_alerts SET last_seen_at = $2, summary = $3, value = $4, baseline = $5, "
                "notified_at = CASE WHEN $6 THEN $2 ELSE notified_at END WHERE alert_id = $1",
                row["alert_id"], now, f.summary, f.value, f.baseline, repeat,
            )  # fmt: skip
            if repeat:
                updated = {**dict(row), "summary": f.summary, "value": f.value, "baseline": f.baseline}
                queued.append(alert_record(self.region, updated, FIRING, now))
        for row in firing.values():  # not seen this round: resolve once clear long enough
            if (now - row["last_seen_at"]).total_seconds() < cfg.resolve_s:
                continue
            await conn.execute(
                "UPDATE monitor_alerts SET state = 'resolved', resolved_at = $2, notified_at = $2 WHERE alert_id = $1",
                row["alert_id"],
                now,
            )
            queued.append(alert_record(self.region, row, RESOLVED, now))
        if queued:
            await conn.executemany(
                "INSERT INTO monitor_alert_outbox (notification_id, region, alert_id, fingerprint, record, "
                "created_at, webhook_done_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (r.notification_id, self.region, r.alert_id, r.fingerprint, r.SerializeToString(), now,
                     None if self.webhook else now)
                    for r in queued
                ],
            )  # fmt: skip
        return queued

    # ---- delivery (the outbox) ----
    async def deliver(self) -> int:
        """Send pending notifications on each channel; a failure leaves the rest of
        that channel pending for the next round. Returns how many sends succeeded."""
        async with self._deliver_lock:
            sent = 0
            if self.sink is not None:
                sent += await self._flush("kafka", self._to_kafka)
            if self.webhook is not None:
                sent += await self._flush("webhook", self._to_webhook)
            return sent

    async def _to_kafka(self, rec: A.Alert, raw: bytes) -> None:
        assert self.sink is not None
        await self.sink.send(
            self.topic, rec.fingerprint.encode(), raw, headers=[("record-id", rec.notification_id.encode())]
        )

    async def _to_webhook(self, rec: A.Alert, raw: bytes) -> None:
        assert self.webhook is not None
        await self.webhook.post(webhook_payload(rec), rec.notification_id)

    async def _flush(self, channel: str, send) -> int:
        async def one(r: asyncpg.Record) -> None:
            raw = bytes(r["record"])
            await send(A.Alert.FromString(raw), raw)

        done = await OUTBOXES[channel].flush(self.pool, self.region, one, permanent=(WebhookRejected,), channel=channel)
        for result, n in (("sent", done.sent), ("rejected", done.rejected), ("failed", done.failed)):
            if n:
                self.metrics.notifications.labels(channel, result).inc(n)
        return done.sent

    async def refresh_metrics(self) -> None:
        counts = dict(
            await self.pool.fetch(
                "SELECT kind, count(*) FROM monitor_alerts WHERE region = $1 AND state = 'firing' GROUP BY kind",
                self.region,
            )
        )
        for kind in KINDS:
            self.metrics.firing.labels(kind).set(counts.get(kind, 0))
        self.metrics.dead_letters.set(await dead_letters_pending(self.pool, self.region))
        pending = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE kafka_done_at IS NULL) AS kafka, "
            "count(*) FILTER (WHERE webhook_done_at IS NULL) AS webhook FROM monitor_alert_outbox WHERE region = $1",
            self.region,
        )
        for channel in ("kafka", "webhook"):
            self.metrics.pending.labels(channel).set(pending[channel])

    async def purge(self, now: float) -> dict[str, int]:
        """Forget resolved alerts and delivered (or long undeliverable) notifications older than keep_s."""
        cut = utc(now - self.keep_s)
        a = await self.pool.execute(
            "DELETE FROM monitor_alerts WHERE region = $1 AND state = 'resolved' AND resolved_at < $2", self.region, cut
        )
        b = await self.pool.execute(
            "DELETE FROM monitor_alert_outbox WHERE region = $1 AND created_at < $2", self.region, cut
        )
        return {"alerts": int(a.rsplit(" ", 1)[-1]), "alert_notifications": int(b.rsplit(" ", 1)[-1])}

    # ---- the loop ----
    async def run_once(self, now: float | None = None) -> None:
        try:
            await self.evaluate(now)
            self.metrics.evaluations.labels("ok").inc()
        except Exception:
            self.metrics.evaluations.labels("error").inc()
            log.exception("alert evaluation failed")
        await self.deliver()
        await self.refresh_metrics()

    async def _run(self) -> None:
        last_purge = 0.0
        while True:
            try:
                await self.run_once()
                if self._clock() - last_purge > PURGE_EVERY_S:
                    last_purge = self._clock()
                    deleted = await self.purge(last_purge)
                    if any(deleted.values()):
                        log.info("alert state purged", extra=deleted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: next round
                log.warning("alert round failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
