"""Settings of the rate-limit service (flags and RATELIMIT_* env vars)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.callers import CallerTenantSettings
from services.common.settings import ServiceSettings

DEFAULT_PORT = 50053


class RatelimitSettings(ServiceSettings, CallerTenantSettings):
    model_config = SettingsConfigDict(env_prefix="RATELIMIT_")
    service_name: ClassVar[str] = "ratelimit"

    listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}", description="gRPC listen address HOST:PORT (port 0 picks a free port)"
    )
    metrics_listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT + 1000}",
        description="Prometheus /metrics HTTP listen address HOST:PORT; empty disables metrics over HTTP",
    )
    tenant_descriptor_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["tenant"],
        description="descriptor entry keys whose value names a tenant, checked against --caller-tenants-file "
        "(JSON list or comma separated)",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (redis://, rediss:// or unix://); with --redis-mode cluster, one or more seed nodes: "
        "redis[s]://[user:password@]host:port[,host:port...]",
    )
    redis_mode: Literal["standalone", "cluster"] = Field(
        "standalone",
        description="standalone: one Redis server; cluster: a Redis Cluster (slot map read from the seeds, MOVED/ASK "
        "followed, each descriptor's keys hash-tagged into one slot)",
    )
    config: str = Field(
        "config/ratelimit",
        description="rate-limit config: a YAML file or a directory of them (envoyproxy/ratelimit format)",
    )
    config_poll_seconds: float = Field(
        1.0, gt=0, description="how often the config is checked for changes (reload without restart)"
    )
    redis_timeout_ms: float = Field(50.0, gt=0, description="per-decision Redis timeout; past it the fail mode applies")
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="when Redis is unavailable: open (allow) or closed (deny)"
    )
    local_cache_entries: int = Field(
        100_000, ge=0, description="over-limit keys answered locally until their reset (0 disables)"
    )
    near_limit_ratio: float = Field(
        0.8, gt=0, le=1, description="a hit past this fraction of its limit counts as near-limit"
    )
    max_descriptors: int = Field(64, ge=1, description="descriptors per request beyond this are INVALID_ARGUMENT")
    max_hits_addend: int = Field(10_000_000, ge=1, description="largest hits_addend accepted (LLM token counts)")
    key_prefix: str = Field(
        "rl:", description="prefix of every Redis key this service writes (no { or }: the keys' hash tags follow it)"
    )
    redis_pipeline_max_batch: int = Field(128, ge=1, description="most decisions sent in one Redis round trip")
    redis_pipeline_inflight: int = Field(
        1,
        ge=1,
        description="Redis round trips outstanding at once; decisions arriving meanwhile wait and go in the next "
        "one (1 measured best on 2 cores: bigger batches, less CPU per decision)",
    )
    max_concurrent_rpcs: int = Field(
        256,
        ge=1,
        description="in-flight RPCs beyond this are rejected with RESOURCE_EXHAUSTED (visible overload, instead of "
        "decisions that miss their Redis deadline and fail open)",
    )
    workers: int = Field(
        1, ge=1, description="worker processes sharing the port with SO_REUSEPORT (metrics aggregated)"
    )

    @model_validator(mode="after")
    def _check_redis(self) -> RatelimitSettings:
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError("--key-prefix must not contain { or } (it would move the keys' cluster hash tag)")
        if self.redis_mode == "cluster":
            from services.ratelimit.store import cluster_seeds

            cluster_seeds(self.redis_url)
        return self
