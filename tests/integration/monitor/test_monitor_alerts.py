"""Monitor alerts on real PostgreSQL, the real Tansu broker and a real HTTP webhook
receiver on a free port. Signals go through the monitor's own path (`Store.apply`,
the `SignalConsumer`) with explicit timestamps, so every baseline is deterministic;
evaluations are given their `now`.

Proves: a spike in one tenant's BLOCK share after a calm baseline fires exactly one
alert to the alerts topic and one signed webhook POST, and nothing for a steady
tenant; evaluating again does not page again; resolving notifies once; two
evaluators on one database (two replicas) page once, and repeat once; a category's
volume spike fires; degraded (fail-open) decisions fire the dependency alert and a
replay of them changes no count; a stuck consumer fires the lag alert and resolves
when it catches up; a webhook that is down gets the notification once when it is
back, and one that rejects it (4xx) is not retried; Kafka unreachable: the record is
produced once when it is reachable again; alerts carry no content and no
account id; the monitor process runs the alerts end to end from its flags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from safeguards.v1 import alerts_pb2

from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.common.errors import InvalidArgument
from services.common.topics import alerts_topic, signals_topic
from services.monitor.alerts import AlertEvaluator, AlertMetrics, list_alerts
from services.monitor.consumer import ConsumerMetrics, SignalConsumer
from services.monitor.decisions import decision_from_signal
from services.monitor.detectors import AlertConfig, LagWatch, fingerprint
from services.monitor.store import Retention, Store, minute_of, utc
from services.monitor.webhook import SIGNATURE_HEADER, Webhook
from tests.integration.monitor.monitor_support import KEY, make_signal, pg_database, read_topic
from tests.integration.monitor.test_monitor_service import Monitor, encoded, produce, wait_for
from tests.support import EmbeddedKafka, free_port
from tools.run_mesh import create_topics

RUN = uuid.uuid4().hex[:6]
SECRET = "whsec-" + uuid.uuid4().hex
PROMPT = "some prompt"  # make_signal's text: must never reach an alert
CFG = AlertConfig(
    grace_s=15,
    half_life_minutes=10,
    z_threshold=4,
    min_history_minutes=15,
    max_series=100,
    block_min_decisions=20,
    block_min_rise=0.2,
    volume_min_count=50,
    volume_min_ratio=2,
    dependency_window_minutes=2,
    dependency_threshold=0.05,
    dependency_min_count=10,
    resolve_s=120,
    repeat_s=3600,
)
#: 16 s into the current minute: with grace 15 s the evaluated minute is the previous one,
#: and stays so until NOW + 44 s.
NOW = (int(time.time()) // 60) * 60 + 16.0
SPIKE_MINUTE = NOW - 16 - 60  # start of the minute the evaluations at NOW look at
BASELINE_MINUTES = 20


class Receiver:
    """A webhook receiver: records every POST (status answered, headers, body)."""

    def __init__(self, port: int | None = None, status: int = 200) -> None:
        self.port = port or free_port()
        self.status = status
        self.posts: list[tuple[int, dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts?token=not-logged"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((receiver.status, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def delivered(self) -> list[dict]:
        return [json.loads(body) for status, _, body in self.posts if status == 200]


@pytest.fixture(scope="module")
def env():
    kafka = EmbeddedKafka().start()
    try:
        with pg_database("monalerts") as db_url:
            yield kafka, db_url
    finally:
        kafka.close()


@asynccontextmanager
async def replica(kafka: EmbeddedKafka, db_url: str, region: str, *, webhook=None, cfg=CFG, lag=None):
    """One monitor replica's alert evaluator: its own pool, Kafka producer and metrics."""
    store = Store(db_url, region, Retention(3600, 3600, 3600))
    await store.start(create=False)
    registry = CollectorRegistry()
    sink = KafkaActionSink(
        kafka.bootstrap, keys=KeyRing.insecure_dev(), idempotence=False, timeout_s=5, client_id=f"alerts-{region}"
    )
    evaluator = AlertEvaluator(
        pool=store.pool,
        region=region,
        config=cfg,
        metrics=AlertMetrics(registry),
        sink=sink,
        webhook=webhook,
        lag=lag,
    )
    try:
        yield store, evaluator, registry
    finally:
        await evaluator.stop()
        await sink.close()
        await store.close()


