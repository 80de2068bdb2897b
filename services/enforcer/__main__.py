"""`python -m services.enforcer`: wiring only (the runner): policies, the regional
key, the channels to the classifier and the rate limiter, the Kafka publisher and
its spool, the screener, and the gRPC services around it."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from pathlib import Path

from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry, Gauge
from safeguards.v1 import classifier_pb2

from services.actions.admin import ActionAdmin
from services.actions.consumer import ActionsConsumer
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.sink import KafkaActionSink
from services.common.callers import binding as caller_binding
from services.common.clients import BreakerState, CircuitBreaker, balanced_channel_options
from services.common.errors import ConfigError
from services.common.kafka import KafkaPublisher, ProducerConfig, PublisherMetrics
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.common.server import App, Draining, run
from services.common.spool import Spool
from services.common.tls import ClientTLS, secure_channel
from services.enforcer import admin, policy, shadow
from services.enforcer.detectors import warm_up
from services.enforcer.edges.server import bindings
from services.enforcer.requests import Limits
from services.enforcer.retro import BackgroundScreener, RetroStats
from services.enforcer.screening import Screener
from services.enforcer.settings import EnforcerSettings
from services.enforcer.state import ActionLookups
from services.enforcer.stats import ScreenStats
from services.enforcer.upstream import ClassifierCaller, RateLimitCaller

log = logging.getLogger("safeguards.enforcer")
#: Health-checked per replica by the balanced channels (each server reports its services).
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name
RATELIMIT_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name


async def build(settings: EnforcerSettings, registry: CollectorRegistry) -> App:
    if not settings.hmac_key_file:
        raise ConfigError("--hmac-key-file is required: the region's key for account pseudonyms")
    key = RegionalKey.from_file(settings.region, settings.hmac_key_file)
    action_keys = settings.action_key_ring()
    kafka_security = settings.kafka_security()
    kafka_security.client_kwargs()  # a missing CA, certificate or password file fails the start
    policies = ReloadingConfig(
        Path(settings.policy),
        policy.load,
        poll_seconds=settings.policy_poll_seconds,
        describe=lambda ps: {"tenants": sorted(ps.policies)},
    )
    policies.load_initial()
    candidates = None
    if settings.shadow_policy:
        candidates = ReloadingConfig(
            Path(settings.shadow_policy),
            shadow.load,
            poll_seconds=settings.policy_poll_seconds,
            describe=lambda c: {"shadow_tenants": sorted(c.candidates)},
        )
        candidates.load_initial()
    warm_up()
    tls = ClientTLS(
        plaintext=settings.upstream_plaintext,
        ca_file=settings.upstream_ca_file,
        cert_file=settings.upstream_cert_file,
        key_file=settings.upstream_key_file,
    )
    balanced = functools.partial(
        balanced_channel_options, lb_policy=settings.upstream_lb_policy, keepalive_s=settings.upstream_keepalive_seconds
    )
    classifier_channel = secure_channel(settings.classifier_addr, tls, balanced(CLASSIFIER_SERVICE))
    ratelimit_channel = secure_channel(settings.ratelimit_addr, tls, balanced(RATELIMIT_SERVICE))

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(
            name,
            settings.breaker_failures,
            settings.breaker_open_seconds,
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            error_rate=settings.breaker_error_rate,
            on_change=breaker_changed,
        )

    breaker_state = Gauge(
        "enforcer_breaker_open",
        "1 while a dependency's circuit breaker is open or half-open.",
        ["dependency"],
        registry=registry,
    )

    def breaker_changed(b: CircuitBreaker) -> None:
        breaker_state.labels(b.name).set(0 if b.state is BreakerState.CLOSED else 1)
        why = b.opened_because if b.state is BreakerState.OPEN else ""
        log.warning("circuit breaker %s", b.state.value, extra={"dependency": b.name, "why": why})

    publisher = KafkaPublisher(
        ProducerConfig(
            bootstrap=settings.kafka_bootstrap,
            client_id=f"enforcer-{settings.region}",
            idempotence=settings.kafka_idempotence,
            security=kafka_security,
        ),
        Spool(Path(settings.spool_dir) / f"signals-{settings.region}.db", settings.spool_max_bytes),
        PublisherMetrics(registry),
    )
    table = ActionTable(settings.region, ActionMetrics(registry))
    actions = ActionsConsumer(
        table,
        keys=action_keys,
        bootstrap=settings.kafka_bootstrap,
        security=kafka_security,
        client_id=f"enforcer-actions-{settings.region}",
        catchup_timeout_s=settings.actions_catchup_timeout_seconds,
        wait_for_catchup=settings.actions_wait_for_catchup,
        snapshot_path=Path(settings.actions_snapshot_file) if settings.actions_snapshot_file else None,
    )
    classifier = ClassifierCaller(classifier_channel, breaker("classifier"), settings.classifier_max_chars)
    retro = BackgroundScreener(
        classifier=classifier,
        publisher=publisher,
        key=key,
        region=settings.region,
        snippet_chars=settings.snippet_chars,
        stats=RetroStats(registry),
        max_jobs=settings.retro_queue_size,
        max_bytes=settings.retro_queue_max_bytes,
        timeout_s=settings.retro_deadline_seconds,
        workers=settings.retro_workers,
        shadow_max_jobs=settings.shadow_model_queue_size,
        shadow_max_bytes=settings.shadow_model_queue_max_bytes,
    )
    current_callers, callers = caller_binding(settings, settings.policy_poll_seconds)
    screener = Screener(
        region=settings.region,
        policies=policies,
        key=key,
        classifier=classifier,
        ratelimit=RateLimitCaller(ratelimit_channel, breaker("ratelimit")),
        publisher=publisher,
        stats=ScreenStats(registry),
        limits=Limits(
            max_prompt_bytes=settings.max_prompt_bytes,
            max_messages=settings.max_messages,
            classifier_max_chars=settings.classifier_max_chars,
            snippet_chars=settings.snippet_chars,
            tier0_inline_chars=settings.tier0_inline_chars,
        ),
        enforcement=ActionLookups(table),
        throttle_domain=settings.throttle_domain,
        retro=retro,
        callers=current_callers,
        shadow=(lambda: candidates.current) if candidates else (lambda: None),
    )
    tokens = None
    if settings.admin_tokens:
        tokens = ReloadingConfig(
            Path(settings.admin_tokens),
            admin.load_tokens,
            poll_seconds=settings.admin_tokens_poll_seconds,
            describe=lambda t: {"tokens": len(t)},
        )
        tokens.load_initial()
    sink = KafkaActionSink(
        settings.kafka_bootstrap,
        keys=action_keys,
        idempotence=settings.kafka_idempotence,
        timeout_s=settings.admin_kafka_timeout_seconds,
        client_id=f"enforcer-admin-{settings.region}",
        security=kafka_security,
    )
    # The enforcer's admin API leaves its state to the consumer, like every other replica's.
    enforcement_admin = ActionAdmin(
        region=settings.region,
        key=key,
        table=table,
        sink=sink,
        publisher=publisher,
        catalog=admin.EnforcerCatalog(classifier, policies),
    )

    async def connect_upstreams() -> None:
        # Connect before serving, so the first decisions do not pay TCP + HTTP/2 set-up
        # inside their deadline budget. A dependency that is down does not stop the start:
        # its calls fail, and the policy's fail mode decides.
        for name, channel in (("classifier", classifier_channel), ("ratelimit", ratelimit_channel)):
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=settings.upstream_connect_timeout_seconds)
            except TimeoutError:
                log.warning("upstream not reachable at start", extra={"dependency": name})
        await classifier.refresh_limits()

    async def start_retro() -> None:
        retro.start()

    async def stop_retro() -> None:
        await retro.drain(timeout_s=min(5.0, settings.retro_deadline_seconds))
        await retro.stop()

    async def close_channels() -> None:
        await classifier_channel.close()
        await ratelimit_channel.close()
        screener.close()

    draining = Draining()
    return App(
        draining=draining,
        bindings=[
            *bindings(screener, settings, draining),
            admin.admin_binding(enforcement_admin, admin.TokenAuth(tokens)),
        ],
        on_start=[
            connect_upstreams,
            publisher.start,
            start_retro,
            policies.start,
            *([tokens.start] if tokens else []),
            *([callers.start] if callers else []),
            *([candidates.start] if candidates else []),
            actions.start,
        ],
        on_stop=[
            policies.stop,
            *([tokens.stop] if tokens else []),
            *([callers.stop] if callers else []),
            *([candidates.stop] if candidates else []),
            actions.stop,
            sink.close,
            stop_retro,
            close_channels,
            publisher.close,
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return run("enforcer", EnforcerSettings.parse(argv), build)


if __name__ == "__main__":
    sys.exit(main())
