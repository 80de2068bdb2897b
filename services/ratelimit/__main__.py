"""`python -m services.ratelimit`: wiring only (envoyproxy/ratelimit's "runner").

Backends are chosen here and nowhere else: the config store, the Redis store, the
local over-limit cache, the limiter, and the gRPC services around it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.common.callers import binding as caller_binding
from services.common.reloader import ReloadingConfig
from services.common.server import App, run
from services.ratelimit import config
from services.ratelimit.cache import OverLimitCache
from services.ratelimit.limiter import FailMode, LimiterSettings, RateLimiter
from services.ratelimit.server import TenantGuard, bindings
from services.ratelimit.settings import RatelimitSettings
from services.ratelimit.stats import LimiterStats
from services.ratelimit.store import RedisStore, StoreMetrics


async def build(settings: RatelimitSettings, registry: CollectorRegistry) -> App:
    stats = LimiterStats(registry)

    def on_load(result: str, cfg: config.RateLimitConfig | None) -> None:
        stats.config_loads.labels(result).inc()
        if cfg is not None:
            stats.config_rules.set(len(cfg.domains))

    configs = ReloadingConfig(
        Path(settings.config),
        config.load,
        poll_seconds=settings.config_poll_seconds,
        on_load=on_load,
        describe=lambda cfg: {"domains": sorted(cfg.domains), "version": cfg.version},
    )
    configs.load_initial()
    store = RedisStore(
        settings.redis_url,
        timeout_s=settings.redis_timeout_ms / 1000,
        metrics=StoreMetrics(registry),
        max_batch=settings.redis_pipeline_max_batch,
        max_inflight=settings.redis_pipeline_inflight,
        cluster=settings.redis_mode == "cluster",
    )
    limiter = RateLimiter(
        configs=configs,
        store=store,
        cache=OverLimitCache(settings.local_cache_entries),
        stats=stats,
        settings=LimiterSettings(
            fail_mode=FailMode(settings.fail_mode),
            near_limit_ratio=settings.near_limit_ratio,
            max_descriptors=settings.max_descriptors,
            max_hits_addend=settings.max_hits_addend,
            key_prefix=settings.key_prefix,
        ),
    )
    current_callers, callers = caller_binding(settings, settings.config_poll_seconds)
    return App(
        bindings=bindings(limiter, TenantGuard(current_callers, settings.tenant_descriptor_keys)),
        on_start=[store.start, configs.start, *([callers.start] if callers else [])],
        on_stop=[configs.stop, *([callers.stop] if callers else []), store.close],
    )


def main(argv: list[str] | None = None) -> int:
    settings = RatelimitSettings.parse(argv)
    if settings.workers > 1:
        from services.common.workers import run_workers

        return run_workers("ratelimit", "services.ratelimit", settings, sys.argv[1:] if argv is None else argv)
    return run("ratelimit", settings, build)


if __name__ == "__main__":
    sys.exit(main())
