"""Settings of the monitor (flags and MONITOR_* env vars)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.actions.settings import ActionKeySettings
from services.common.kafka import KafkaSettings
from services.common.settings import ServiceSettings, split_host_port

DEFAULT_PORT = 50054


class MonitorSettings(ServiceSettings, KafkaSettings, ActionKeySettings):
    model_config = SettingsConfigDict(env_prefix="MONITOR_")
    service_name: ClassVar[str] = "monitor"

    listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}", description="gRPC listen address HOST:PORT (port 0 picks a free port)"
    )
    metrics_listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT + 1000}",
        description="Prometheus /metrics HTTP listen address HOST:PORT; empty disables metrics over HTTP",
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers HOST:PORT[,HOST:PORT]")
    kafka_idempotence: bool = Field(
        False, description="idempotent Kafka producer for the rollup (on for Apache Kafka; Tansu rejects it)"
    )
    group_id: str = Field(
        "",
        description="Kafka consumer group of the signal consumers (default: safeguards-monitor-<region>); "
        "replicas in one group share the partitions",
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/safeguards_monitor",
        description="in-region PostgreSQL database of aggregates, review cases and processed decision ids",
    )
    database_create: bool = Field(
        True, description="create the database named in --database-url when it does not exist"
    )
    database_pool_size: int = Field(4, ge=1, description="PostgreSQL connections kept open")
    batch_max_records: int = Field(
        500, ge=1, description="most signals processed (and committed to PostgreSQL) in one transaction"
    )
    batch_wait_ms: int = Field(200, ge=0, description="longest wait for more signals before a batch is processed")
    metrics_refresh_seconds: float = Field(
        5.0, gt=0, description="how often the windowed aggregates behind the Prometheus metrics are recomputed"
    )
    metrics_top_tenants: int = Field(
        20,
        ge=1,
        description="tenants with the most decisions in the last hour that get their own metric label; "
        "the rest are summed as _other",
    )
    metrics_max_labels: int = Field(
        50, ge=1, description="distinct categories and models each that get their own metric label (rest: _other)"
    )
    case_retention_standard_hours: float = Field(
        24.0 * 30, gt=0, description="how long review cases of STANDARD tenants (with snippet) are kept"
    )
    case_retention_metadata_only_hours: float = Field(
        24.0 * 30, gt=0, description="how long review cases of METADATA_ONLY tenants are kept"
    )
    case_retention_zero_retention_hours: float = Field(
        24.0 * 7, gt=0, description="how long review cases of ZERO_RETENTION tenants (no content) are kept"
    )
    bucket_retention_hours: float = Field(
        48.0, ge=2, description="how long per-minute aggregate buckets are kept (at least the longest window)"
    )
    dedupe_retention_hours: float = Field(
        24.0 * 7,
        gt=0,
        description="how long processed decision ids are remembered (replays older than this would count again: "
        "keep it >= the signals topic retention)",
    )
    purge_interval_seconds: float = Field(60.0, gt=0, description="how often expired cases and buckets are deleted")
    rollup_interval_seconds: float = Field(
        30.0, gt=0, description="how often closed windows are rolled up to safeguards.rollup.global"
    )
    rollup_grace_seconds: float = Field(
        60.0, ge=0, description="a window is closed (and rolled up) this long after its end, so late signals count"
    )
    rollup_lookback_hours: float = Field(
        3.0, gt=0, description="closed windows older than this are never rolled up (e.g. after a long outage)"
    )
    spool_dir: str = Field(".cache/spool", description="folder of the on-disk spool used while Kafka is unreachable")
    spool_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="spool size limit; beyond it rollup records are dropped (counted)"
    )

    hmac_key_file: str = Field(
        "",
        description="file holding this region's HMAC key (the enforcers' --hmac-key-file): operators may then look "
        "accounts up and act on them by raw id; empty: by pseudonym only",
    )

    rules: str = Field(
        "",
        description="YAML file or folder of automated enforcement rules, hot reloaded (empty: no rules)",
    )
    rules_poll_seconds: float = Field(1.0, gt=0, description="how often the rules files are checked for changes")
    max_automated_actions_per_tenant_per_hour: int = Field(
        20,
        ge=0,
        description="most actions the rules fire per tenant per hour (per mode); beyond it a rule is suppressed "
        "for that tenant, counted and logged",
    )
    actions_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for the actions topic to acknowledge (acks=all) an automated action"
    )
    actions_flush_seconds: float = Field(
        1.0, gt=0, description="how often automated actions not yet acknowledged by Kafka are produced again"
    )

    alerts_interval_seconds: float = Field(
        30.0, gt=0, description="how often the alert detectors run and pending alert notifications are delivered"
    )
    alerts_grace_seconds: float = Field(
        15.0, ge=0, description="a minute is evaluated by the alerts this long after its end, so late signals count"
    )
    alert_half_life_minutes: float = Field(
        30.0, gt=0, description="half-life of the EWMA baselines (a tenant's BLOCK share, a category's volume)"
    )
    alert_z_threshold: float = Field(
        4.0, gt=0, description="a minute this many standard deviations above its EWMA baseline is a spike"
    )
    alert_min_history_minutes: int = Field(
        15, ge=1, description="minutes of baseline a tenant or category needs before a spike can fire"
    )
    alert_max_series: int = Field(
        100,
        ge=1,
        description="most tenants, categories and dependencies evaluated per detector and round (busiest first)",
    )
    alert_block_min_decisions: int = Field(
        20, ge=1, description="a tenant block-rate spike needs at least this many decisions in the minute"
    )
    alert_block_min_rise: float = Field(
        0.2, gt=0, le=1, description="a tenant block-rate spike needs the BLOCK share this far above its baseline"
    )
    alert_volume_min_count: int = Field(
        50, ge=1, description="a category volume spike needs at least this many decisions in the minute"
    )
    alert_volume_min_ratio: float = Field(
        2.0, ge=1, description="a category volume spike needs at least this multiple of the baseline's mean"
    )
    alert_dependency_window_minutes: int = Field(
        2, ge=1, description="closed minutes over which the share of decisions degraded by a dependency is taken"
    )
    alert_dependency_threshold: float = Field(
        0.05,
        gt=0,
        le=1,
        description="share of decisions taken without a dependency (fail-open/closed) that fires its alert",
    )
    alert_dependency_min_count: int = Field(
        10, ge=1, description="a dependency alert needs at least this many degraded decisions in its window"
    )
    alert_lag_records: int = Field(
        10_000, ge=1, description="signal-consumer lag (records) above which the consumer-lag alert may fire"
    )
    alert_lag_seconds: float = Field(
        120.0, ge=0, description="how long the consumer lag must stay above --alert-lag-records before it fires"
    )
    consumer_stuck_seconds: float = Field(
        60.0,
        gt=0,
        description="a signal consumer unable to apply its batch this long (PostgreSQL refuses or stalls its "
        "writes) turns health NOT_SERVING and fires the consumer_stuck alert",
    )
    alert_resolve_seconds: float = Field(
        300.0, ge=0, description="an alert resolves (and notifies once) after its condition was clear this long"
    )
    alert_repeat_seconds: float = Field(
        4 * 3600.0, gt=0, description="a still-firing alert notifies again at most this often"
    )
    alert_webhook_url: str = Field(
        "", description="http(s) URL that alert notifications are POSTed to as JSON (empty: topic only)"
    )
    alert_webhook_secret_file: str = Field(
        "", description="file holding the webhook secret (empty: none); see --alert-webhook-auth"
    )
    alert_webhook_auth: Literal["hmac", "bearer"] = Field(
        "hmac",
        description="how the secret is sent: hmac (X-Safeguards-Signature: sha256=HMAC of the body) or bearer "
        "(Authorization: Bearer)",
    )
    alert_webhook_timeout_seconds: float = Field(5.0, gt=0, description="timeout of one webhook POST")
    alert_webhook_retries: int = Field(
        2, ge=0, description="retries of a failed webhook POST before it waits for the next round"
    )
    api_tokens: str = Field(
        "",
        description="YAML file of MonitorService bearer tokens (SHA-256 digests, name, role, regions: the enforcer's "
        "--admin-tokens format), reloaded on change; empty: MonitorService refuses every call",
    )
    api_tokens_poll_seconds: float = Field(2.0, gt=0, description="how often the --api-tokens file is checked")
    console_listen: str = Field(
        "127.0.0.1:8054",
        description="operators' web console HTTP listen address HOST:PORT (port 0 picks a free port); "
        "empty disables the console (it is also off without --console-users)",
    )
    console_users: str = Field(
        "",
        description="YAML file of console operators (name, scrypt password hash, role, regions), reloaded on "
        "change; empty: no console",
    )
    console_users_poll_seconds: float = Field(2.0, gt=0, description="how often the console users file is checked")
    console_session_hours: float = Field(
        8.0, gt=0, description="absolute lifetime of a console session from sign-in, however active"
    )
    console_idle_minutes: float = Field(
        30.0, gt=0, description="a console session unused for this long expires (sign in again)"
    )
    console_secure_cookies: bool = Field(
        False, description="mark the console session cookie Secure (set it when the console is served over HTTPS)"
    )
    console_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins (scheme://host[:port]) a console form may be posted from, e.g. behind a TLS proxy "
        "(JSON list or comma separated; empty: the console's own address as the browser sent it in Host)",
    )
    console_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or CIDRs of reverse proxies in front of the console whose X-Forwarded-For is "
        "believed for the sign-in limits (the right-most address in it that is not a trusted proxy is the client); "
        "empty: the TCP peer is the client (JSON list or comma separated)",
    )
    console_signin_attempts: int = Field(
        5,
        ge=1,
        description="console sign-in attempts allowed per client address and operator name in 15 minutes "
        "(an address may try 3x this over all names); past it, exponential backoff for that address only",
    )
    console_signin_concurrency: int = Field(
        2, ge=1, description="console password checks (scrypt, 32 MiB each) run at once, off the event loop"
    )
    console_signin_queue: int = Field(
        16, ge=0, description="console sign-ins waiting for a password check beyond which more are refused (429)"
    )

    @model_validator(mode="after")
    def _default_group(self) -> MonitorSettings:
        if not self.group_id:
            self.group_id = f"safeguards-monitor-{self.region}"
        if self.console_listen:
            split_host_port(self.console_listen)
        for proxy in self.console_trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"argument --console-trusted-proxies: {proxy!r} is not an IP address or CIDR"
                ) from None
        return self
