"""Settings of the enforcer (flags and ENFORCER_* env vars)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.actions.settings import ActionKeySettings
from services.common.callers import CallerTenantSettings
from services.common.clients import LbPolicy
from services.common.kafka import KafkaSettings
from services.common.settings import ServiceSettings

DEFAULT_PORT = 50051


class EnforcerSettings(ServiceSettings, KafkaSettings, ActionKeySettings, CallerTenantSettings):
    model_config = SettingsConfigDict(env_prefix="ENFORCER_")
    service_name: ClassVar[str] = "enforcer"

    listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}", description="gRPC listen address HOST:PORT (port 0 picks a free port)"
    )
    metrics_listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT + 1000}",
        description="Prometheus /metrics HTTP listen address HOST:PORT; empty disables metrics over HTTP",
    )
    classifier_addr: str = Field(
        "127.0.0.1:50052",
        description="classifier service: HOST:PORT, dns:///NAME:PORT (every address the name resolves to, e.g. a "
        "Kubernetes headless service) or ipv4:HOST:PORT,HOST:PORT",
    )
    ratelimit_addr: str = Field("127.0.0.1:50053", description="rate-limit service, in --classifier-addr's forms")
    upstream_lb_policy: LbPolicy = Field(
        "round_robin",
        description="how calls to the classifier and rate limiter spread over their addresses: round_robin (every "
        "healthy replica in turn; a replica whose grpc.health.v1 status is not SERVING gets none) or pick_first "
        "(one address at a time)",
    )
    upstream_keepalive_seconds: float = Field(
        10.0,
        ge=5,
        description="keepalive ping interval on the classifier and rate-limit connections (a vanished replica is "
        "noticed within it; the services accept one ping per 5 s)",
    )
    upstream_plaintext: bool = Field(
        False, description="call the classifier and rate-limit services without TLS (local loopback runs only)"
    )
    upstream_ca_file: str = Field(
        "", description="PEM CA that the classifier's and rate limiter's certificates chain to"
    )
    upstream_connect_timeout_seconds: float = Field(
        5.0,
        ge=0,
        description="at start, wait this long for the classifier and rate limiter to connect (then serve anyway)",
    )
    upstream_cert_file: str = Field("", description="PEM client certificate presented to them (mutual TLS)")
    upstream_key_file: str = Field("", description="PEM private key of --upstream-cert-file")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers HOST:PORT[,HOST:PORT]")
    kafka_idempotence: bool = Field(
        False, description="idempotent Kafka producer (on for Apache Kafka; the local Tansu broker rejects it)"
    )
    spool_dir: str = Field(".cache/spool", description="folder of the on-disk spool used while Kafka is unreachable")
    spool_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="spool size limit; beyond it signals are dropped (counted)"
    )
    policy: str = Field("config/policies", description="tenant policy YAML file or directory (reloaded on change)")
    shadow_policy: str = Field(
        "",
        description="candidate policy YAML file or directory run in shadow (decided on live traffic, in the "
        "signal, never enforced; reloaded on change); empty: none",
    )
    policy_poll_seconds: float = Field(1.0, gt=0, description="how often the policy files are checked for changes")
    hmac_key_file: str = Field(
        "", description="file holding this region's HMAC key (>= 32 bytes) for account pseudonyms; required"
    )
    max_prompt_bytes: int = Field(
        256 * 1024, ge=1, description="largest prompt (all messages) accepted, in UTF-8 bytes"
    )
    max_messages: int = Field(256, ge=1, description="most messages in one request")
    classifier_max_chars: int = Field(
        16_000,
        ge=4,
        description="characters of a prompt the classifier screens on the hot path; a longer prompt is screened "
        "by its head, its tail and two windows at random offsets (each a quarter of this), marked PARTIAL "
        "(reason oversize) and re-screened whole in the background",
    )
    tier0_inline_chars: int = Field(
        8192, ge=0, description="texts longer than this run the tier-0 detectors on a worker thread, off the event loop"
    )
    snippet_chars: int = Field(280, ge=0, description="length of the redacted snippet kept in STANDARD signals")
    breaker_failures: int = Field(
        5,
        ge=1,
        description="consecutive signs that a dependency is down (connection failure, UNAVAILABLE, its overload "
        "answer) that open its circuit breaker; a refusal of one request (INVALID_ARGUMENT) or one request's "
        "short deadline never counts",
    )
    breaker_open_seconds: float = Field(2.0, gt=0, description="how long an open breaker fails fast before probing")
    breaker_window: int = Field(50, ge=1, description="calls the breaker's error-rate rule looks back over")
    breaker_min_calls: int = Field(20, ge=1, description="calls in the window before the error-rate rule may open")
    breaker_error_rate: float = Field(
        0.5, gt=0, le=1, description="share of failed or timed-out calls in the window that opens the breaker"
    )
    retro_queue_size: int = Field(
        10_000, ge=0, description="decisions waiting for retro-screening (beyond it they are dropped and counted)"
    )
    retro_queue_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="text held in memory for retro-screening, in characters, at most"
    )
    retro_deadline_seconds: float = Field(
        30.0, gt=0, description="deadline of one retro-screening classifier call (background priority)"
    )
    retro_workers: int = Field(
        1, ge=1, description="background classifier calls (retro-screening, then shadow models) in flight at once"
    )
    shadow_model_queue_size: int = Field(
        1_000,
        ge=0,
        description="sampled decisions waiting for a policy's classifier.shadow_models (beyond it they are dropped "
        "and counted; a separate queue: retro-screening always goes first)",
    )
    shadow_model_queue_max_bytes: int = Field(
        16 * 1024 * 1024, ge=0, description="text held in memory for shadow models, in characters, at most"
    )
    admin_tokens: str = Field(
        "",
        description="YAML file of admin API token SHA-256 digests -> {name, role} (reloaded on change); "
        "empty: the EnforcementAdminService refuses every call (FAILED_PRECONDITION)",
    )
    admin_tokens_poll_seconds: float = Field(2.0, gt=0, description="how often the admin tokens file is checked")
    admin_kafka_timeout_seconds: float = Field(
        10.0, gt=0, description="how long IssueAction/RevokeAction wait for the broker's ack before UNAVAILABLE"
    )
    actions_catchup_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="at start, how long to read the actions topic up to its end before reporting SERVING "
        "anyway (logged warning), with the local snapshot's state when there is one",
    )
    actions_wait_for_catchup: bool = Field(
        False,
        description="at start, do not serve (health stays NOT_SERVING) until the actions topic was read to its "
        "end, however long a Kafka outage lasts",
    )
    actions_snapshot_file: str = Field(
        "",
        description="local file the applied enforcement state is kept in (signed with the action key, written "
        "atomically) and restored from at start, so a restart during a Kafka outage keeps suspensions and "
        "kill switches; empty: none",
    )
    throttle_domain: str = Field(
        "llm",
        description="rate-limit domain used to throttle accounts of tenants whose policy has no ratelimit section",
    )
    tenant_header: str = Field(
        "x-safeguards-tenant", description="HTTP header naming the tenant (Envoy ext_authz and ext_proc)"
    )
    account_header: str = Field(
        "x-safeguards-account", description="HTTP header naming the end account (Envoy ext_authz and ext_proc)"
    )
    project_header: str = Field(
        "x-safeguards-project", description="HTTP header naming the CSP project (Envoy ext_authz and ext_proc)"
    )
    authz_max_body_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="largest HTTP request body ext_authz screens (larger ones get HTTP 400); set Envoy's "
        "with_request_body.max_request_bytes no larger",
    )
    extproc_max_body_bytes: int = Field(
        1024 * 1024, ge=1, description="largest HTTP request body ext_proc reads; larger bodies get HTTP 400"
    )
    max_completion_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="largest completion screened on one stream, in UTF-8 bytes: ScreenCompletion answers "
        "INVALID_ARGUMENT beyond it, ext_proc cuts the response",
    )
    extproc_after_authz: bool = Field(
        False,
        description="ext_authz runs before ext_proc in the same Envoy filter chain and screens the prompt: "
        "ext_proc then screens only completions (prompt decision id from x-safeguards-decision-id); "
        "never set without ext_authz in front",
    )