async def new_region(kafka: EmbeddedKafka, name: str) -> str:
    region = f"{name}-{RUN}"
    await create_topics(kafka.bootstrap, region)
    return region


def minute_of_signals(region: str, tenant: str, start_s: float, n: int, blocks: int, **kw) -> list:
    """`n` decisions of `tenant` spread over the minute starting at `start_s`, the first `blocks` BLOCK."""
    return [
        make_signal(
            region=region, tenant=tenant, action="BLOCK" if i < blocks else "ALLOW", time_s=start_s + i * 50 / n, **kw
        )
        for i in range(n)
    ]


async def feed(store: Store, signals) -> int:
    return (await store.apply([decision_from_signal(s, 0) for s in signals])).new


async def calm_then_spike(store: Store, region: str, spiky: str, steady: str = "") -> None:
    """BASELINE_MINUTES calm minutes (5-10% blocked), then the spike minute: `spiky` 75% blocked."""
    signals = []
    for k in range(BASELINE_MINUTES):
        start = SPIKE_MINUTE - (BASELINE_MINUTES - k) * 60
        for tenant in filter(None, (spiky, steady)):
            signals += minute_of_signals(region, tenant, start, 20, 1 + k % 2)
    signals += minute_of_signals(region, spiky, SPIKE_MINUTE, 20, 15)
    if steady:
        signals += minute_of_signals(region, steady, SPIKE_MINUTE, 20, 1)
    assert await feed(store, signals) == len(signals)


async def alert_records(kafka: EmbeddedKafka, region: str) -> list[tuple[bytes, dict, alerts_pb2.Alert]]:
    return [
        (r.key, dict(r.headers), alerts_pb2.Alert.FromString(r.value))
        for r in await read_topic(kafka.bootstrap, alerts_topic(region))
    ]


