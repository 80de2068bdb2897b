"""The monitor's PostgreSQL schema, every table of the service in one place (the
store's aggregates, cases and decisions; the automated rules and their outbox; the
alerts and their outbox; the operators' audit log and action history; the console's
sessions and sign-in counters), as numbered migrations.

`migrate(pool)` applies the migrations a database lacks, in order, each in its own
transaction, and records each in `schema_migrations` (version, name, applied_at).
The whole run holds a session advisory lock, so replicas starting together apply
each migration once: the others wait, then find nothing left to do.

Rules: a released migration is never edited (a change is a new one appended to
`MIGRATIONS`); migrations only add or widen, so a monitor one release behind still
runs on a migrated database (a database at a version this code does not know
starts with a warning, not a refusal). Migration 1 is the schema as it stood before
migrations, written with IF NOT EXISTS, so a database an older monitor created
adopts it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

log = logging.getLogger("safeguards.monitor.schema")

#: pg_advisory_lock key held while migrating (the schema creators' historic key).
LOCK_KEY = 5405


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


BASELINE = """
-- ---- the store (services.monitor.store): processed ids, aggregates, cases, decisions, rollup marks
CREATE TABLE IF NOT EXISTS monitor_processed (
    decision_id text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS monitor_processed_at ON monitor_processed (processed_at);

CREATE TABLE IF NOT EXISTS monitor_buckets (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    tenant text NOT NULL,
    category text NOT NULL,
    action smallint NOT NULL,
    model text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (region, minute, tenant, category, action, model)
);
CREATE INDEX IF NOT EXISTS monitor_buckets_minute ON monitor_buckets (minute);

-- Per tenant and minute, each decision counted once (monitor_buckets counts a decision
-- once per category): the tenant block-rate baseline of services.monitor.alerts.
CREATE TABLE IF NOT EXISTS monitor_tenant_minutes (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    tenant text NOT NULL,
    decisions bigint NOT NULL,
    blocked bigint NOT NULL,
    PRIMARY KEY (region, minute, tenant)
);
CREATE INDEX IF NOT EXISTS monitor_tenant_minutes_minute ON monitor_tenant_minutes (minute);

-- Per dependency and minute: decisions taken without it (degraded, fail mode applied).
CREATE TABLE IF NOT EXISTS monitor_dependency_minutes (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    dependency text NOT NULL,
    degraded bigint NOT NULL,
    PRIMARY KEY (region, minute, dependency)
);
CREATE INDEX IF NOT EXISTS monitor_dependency_minutes_minute ON monitor_dependency_minutes (minute);

CREATE TABLE IF NOT EXISTS monitor_cases (
    case_id text PRIMARY KEY,
    region text NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    model text NOT NULL,
    action smallint NOT NULL,
    categories text[] NOT NULL,
    reasons jsonb NOT NULL,
    scores jsonb NOT NULL,
    data_policy smallint NOT NULL,
    snippet text NOT NULL,
    characters integer NOT NULL,
    messages integer NOT NULL,
    text_hmac text NOT NULL,
    request_id text NOT NULL,
    policy_version text NOT NULL,
    surface smallint NOT NULL,
    status smallint NOT NULL,
    decided_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS monitor_cases_list ON monitor_cases (region, decided_at DESC, case_id DESC);
CREATE INDEX IF NOT EXISTS monitor_cases_expiry ON monitor_cases (expires_at);

-- Per tenant and minute, for the operators' overview (services.monitor.overview):
-- decisions by verdict completeness, retro screens and catches, and the latency as
-- counts in fixed buckets (overview.LATENCY_BOUNDS_MS) so minutes and tenants add up.
CREATE TABLE IF NOT EXISTS monitor_overview_minutes (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    tenant text NOT NULL,
    decisions bigint NOT NULL,
    blocked bigint NOT NULL,
    full_verdict bigint NOT NULL,
    partial_verdict bigint NOT NULL,
    no_verdict bigint NOT NULL,
    retro_screens bigint NOT NULL,
    retro_catches bigint NOT NULL,
    latency bigint[] NOT NULL,
    PRIMARY KEY (region, minute, tenant)
);
CREATE INDEX IF NOT EXISTS monitor_overview_minutes_minute ON monitor_overview_minutes (minute);

-- Per account (regional pseudonym only) and minute, only for accounts with a block or
-- a retro catch that minute: the overview's top accounts.
CREATE TABLE IF NOT EXISTS monitor_account_minutes (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    blocked bigint NOT NULL,
    retro_catches bigint NOT NULL,
    PRIMARY KEY (region, minute, tenant, account_hmac)
);
CREATE INDEX IF NOT EXISTS monitor_account_minutes_minute ON monitor_account_minutes (minute);

-- The decisions an operator may open (those with a case, those taken on a partial or
-- no verdict) with how they were decided, and the retro-screen result once it came.
-- Kept as long as the data policy keeps cases; request_id only as it allows.
CREATE TABLE IF NOT EXISTS monitor_decisions (
    decision_id text PRIMARY KEY,
    region text NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    model text NOT NULL,
    surface smallint NOT NULL,
    action smallint NOT NULL,
    categories text[] NOT NULL,
    reasons jsonb NOT NULL,
    verdict smallint NOT NULL,
    verdict_reason text NOT NULL,
    answered_by text NOT NULL,
    failed_dependencies text[] NOT NULL,
    request_id text NOT NULL,
    latency_ms double precision,
    data_policy smallint NOT NULL,
    policy_version text NOT NULL,
    decided_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    retro_decision_id text,
    retro_action smallint,
    retro_catch boolean,
    retro_verdict smallint,
    retro_answered_by text,
    retro_reasons jsonb,
    retro_at timestamptz
);
CREATE INDEX IF NOT EXISTS monitor_decisions_account
    ON monitor_decisions (region, tenant, account_hmac, decided_at DESC);
CREATE INDEX IF NOT EXISTS monitor_decisions_retro ON monitor_decisions (region, retro_at DESC) WHERE retro_catch;
CREATE INDEX IF NOT EXISTS monitor_decisions_expiry ON monitor_decisions (expires_at);

CREATE TABLE IF NOT EXISTS monitor_rollup_sent (
    region text NOT NULL,
    window_seconds integer NOT NULL,
    window_start timestamptz NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, window_seconds, window_start)
);

-- ---- the automated rules (services.monitor.rules) and their outbox
CREATE TABLE IF NOT EXISTS monitor_account_decisions (
    decision_id text PRIMARY KEY,
    region text NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    action smallint NOT NULL,
    categories text[] NOT NULL,
    decided_at timestamptz NOT NULL,
    retro_catch boolean NOT NULL DEFAULT false
);
-- Databases created before retro-screening: the column arrives here.
ALTER TABLE monitor_account_decisions ADD COLUMN IF NOT EXISTS retro_catch boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS monitor_account_decisions_acct
    ON monitor_account_decisions (region, tenant, account_hmac, decided_at);
CREATE INDEX IF NOT EXISTS monitor_account_decisions_at ON monitor_account_decisions (decided_at);

CREATE TABLE IF NOT EXISTS monitor_rule_actions (
    action_id text PRIMARY KEY,
    region text NOT NULL,
    rule text NOT NULL,
    mode text NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    kind smallint NOT NULL,
    evidence text[] NOT NULL,
    record bytea NOT NULL,
    record_key text NOT NULL,
    fired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    produced_at timestamptz
);
CREATE INDEX IF NOT EXISTS monitor_rule_actions_live
    ON monitor_rule_actions (region, rule, tenant, account_hmac, expires_at);
CREATE INDEX IF NOT EXISTS monitor_rule_actions_tenant ON monitor_rule_actions (region, tenant, mode, fired_at);
CREATE INDEX IF NOT EXISTS monitor_rule_actions_pending ON monitor_rule_actions (region, fired_at)
    WHERE produced_at IS NULL AND mode = 'live';

-- ---- the alerts (services.monitor.alerts) and their outbox
CREATE TABLE IF NOT EXISTS monitor_alerts (
    alert_id text PRIMARY KEY,
    region text NOT NULL,
    fingerprint text NOT NULL,
    kind text NOT NULL,
    subject text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    summary text NOT NULL,
    value double precision NOT NULL,
    baseline double precision NOT NULL,
    fired_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    notified_at timestamptz NOT NULL,
    resolved_at timestamptz
);
-- One firing incident per region and fingerprint: what makes replicas page once.
CREATE UNIQUE INDEX IF NOT EXISTS monitor_alerts_firing ON monitor_alerts (region, fingerprint)
    WHERE state = 'firing';
CREATE INDEX IF NOT EXISTS monitor_alerts_list ON monitor_alerts (region, fired_at DESC, alert_id DESC);

CREATE TABLE IF NOT EXISTS monitor_alert_outbox (
    notification_id text PRIMARY KEY,
    region text NOT NULL,
    alert_id text NOT NULL,
    fingerprint text NOT NULL,
    record bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    kafka_done_at timestamptz,
    webhook_done_at timestamptz
);
CREATE INDEX IF NOT EXISTS monitor_alert_outbox_kafka ON monitor_alert_outbox (region, created_at)
    WHERE kafka_done_at IS NULL;
CREATE INDEX IF NOT EXISTS monitor_alert_outbox_webhook ON monitor_alert_outbox (region, created_at)
    WHERE webhook_done_at IS NULL;

-- ---- the operators' domain (services.monitor.operations): audit log, action history
CREATE TABLE IF NOT EXISTS monitor_audit (
    id bigserial PRIMARY KEY,
    region text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    operator text NOT NULL,
    role text NOT NULL,
    what text NOT NULL,
    target text NOT NULL,
    reason text NOT NULL,
    ok boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS monitor_audit_at ON monitor_audit (region, at DESC);
CREATE INDEX IF NOT EXISTS monitor_audit_target ON monitor_audit (region, target);

CREATE TABLE IF NOT EXISTS monitor_action_history (
    region text NOT NULL,
    partition integer NOT NULL,
    record_offset bigint NOT NULL,
    digest text NOT NULL,
    at timestamptz NOT NULL,
    event text NOT NULL,
    action_id text NOT NULL,
    kind smallint NOT NULL,
    tenant text NOT NULL,
    account_hmac text NOT NULL,
    model text NOT NULL,
    category text NOT NULL,
    record bytea,
    PRIMARY KEY (region, partition, record_offset, digest)
);
CREATE INDEX IF NOT EXISTS monitor_action_history_account
    ON monitor_action_history (region, tenant, account_hmac, at DESC);

-- ---- the console (services.monitor.console.sessions): sessions, sign-in failures
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash text PRIMARY KEY,
    operator text NOT NULL,
    csrf text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_expiry ON console_sessions (expires_at);
CREATE TABLE IF NOT EXISTS console_signin_failures (
    key_hash text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS console_signin_failures_key ON console_signin_failures (key_hash, at);
"""

DEAD_LETTERS = """
-- Signal records PostgreSQL refused with a data error (services.monitor.deadletters),
-- content cut to what the record's data policy allows; replayed_at is set when a
-- replay produced it back to its topic.
CREATE TABLE monitor_dead_letters (
    id bigserial PRIMARY KEY,
    region text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    record_offset bigint NOT NULL,
    record_key bytea,
    record bytea NOT NULL,
    error text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (region, topic, partition, record_offset)
);
CREATE INDEX monitor_dead_letters_pending ON monitor_dead_letters (region, parked_at) WHERE replayed_at IS NULL;
"""

SIGNIN_COUNTERS = """
-- Console sign-in attempts per key (a client address, or an address and a name;
-- stored hashed), counted in one statement (services.monitor.console.sessions).
-- console_signin_failures (the baseline's per-row failures) is no longer written; a
-- later migration drops it once no monitor older than this one runs.
CREATE TABLE console_signin_counters (
    key_hash text PRIMARY KEY,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    window_start timestamptz NOT NULL,
    blocked_until timestamptz
);
CREATE INDEX console_signin_counters_window ON console_signin_counters (window_start);
"""

DETECTION_LOOP = """
-- Issue 13's detection-engineering loop. When a reviewer gave a case its verdict (the
-- label export, services.monitor.labels, reads reviewed cases by it).
ALTER TABLE monitor_cases ADD COLUMN reviewed_at timestamptz;
CREATE INDEX monitor_cases_reviewed ON monitor_cases (region, reviewed_at) WHERE reviewed_at IS NOT NULL;

-- Shadows against live, per minute (services.monitor.promotion): a candidate policy
-- (kind 'policy', candidate = its version) or a shadow model (kind 'model', candidate =
-- its name, version = its versions) next to the action the live policy took. No
-- content, no account: counts only, kept as long as the other minutes.
CREATE TABLE monitor_shadow_minutes (
    region text NOT NULL,
    minute timestamptz NOT NULL,
    tenant text NOT NULL,
    kind text NOT NULL,
    candidate text NOT NULL,
    version text NOT NULL,
    live_action smallint NOT NULL,
    shadow_action smallint NOT NULL,
    incomplete boolean NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (region, kind, candidate, minute, tenant, version, live_action, shadow_action, incomplete)
);
CREATE INDEX monitor_shadow_minutes_minute ON monitor_shadow_minutes (minute);
"""

# A revoke's own actor and reason (signed tombstone headers), shown in the history
# instead of the revoked action's.
REVOKE_DETAILS = """
ALTER TABLE monitor_action_history ADD COLUMN IF NOT EXISTS revoked_by text;
ALTER TABLE monitor_action_history ADD COLUMN IF NOT EXISTS revoke_reason text;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", BASELINE),
    Migration(2, "dead letters", DEAD_LETTERS),
    Migration(3, "sign-in counters", SIGNIN_COUNTERS),
    Migration(4, "detection loop: review times, shadow minutes", DETECTION_LOOP),
    Migration(5, "action history: a revoke's own actor and reason", REVOKE_DETAILS),
)


async def migrate(pool: asyncpg.Pool, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for m in sorted(migrations, key=lambda m: m.version):
                if m.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                    )
                applied_now.append(m.version)
                log.info("schema migration applied", extra={"version": m.version, "migration": m.name})
            newer = sorted(done - {m.version for m in migrations})
            if newer:
                log.warning(
                    "the database has schema migrations this monitor does not know (a newer monitor ran)",
                    extra={"versions": newer},
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now


async def version(pool: asyncpg.Pool) -> int:
    """The highest migration applied (0: none)."""
    return await pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
