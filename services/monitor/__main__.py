"""`python -m services.monitor`: wiring only (the runner): the PostgreSQL store, the
signal consumer, the aggregate metrics, retention, the rollup publisher and its
spool, the automated enforcement rules, the alerts, the operators' domain
(enforcement state, action history, audited actions), the gRPC query service and
the operators' web console around them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.actions.admin import ActionAdmin
from services.actions.authz import TokenAuth, load_token_config
from services.actions.consumer import ActionsConsumer
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.sink import KafkaActionSink
from services.common.kafka import KafkaPublisher, ProducerConfig, PublisherMetrics
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.common.server import App, run
from services.common.spool import Spool
from services.monitor.aggregates import AggregateMetrics, AggregateRefresher
from services.monitor.alerts import AlertEvaluator, AlertMetrics, list_alerts
from services.monitor.console.app import Console
from services.monitor.console.sessions import Sessions
from services.monitor.console.users import PasswordChecker, load_users
from services.monitor.consumer import ConsumerMetrics, SignalConsumer
from services.monitor.detectors import AlertConfig, LagWatch, StuckWatch
from services.monitor.health import ConsumerHealth
from services.monitor.operations import ActionHistory, Operations, StoredCatalog
from services.monitor.queries import Queries
from services.monitor.retention import Purger
from services.monitor.rollup import Rollup, RollupMetrics
from services.monitor.rules import RuleEngine, RuleMetrics, rules_config
from services.monitor.server import OFF_HINT, bindings
from services.monitor.settings import MonitorSettings
from services.monitor.store import Retention, Store
from services.monitor.webhook import Webhook

HOUR = 3600.0
log = logging.getLogger("safeguards.monitor")


async def build(settings: MonitorSettings, registry: CollectorRegistry) -> App:
    # Settings that can fail the start are read before anything connects.
    action_keys = settings.action_key_ring()
    kafka_security = settings.kafka_security()
    kafka_security.client_kwargs()  # a missing CA, certificate or password file fails the start
    store = Store(
        settings.database_url,
        settings.region,
        Retention(
            standard_s=settings.case_retention_standard_hours * HOUR,
            metadata_only_s=settings.case_retention_metadata_only_hours * HOUR,
            zero_retention_s=settings.case_retention_zero_retention_hours * HOUR,
        ),
        pool_size=settings.database_pool_size,
    )
    await store.start(create=settings.database_create)
    rule_metrics = RuleMetrics(registry)
    rules_config_ = rules_config(settings.rules, rule_metrics, settings.rules_poll_seconds) if settings.rules else None
    if rules_config_ is not None:
        rules_config_.load_initial()  # a broken rules file at start is fatal
    sink = KafkaActionSink(
        settings.kafka_bootstrap,
        keys=action_keys,
        security=kafka_security,
        idempotence=settings.kafka_idempotence,
        timeout_s=settings.actions_timeout_seconds,
        client_id=f"monitor-actions-{settings.region}",
    )
    engine = RuleEngine(
        region=settings.region,
        rules=rules_config_,
        sink=sink,
        metrics=rule_metrics,
        max_per_tenant_hour=settings.max_automated_actions_per_tenant_per_hour,
        case_retention_s=store.retention.for_policy,
        flush_interval_s=settings.actions_flush_seconds,
        keep_s=settings.bucket_retention_hours * HOUR,
        pool=store.pool,
    )
    consumer = SignalConsumer(
        bootstrap=settings.kafka_bootstrap,
        region=settings.region,
        group_id=settings.group_id,
        store=store,
        metrics=ConsumerMetrics(registry, settings.metrics_max_labels),
        max_records=settings.batch_max_records,
        wait_ms=settings.batch_wait_ms,
        rules=engine,
        security=kafka_security,
    )
    refresher = AggregateRefresher(
        store,
        AggregateMetrics(registry, settings.metrics_top_tenants, settings.metrics_max_labels),
        settings.metrics_refresh_seconds,
    )
    purger = Purger(
        store,
        registry,
        interval_s=settings.purge_interval_seconds,
        bucket_s=settings.bucket_retention_hours * HOUR,
        dedupe_s=settings.dedupe_retention_hours * HOUR,
    )
    publisher = KafkaPublisher(
        ProducerConfig(
            bootstrap=settings.kafka_bootstrap,
            client_id=f"monitor-{settings.region}",
            idempotence=settings.kafka_idempotence,
            security=kafka_security,
        ),
        Spool(Path(settings.spool_dir) / f"rollup-{settings.region}.db", settings.spool_max_bytes),
        PublisherMetrics(registry),
    )
    rollup = Rollup(
        store=store,
        publisher=publisher,
        region=settings.region,
        metrics=RollupMetrics(registry),
        interval_s=settings.rollup_interval_seconds,
        grace_s=settings.rollup_grace_seconds,
        lookback_s=settings.rollup_lookback_hours * HOUR,
    )
    alerts = AlertEvaluator(
        pool=store.pool,
        region=settings.region,
        config=alert_config(settings),
        metrics=AlertMetrics(registry),
        sink=sink,
        webhook=Webhook.from_settings(
            settings.alert_webhook_url,
            settings.alert_webhook_secret_file,
            settings.alert_webhook_auth,
            settings.alert_webhook_timeout_seconds,
            settings.alert_webhook_retries,
        ),
        lag=LagWatch(lambda: consumer.lag, settings.group_id, settings.alert_lag_records, settings.alert_lag_seconds),
        stuck=StuckWatch(lambda: consumer.stuck_seconds, settings.group_id, settings.consumer_stuck_seconds),
        interval_s=settings.alerts_interval_seconds,
        keep_s=settings.bucket_retention_hours * HOUR,
    )
    # The operators' domain: this region's enforcement state (read from the actions
    # topic like an enforcer replica, its records kept as history) and the shared
    # admin domain (services.actions) to issue and revoke actions, audited to the signals topic.
    key = RegionalKey.from_file(settings.region, settings.hmac_key_file) if settings.hmac_key_file else None
    history = ActionHistory(store.pool, settings.region)
    state = ActionTable(settings.region, ActionMetrics(registry, prefix="safeguards_monitor"))
    actions = ActionsConsumer(
        state,
        keys=action_keys,
        bootstrap=settings.kafka_bootstrap,
        security=kafka_security,
        client_id=f"monitor-actions-{settings.region}",
        observer=history.observe,
    )
    admin = ActionAdmin(
        region=settings.region,
        key=key,
        table=state,
        sink=sink,
        publisher=publisher,
        apply_locally=True,
        catalog=StoredCatalog(store.pool, settings.region),
    )
    operations = Operations(store=store, state=state, admin=admin, key=key, alerts=list_alerts)
    on_start = [
        publisher.start,
        history.start,
        actions.start,
        engine.start,
        consumer.start,
        refresher.start,
        purger.start,
        rollup.start,
        alerts.start,
    ]
    health = ConsumerHealth(lambda: consumer.stuck_seconds, settings.consumer_stuck_seconds)
    on_stop = [
        health.stop,
        consumer.stop,
        alerts.stop,
        engine.stop,
        actions.stop,
        history.stop,
        rollup.stop,
        purger.stop,
        refresher.stop,
        publisher.close,
        store.close,
    ]
    if rules_config_ is not None:
        on_start.insert(0, rules_config_.start)
        on_stop.insert(0, rules_config_.stop)
    if settings.console_listen and settings.console_users:
        console = build_console(settings, operations, store)
        on_start.append(console.start)  # last: serve operators once everything is up
        on_stop.insert(0, console.stop)  # first: no operator request outlives the rest
    elif settings.console_listen:
        log.info("console off: no --console-users file")
    api_tokens = load_token_config(settings.api_tokens, settings.api_tokens_poll_seconds)
    if api_tokens is not None:
        on_start.insert(0, api_tokens.start)
        on_stop.insert(0, api_tokens.stop)
    return App(
        bindings=bindings(Queries(store), operations, TokenAuth(api_tokens, OFF_HINT)),
        on_start=on_start,
        on_stop=on_stop,
        on_server=[health.attach],
    )


def alert_config(s: MonitorSettings) -> AlertConfig:
    return AlertConfig(
        grace_s=s.alerts_grace_seconds,
        half_life_minutes=s.alert_half_life_minutes,
        z_threshold=s.alert_z_threshold,
        min_history_minutes=s.alert_min_history_minutes,
        max_series=s.alert_max_series,
        block_min_decisions=s.alert_block_min_decisions,
        block_min_rise=s.alert_block_min_rise,
        volume_min_count=s.alert_volume_min_count,
        volume_min_ratio=s.alert_volume_min_ratio,
        dependency_window_minutes=s.alert_dependency_window_minutes,
        dependency_threshold=s.alert_dependency_threshold,
        dependency_min_count=s.alert_dependency_min_count,
        resolve_s=s.alert_resolve_seconds,
        repeat_s=s.alert_repeat_seconds,
    )


def build_console(settings: MonitorSettings, operations: Operations, store: Store) -> Console:
    users = ReloadingConfig(
        Path(settings.console_users),
        load_users,
        poll_seconds=settings.console_users_poll_seconds,
        describe=lambda u: {"users": len(u)},
    )
    users.load_initial()  # a broken users file at start is fatal
    sessions = Sessions(
        store.pool,
        lifetime_s=settings.console_session_hours * HOUR,
        idle_s=settings.console_idle_minutes * 60,
        max_failures=settings.console_signin_attempts,
    )
    return Console(
        ops=operations,
        sessions=sessions,
        users=users,
        region=settings.region,
        listen=settings.console_listen,
        secure_cookies=settings.console_secure_cookies,
        allowed_origins=settings.console_allowed_origins,
        passwords=PasswordChecker(settings.console_signin_concurrency, settings.console_signin_queue),
        trusted_proxies=settings.console_trusted_proxies,
    )


def main(argv: list[str] | None = None) -> int:
    return run("monitor", MonitorSettings.parse(argv), build)


if __name__ == "__main__":
    sys.exit(main())