def sample(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_tenant_block_rate_spike_pages_once_and_resolving_notifies_once(env) -> None:
    asyncio.run(_spike(*env))


async def _spike(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "spike")
    spiky, steady = f"spiky-{RUN}", f"steady-{RUN}"
    receiver = Receiver().start()
    webhook = Webhook(receiver.url, secret=SECRET, timeout_s=5, retries=1)
    try:
        async with replica(kafka, db_url, region, webhook=webhook) as (store, evaluator, registry):
            await calm_then_spike(store, region, spiky, steady)
            queued = await evaluator.evaluate(NOW)
            assert [(a.kind, a.subject) for a in queued] == [(alerts_pb2.ALERT_KIND_TENANT_BLOCK_RATE, spiky)]
            assert await evaluator.deliver() == 2  # the topic and the webhook

            [(key, headers, rec)] = await alert_records(kafka, region)
            assert key == fingerprint("tenant_block_rate", spiky).encode() == rec.fingerprint.encode()
            assert headers["record-id"] == rec.notification_id.encode()
            assert rec.status == alerts_pb2.ALERT_STATUS_FIRING and rec.region == region
            assert rec.severity == alerts_pb2.ALERT_SEVERITY_WARNING
            assert rec.value == 0.75 and 0.05 <= rec.baseline <= 0.10
            assert spiky in rec.summary and "75%" in rec.summary and not rec.HasField("ends_at")

            [body] = receiver.delivered()
            _, hook_headers, raw = receiver.posts[0]
            expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            assert hook_headers[SIGNATURE_HEADER] == expected
            assert hook_headers["Idempotency-Key"] == rec.notification_id == body["notificationId"]
            assert body["status"] == "firing" and body["version"] == "4"
            [alert] = body["alerts"]
            assert alert["labels"] == {
                "alertname": "SafeguardsTenantBlockRateSpike",
                "region": region,
                "severity": "warning",
                "tenant": spiky,
            }
            assert alert["fingerprint"] == rec.fingerprint and alert["endsAt"] == "0001-01-01T00:00:00Z"
            assert alert["startsAt"].startswith(utc(NOW).strftime("%Y-%m-%dT%H:%M"))
            for blob in (raw, rec.SerializeToString()):  # counts and names only
                for needle in (PROMPT, KEY.account(spiky, "acct-1"), "req-1", "proj-1"):
                    assert needle.encode() not in blob

            # The same minute again, and the next (quiet) minute: no second page, not resolved yet.
            assert await evaluator.evaluate(NOW + 20) == []
            assert await evaluator.evaluate(NOW + 60) == []
            [firing] = await list_alerts(store.pool, region, state="firing")
            assert firing.subject == spiky and firing.kind == "tenant_block_rate" and firing.resolved_at is None
            await evaluator.refresh_metrics()
            assert sample(registry, "safeguards_monitor_alerts_firing", kind="tenant_block_rate") == 1

            # Clear for resolve_s (120 s) since last seen at NOW + 20: resolved, notified once.
            [resolved] = await evaluator.evaluate(NOW + 20 + CFG.resolve_s)
            assert resolved.status == alerts_pb2.ALERT_STATUS_RESOLVED and resolved.alert_id == firing.alert_id
            assert await evaluator.evaluate(NOW + 400) == []
            assert await evaluator.deliver() == 2
            assert await evaluator.deliver() == 0

            records = [rec for _, _, rec in await alert_records(kafka, region)]
            assert [r.status for r in records] == [alerts_pb2.ALERT_STATUS_FIRING, alerts_pb2.ALERT_STATUS_RESOLVED]
            assert len({r.notification_id for r in records}) == 2 and len({r.alert_id for r in records}) == 1
            assert records[1].ends_at.ToSeconds() == int(NOW + 20 + CFG.resolve_s)
            bodies = receiver.delivered()
            assert [b["status"] for b in bodies] == ["firing", "resolved"]
            assert bodies[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"

            [row] = await list_alerts(store.pool, region)
            assert row.state == "resolved" and row.resolved_at == utc(NOW + 20 + CFG.resolve_s)
            assert await list_alerts(store.pool, region, state="firing") == []
            with pytest.raises(InvalidArgument):
                await list_alerts(store.pool, region, state="pending")
            with pytest.raises(InvalidArgument):
                await list_alerts(store.pool, region, limit=0)
            await evaluator.refresh_metrics()
            assert sample(registry, "safeguards_monitor_alerts_firing", kind="tenant_block_rate") == 0
            for channel in ("kafka", "webhook"):
                assert sample(registry, "safeguards_monitor_alert_notifications_total", channel=channel, result="sent")
                assert sample(registry, "safeguards_monitor_alert_notifications_pending", channel=channel) == 0
    finally:
        receiver.stop()


def test_two_replicas_on_one_database_page_once_and_repeat_once(env) -> None:
    asyncio.run(_two_replicas(*env))


async def _two_replicas(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "pair")
    spiky = f"pair-{RUN}"
    receiver = Receiver().start()
    cfg = dataclasses.replace(CFG, repeat_s=20)
    try:
        async with (
            replica(kafka, db_url, region, webhook=Webhook(receiver.url), cfg=cfg) as (store, a, _),
            replica(kafka, db_url, region, webhook=Webhook(receiver.url), cfg=cfg) as (_, b, _),
        ):
            await calm_then_spike(store, region, spiky)
            first = await asyncio.gather(a.evaluate(NOW), b.evaluate(NOW))
            assert sum(len(q) for q in first) == 1
            await asyncio.gather(a.deliver(), b.deliver())
            assert len(await alert_records(kafka, region)) == 1 and len(receiver.delivered()) == 1

            # Within repeat_s: nothing; after it, one repeat between the two of them.
            assert await asyncio.gather(a.evaluate(NOW + 10), b.evaluate(NOW + 10)) == [[], []]
            again = await asyncio.gather(a.evaluate(NOW + 30), b.evaluate(NOW + 32))
            assert sum(len(q) for q in again) == 1
            await asyncio.gather(a.deliver(), b.deliver())
            await asyncio.gather(a.deliver(), b.deliver())
            records = [rec for _, _, rec in await alert_records(kafka, region)]
            assert [r.status for r in records] == [alerts_pb2.ALERT_STATUS_FIRING] * 2
            assert len({r.alert_id for r in records}) == 1 and len({r.notification_id for r in records}) == 2
            assert len(receiver.delivered()) == 2
            assert len(await list_alerts(store.pool, region)) == 1
    finally:
        receiver.stop()


def test_a_category_volume_spike_fires_for_that_category_only_and_allowed_traffic_does_not(env) -> None:
    asyncio.run(_volume(*env))


async def _volume(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "vol")
    async with replica(kafka, db_url, region) as (store, evaluator, _):
        signals = []
        for k in range(BASELINE_MINUTES + 1):
            signals += minute_of_signals(region, "base", SPIKE_MINUTE - (BASELINE_MINUTES - k) * 60, 25, 5)
        # The spike is spread over ten tenants, each too small for its own block-rate alert.
        for t in range(10):
            signals += minute_of_signals(region, f"t{t}", SPIKE_MINUTE, 8, 8)
        # A surge of allowed traffic (category "none") is not a safety signal.
        signals += minute_of_signals(region, "surge", SPIKE_MINUTE, 100, 0)
        assert await feed(store, signals) == len(signals)
        [alert] = await evaluator.evaluate(NOW)
        assert (alert.kind, alert.subject, alert.value) == (alerts_pb2.ALERT_KIND_CATEGORY_VOLUME, "jailbreak", 85)
        assert alert.baseline == pytest.approx(5.0)


def test_degraded_decisions_fire_the_dependency_alert_and_a_replay_counts_nothing(env) -> None:
    asyncio.run(_degraded(*env))


async def _degraded(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "dep")
    async with replica(kafka, db_url, region) as (store, evaluator, _):
        tenant = f"dep-{RUN}"
        fail_open = [
            make_signal(region=region, tenant=tenant, action="ALLOW", time_s=SPIKE_MINUTE + i, failed_dependencies=d)
            for i, d in enumerate([("classifier",)] * 12 + [("ratelimit",)] + [()] * 27)
        ]
        assert await feed(store, fail_open) == 40
        assert await feed(store, fail_open) == 0  # a replay
        counts = await store.pool.fetch(
            "SELECT dependency, degraded FROM monitor_dependency_minutes WHERE region = $1 ORDER BY 1", region
        )
        assert [tuple(r) for r in counts] == [("classifier", 12), ("ratelimit", 1)]
        [alert] = await evaluator.evaluate(NOW)
        assert (alert.kind, alert.subject) == (alerts_pb2.ALERT_KIND_DEPENDENCY_DEGRADED, "classifier")
        assert alert.severity == alerts_pb2.ALERT_SEVERITY_CRITICAL and alert.value == pytest.approx(12 / 40)
        assert "12 of 40 decisions" in alert.summary
        assert await evaluator.evaluate(NOW + 20) == []
        assert await evaluator.deliver() == 1
        [(key, _, rec)] = await alert_records(kafka, region)
        assert key == fingerprint("dependency_degraded", "classifier").encode() and rec.alert_id == alert.alert_id


def test_a_stuck_consumer_fires_the_lag_alert_and_it_resolves_when_it_catches_up(env) -> None:
    asyncio.run(_lag(*env))


async def _lag(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "lag")
    group = f"lag-{RUN}"

    async def send(n: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in encoded([make_signal(region=region, tenant="lagging") for _ in range(n)]):
                await producer.send(signals_topic(region), value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    registry = CollectorRegistry()
    watch = LagWatch(lambda: consumer.lag, group, records=10, seconds=5)
    async with replica(kafka, db_url, region, lag=watch) as (store, evaluator, _):
        consumer = SignalConsumer(
            bootstrap=kafka.bootstrap, region=region, group_id=group, store=store,
            metrics=ConsumerMetrics(registry), max_records=5, wait_ms=50,
        )  # fmt: skip
        await consumer.start()
        try:
            await send(1)
            await until(lambda: sample(registry, "safeguards_monitor_batches_committed_total") >= 1, "a batch")
            # PostgreSQL stalls the consumer: it holds a batch it cannot apply while signals pile up.
            lock = await asyncpg.connect(db_url)
            stall = lock.transaction()
            await stall.start()
            await lock.execute("LOCK TABLE monitor_processed IN ACCESS EXCLUSIVE MODE")
            try:
                await send(30)
                await until(lambda: consumer.lag >= 30, "the lag to show")
                t = time.time()
                assert await evaluator.evaluate(t) == []  # above the threshold, not for long enough yet
                assert await evaluator.evaluate(t + 4) == []
                [fired] = await evaluator.evaluate(t + 6)
                assert (fired.kind, fired.subject) == (alerts_pb2.ALERT_KIND_CONSUMER_LAG, group)
                assert fired.value >= 30 and fired.baseline == 10
            finally:
                await stall.rollback()
                await lock.close()
            await until(lambda: consumer.lag == 0, "the consumer to catch up")
            assert await evaluator.evaluate(t + 7) == []
            [resolved] = await evaluator.evaluate(t + 6 + CFG.resolve_s)
            assert resolved.status == alerts_pb2.ALERT_STATUS_RESOLVED and resolved.alert_id == fired.alert_id
            assert await evaluator.deliver() == 2
        finally:
            await consumer.stop()


def test_a_webhook_down_then_up_gets_the_notification_once(env) -> None:
    asyncio.run(_webhook_outage(*env))


async def _webhook_outage(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "down")
    receiver = Receiver(status=503)  # not listening yet
    webhook = Webhook(receiver.url, secret=SECRET, auth="bearer", timeout_s=2, retries=1)
    try:
        async with replica(kafka, db_url, region, webhook=webhook) as (store, evaluator, registry):
            await calm_then_spike(store, region, f"down-{RUN}")
            [alert] = await evaluator.evaluate(NOW)
            assert await evaluator.deliver() == 1  # Kafka only: nobody listens on the webhook's port
            receiver.start()  # up, but answering 503
            assert await evaluator.deliver() == 0
            assert [status for status, _, _ in receiver.posts] == [503, 503]  # one try and one retry
            assert sample(registry, "safeguards_monitor_alert_notifications_total", channel="webhook", result="failed")
            await evaluator.refresh_metrics()
            assert sample(registry, "safeguards_monitor_alert_notifications_pending", channel="webhook") == 1
            assert sample(registry, "safeguards_monitor_alert_notifications_pending", channel="kafka") == 0

            receiver.status = 200
            assert await evaluator.deliver() == 1
            assert await evaluator.deliver() == 0
            [body] = receiver.delivered()
            assert body["notificationId"] == alert.notification_id
            assert {h["Idempotency-Key"] for _, h, _ in receiver.posts} == {alert.notification_id}
            assert all(h["Authorization"] == f"Bearer {SECRET}" for _, h, _ in receiver.posts)
            assert len(await alert_records(kafka, region)) == 1  # Kafka was not sent again
    finally:
        receiver.stop()


def test_kafka_unreachable_then_reachable_gets_the_notification_once(env) -> None:
    asyncio.run(_kafka_outage(*env))


async def _kafka_outage(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "kdown")
    receiver = Receiver().start()
    webhook = Webhook(receiver.url, secret=SECRET, timeout_s=5, retries=0)
    try:
        async with replica(kafka, db_url, region, webhook=webhook) as (store, evaluator, registry):
            live_sink = evaluator.sink
            # Nothing listens at this bootstrap address: every produce fails (Unavailable).
            evaluator.sink = KafkaActionSink(
                f"127.0.0.1:{free_port()}", keys=None, idempotence=False, timeout_s=2, client_id="alerts-down"
            )
            await calm_then_spike(store, region, f"kdown-{RUN}")
            [alert] = await evaluator.evaluate(NOW)
            assert await evaluator.deliver() == 1  # the webhook only
            assert await evaluator.deliver() == 0  # Kafka still down: still pending, webhook not re-sent
            assert len(receiver.delivered()) == 1
            assert sample(registry, "safeguards_monitor_alert_notifications_total", channel="kafka", result="failed")
            await evaluator.refresh_metrics()
            assert sample(registry, "safeguards_monitor_alert_notifications_pending", channel="kafka") == 1
            assert await alert_records(kafka, region) == []

            await evaluator.sink.close()
            evaluator.sink = live_sink  # Kafka reachable again
            assert await evaluator.deliver() == 1
            assert await evaluator.deliver() == 0
            [(_, headers, rec)] = await alert_records(kafka, region)
            assert rec.notification_id == alert.notification_id == headers["record-id"].decode()
            assert len(receiver.delivered()) == 1  # the webhook was not sent again
    finally:
        receiver.stop()


def test_a_webhook_that_rejects_a_notification_is_not_retried(env) -> None:
    asyncio.run(_webhook_rejects(*env))


async def _webhook_rejects(kafka: EmbeddedKafka, db_url: str) -> None:
    region = await new_region(kafka, "rej")
    receiver = Receiver(status=400).start()
    try:
        async with replica(kafka, db_url, region, webhook=Webhook(receiver.url, retries=3)) as (store, ev, registry):
            await calm_then_spike(store, region, f"rej-{RUN}")
            assert len(await ev.evaluate(NOW)) == 1
            assert await ev.deliver() == 1  # Kafka
            assert await ev.deliver() == 0
            assert len(receiver.posts) == 1
            rejected = {"channel": "webhook", "result": "rejected"}
            assert sample(registry, "safeguards_monitor_alert_notifications_total", **rejected) == 1
            await ev.refresh_metrics()
            assert sample(registry, "safeguards_monitor_alert_notifications_pending", channel="webhook") == 0
    finally:
        receiver.stop()


def test_the_monitor_process_alerts_from_its_flags(env, tmp_path) -> None:
    """The wiring: signals on the topic -> consumer -> alerts loop -> topic and webhook."""
    kafka, _ = env
    receiver = Receiver().start()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    with pg_database("monalertsproc") as db_url:
        asyncio.run(create_topics(kafka.bootstrap, "mon-1"))
        mon = Monitor(kafka, db_url, tmp_path)
        mon.args += [
            "--alerts-interval-seconds", "0.5", "--alerts-grace-seconds", "0", "--alert-dependency-min-count", "5",
            "--alert-webhook-url", receiver.url, "--alert-webhook-secret-file", str(secret_file),
        ]  # fmt: skip
        mon.start()
        try:
            last_minute = minute_of(utc(time.time())).timestamp() - 60
            signals = [
                make_signal(region="mon-1", tenant="procs", time_s=last_minute + i, failed_dependencies=d)
                for i, d in enumerate([("ratelimit",)] * 6 + [()] * 4)
            ]
            asyncio.run(produce(kafka.bootstrap, encoded(signals)))
            wait_for(lambda: receiver.delivered(), timeout=60, what="the webhook POST")
            [body] = receiver.delivered()
            _, headers, raw = receiver.posts[0]
            assert headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            assert body["alerts"][0]["labels"]["dependency"] == "ratelimit"
            [(_, _, rec)] = asyncio.run(alert_records(kafka, "mon-1"))
            assert rec.notification_id == body["notificationId"]
            firing = (("kind", "dependency_degraded"),)
            wait_for(lambda: mon.metrics().get(("safeguards_monitor_alerts_firing", firing)) == 1, what="the gauge")
            assert "not-logged" not in mon.proc.logs()
        finally:
            mon.stop()
            receiver.stop()
