"""The monitor's durable state in PostgreSQL (asyncpg): processed decision ids,
per-minute aggregate buckets (and the per-tenant and per-dependency minutes the
alerts read, the per-tenant and per-account minutes the overview reads), review
cases, the decisions operators may open (`monitor_decisions`), and which rollup
windows were sent.

A retro follow-up (SURFACE_RETRO_SCREEN) is not a decision: it adds to no bucket
and no decision count; it counts as a retro screen (and a retro catch) in the
overview minutes and is written onto the decision it re-screened when that decision
is stored. A retro catch that calls for FLAG or BLOCK opens a review case on the
decision it re-screened (case id = that decision's id, so the case page shows how it
was decided and what the full verdict said), unless that decision has one already.
A shadow model's follow-up (SURFACE_SHADOW_MODEL) is not a decision either: it adds
only to the shadow minutes (`monitor_shadow_minutes`, with the candidate policies
that decisions carry), which the promotion report reads.

Idempotence lives here. `apply()` runs one transaction per batch: it inserts the
batch's decision ids into `monitor_processed` (ON CONFLICT DO NOTHING RETURNING),
and only the ids that were new add to buckets and open cases. A replay, a
redelivery after a rebalance or a restart before the Kafka offsets were committed
therefore changes nothing, and a batch is all or nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.common.errors import ConfigError, InvalidArgument, NotFound
from services.monitor import deadletters
from services.monitor.decisions import BLOCK, CASE_ACTIONS, FULL, METADATA_ONLY, STANDARD, ZERO_RETENTION, Decision
from services.monitor.overview import BUCKETS, MinuteTotals, account_tally, tally
from services.monitor.schema import migrate

log = logging.getLogger("safeguards.monitor.store")

#: Review case statuses (safeguards.v1.CaseStatus).
CASE_OPEN = 1
CASE_ACTIONED = 2
CASE_DISMISSED = 3
CASE_STATUSES = (CASE_OPEN, CASE_ACTIONED, CASE_DISMISSED)
#: Runs inside `Store.apply`'s transaction with the batch's new decisions.
AfterApply = Callable[[asyncpg.Connection, list[Decision]], Awaitable[None]]


@dataclass(frozen=True)
class Retention:
    """Case retention per data policy, in seconds."""

    standard_s: float
    metadata_only_s: float
    zero_retention_s: float

    def for_policy(self, data_policy: int) -> float:
        if data_policy == STANDARD:
            return self.standard_s
        if data_policy == METADATA_ONLY:
            return self.metadata_only_s
        if data_policy == ZERO_RETENTION:
            return self.zero_retention_s
        return min(self.standard_s, self.metadata_only_s, self.zero_retention_s)


@dataclass(frozen=True)
class ApplyResult:
    new: int
    duplicates: int
    cases: int
    #: Of the new records: retro catches per tenant, and decisions per verdict completeness.
    retro_catches: dict[str, int] = field(default_factory=dict)
    verdicts: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionRow:
    """A stored decision as an operator opens it, with its retro-screen result."""

    decision_id: str
    region: str
    tenant: str
    account_hmac: str
    model: str
    surface: int
    action: int
    categories: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]
    verdict: int
    verdict_reason: str
    answered_by: str
    failed_dependencies: tuple[str, ...]
    request_id: str
    latency_ms: float | None
    data_policy: int
    policy_version: str
    decided_at: datetime
    expires_at: datetime
    retro_decision_id: str | None
    retro_action: int | None
    retro_catch: bool | None
    retro_verdict: int | None
    retro_answered_by: str | None
    retro_reasons: tuple[tuple[str, str], ...]
    retro_at: datetime | None

    @property
    def rescreened(self) -> bool:
        return self.retro_decision_id is not None


@dataclass(frozen=True)
class TopRow:
    """A tenant (account_hmac empty) or an account over a window."""

    tenant: str
    account_hmac: str
    blocked: int
    retro_catches: int


@dataclass(frozen=True)
class AggregateRow:
    tenant: str
    category: str
    action: int
    model: str
    count: int


@dataclass(frozen=True)
class CaseFilter:
    tenant: str = ""
    category: str = ""
    action: int = 0
    status: int = 0


@dataclass(frozen=True)
class CaseRow:
    case_id: str
    region: str
    tenant: str
    account_hmac: str
    model: str
    action: int
    categories: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]
    scores: tuple[tuple[str, float, float, int], ...]
    data_policy: int
    snippet: str
    characters: int
    messages: int
    text_hmac: str
    request_id: str
    policy_version: str
    surface: int
    status: int
    decided_at: datetime
    created_at: datetime
    expires_at: datetime


def minute_of(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def ensure_database(url: str) -> None:
    """Create the database of `url` if missing (connecting to `postgres` to do so)."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    dsn, name = _maintenance_dsn(url)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        log.info("database created", extra={"database": name})
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()


def _maintenance_dsn(url: str) -> tuple[str, str]:
    """The same server's `postgres` database, and the name of the one in `url`
    (works for host:port URLs and for unix sockets given as ?host=/dir)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--database-url must name a database (letters, digits, _ or -): {url!r}")
    return urlunsplit(parts._replace(path="/postgres")), name


class Store:
    def __init__(self, url: str, region: str, retention: Retention, pool_size: int = 4) -> None:
        self.url = url
        self.region = region
        self.retention = retention
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self, create: bool = True) -> None:
        try:
            if create:
                await ensure_database(self.url)
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigError(f"cannot use PostgreSQL at --database-url: {type(exc).__name__}: {exc}") from exc
        try:
            await migrate(self._pool)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigError(f"cannot migrate the schema at --database-url: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "Store.start() first"
        return self._pool

    # ---- ingest ------------------------------------------------------------------------
    async def apply(self, decisions: Sequence[Decision], after: AfterApply | None = None) -> ApplyResult:
        """Count and open cases for the decisions not seen before, in one transaction;
        `after(conn, new_decisions)` runs last in that transaction (the automated rules)."""
        unique: dict[str, Decision] = {}
        for d in decisions:
            unique.setdefault(d.decision_id, d)
        if not unique:
            return ApplyResult(0, len(decisions), 0)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO monitor_processed (decision_id) SELECT unnest($1::text[]) "
                "ON CONFLICT DO NOTHING RETURNING decision_id",
                list(unique),
            )
            new = [unique[r["decision_id"]] for r in rows]
            # Follow-ups are not decisions: retro screens count only as such, shadow
            # models' only in the shadow minutes.
            counted = [d for d in new if not d.is_follow_up]
            buckets: Counter[tuple] = Counter()
            tenants: Counter[tuple] = Counter()
            blocked: Counter[tuple] = Counter()
            degraded: Counter[tuple] = Counter()
            for d in counted:
                minute = minute_of(utc(d.time_s))
                for category in d.categories:
                    buckets[(minute, d.tenant, category, d.action, d.model)] += 1
                tenants[(minute, d.tenant)] += 1
                blocked[(minute, d.tenant)] += d.action == BLOCK
                for dependency in d.failed_dependencies:
                    degraded[(minute, dependency)] += 1
            if buckets:
                keys = sorted(buckets)  # one lock order for every writer: no deadlocks between replicas
                await conn.execute(
                    "INSERT INTO monitor_buckets (region, minute, tenant, category, action, model, count) "
                    "SELECT $1, * FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::smallint[], "
                    "$6::text[], $7::bigint[]) "
                    "ON CONFLICT (region, minute, tenant, category, action, model) "
                    "DO UPDATE SET count = monitor_buckets.count + EXCLUDED.count",
                    self.region,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [k[2] for k in keys],
                    [k[3] for k in keys],
                    [k[4] for k in keys],
                    [buckets[k] for k in keys],
                )
            if tenants:
                keys = sorted(tenants)
                await conn.execute(
                    "INSERT INTO monitor_tenant_minutes (region, minute, tenant, decisions, blocked) "
                    "SELECT $1, * FROM unnest($2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[]) "
                    "ON CONFLICT (region, minute, tenant) DO UPDATE SET "
                    "decisions = monitor_tenant_minutes.decisions + EXCLUDED.decisions, "
                    "blocked = monitor_tenant_minutes.blocked + EXCLUDED.blocked",
                    self.region,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [tenants[k] for k in keys],
                    [blocked[k] for k in keys],
                )
            if degraded:
                keys = sorted(degraded)
                await conn.execute(
                    "INSERT INTO monitor_dependency_minutes (region, minute, dependency, degraded) "
                    "SELECT $1, * FROM unnest($2::timestamptz[], $3::text[], $4::bigint[]) "
                    "ON CONFLICT (region, minute, dependency) DO UPDATE SET "
                    "degraded = monitor_dependency_minutes.degraded + EXCLUDED.degraded",
                    self.region,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [degraded[k] for k in keys],
                )
            await self._apply_overview(conn, [d for d in new if not d.shadow_of])
            await self._apply_shadows(conn, new)
            await self._apply_decisions(conn, counted, [d for d in new if d.is_retro])
            cases = [d for d in counted if d.needs_case] + catch_cases(new)
            if cases:
                await conn.executemany(
                    "INSERT INTO monitor_cases (case_id, region, tenant, account_hmac, model, action, categories, "
                    "reasons, scores, data_policy, snippet, characters, messages, text_hmac, request_id, "
                    "policy_version, surface, status, decided_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                    "$8::jsonb, $9::jsonb, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, "
                    "now() + make_interval(secs => $20)) ON CONFLICT (case_id) DO NOTHING",
                    [self._case_args(d) for d in cases],
                )
            ruled = [d for d in new if not d.shadow_of]  # a shadow acts on nothing
            if after is not None and ruled:
                await after(conn, ruled)
        return ApplyResult(
            len(new),
            len(decisions) - len(new),
            len(cases),
            dict(Counter(d.tenant for d in new if d.retro_catch)),
            dict(Counter(d.verdict for d in counted)),
        )

    async def _apply_overview(self, conn: asyncpg.Connection, new: Sequence[Decision]) -> None:
        """Add the batch to the overview's tenant and account minutes."""
        per_tenant = tally(new, _minute)
        if per_tenant:
            await conn.executemany(
                "INSERT INTO monitor_overview_minutes (region, minute, tenant, decisions, blocked, full_verdict, "
                "partial_verdict, no_verdict, retro_screens, retro_catches, latency) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
                "ON CONFLICT (region, minute, tenant) DO UPDATE SET "
                "decisions = monitor_overview_minutes.decisions + EXCLUDED.decisions, "
                "blocked = monitor_overview_minutes.blocked + EXCLUDED.blocked, "
                "full_verdict = monitor_overview_minutes.full_verdict + EXCLUDED.full_verdict, "
                "partial_verdict = monitor_overview_minutes.partial_verdict + EXCLUDED.partial_verdict, "
                "no_verdict = monitor_overview_minutes.no_verdict + EXCLUDED.no_verdict, "
                "retro_screens = monitor_overview_minutes.retro_screens + EXCLUDED.retro_screens, "
                "retro_catches = monitor_overview_minutes.retro_catches + EXCLUDED.retro_catches, "
                "latency = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0) FROM "
                "unnest(monitor_overview_minutes.latency, EXCLUDED.latency) WITH ORDINALITY AS t(a, b, i) ORDER BY i)",
                [
                    (self.region, m, t, r.decisions, r.blocked, r.full, r.partial, r.no_verdict, r.retro_screens,
                     r.retro_catches, r.latency)
                    for (m, t), r in sorted(per_tenant.items())  # one lock order for every writer
                ],
            )  # fmt: skip
        per_account = account_tally(new, _minute)
        if per_account:
            await conn.executemany(
                "INSERT INTO monitor_account_minutes (region, minute, tenant, account_hmac, blocked, retro_catches) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (region, minute, tenant, account_hmac) DO UPDATE SET "
                "blocked = monitor_account_minutes.blocked + EXCLUDED.blocked, "
                "retro_catches = monitor_account_minutes.retro_catches + EXCLUDED.retro_catches",
                [(self.region, *k, b, c) for k, (b, c) in sorted(per_account.items())],
            )

    async def _apply_shadows(self, conn: asyncpg.Connection, new: Sequence[Decision]) -> None:
        """Count the batch's shadow results per minute, tenant, candidate and action pair."""
        counts: Counter[tuple] = Counter()
        for d in new:
            r = d.shadow
            if r is not None:
                key = (r.kind, r.candidate, _minute(d), d.tenant, r.version, r.live_action, r.shadow_action)
                counts[(*key, r.incomplete)] += 1
        if not counts:
            return
        keys = sorted(counts)  # one lock order for every writer
        await conn.execute(
            "INSERT INTO monitor_shadow_minutes (region, kind, candidate, minute, tenant, version, live_action, "
            "shadow_action, incomplete, count) SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[], "
            "$5::text[], $6::text[], $7::smallint[], $8::smallint[], $9::boolean[], $10::bigint[]) "
            "ON CONFLICT (region, kind, candidate, minute, tenant, version, live_action, shadow_action, incomplete) "
            "DO UPDATE SET count = monitor_shadow_minutes.count + EXCLUDED.count",
            self.region,
            *([k[i] for k in keys] for i in range(8)),
            [counts[k] for k in keys],
        )

    async def _apply_decisions(
        self, conn: asyncpg.Connection, decisions: Sequence[Decision], retros: Sequence[Decision]
    ) -> None:
        """Keep the decisions an operator may open (a case, or a verdict that was not
        FULL: those are re-screened), then write each retro result onto its decision
        (the originals first: a follow-up in the same batch finds its decision)."""
        keep = [d for d in decisions if d.needs_case or d.verdict != FULL]
        if keep:
            await conn.executemany(
                "INSERT INTO monitor_decisions (decision_id, region, tenant, account_hmac, model, surface, action, "
                "categories, reasons, verdict, verdict_reason, answered_by, failed_dependencies, request_id, "
                "latency_ms, data_policy, policy_version, decided_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                "$8, $9::jsonb, $10, $11, $12, $13, $14, $15, $16, $17, $18, now() + make_interval(secs => $19)) "
                "ON CONFLICT (decision_id) DO NOTHING",
                [
                    (
                        d.decision_id, self.region, d.tenant, d.account_hmac, d.model, d.surface, d.action,
                        list(d.categories), json.dumps([list(r) for r in d.reasons]), d.verdict, d.verdict_reason,
                        d.answered_by, list(d.failed_dependencies), d.content.request_id,
                        None if d.latency_s is None else d.latency_s * 1000.0, d.data_policy, d.policy_version,
                        utc(d.time_s), self.retention.for_policy(d.data_policy),
                    )
                    for d in sorted(keep, key=lambda d: d.decision_id)
                ],
            )  # fmt: skip
        if retros:
            await conn.executemany(
                "UPDATE monitor_decisions SET retro_decision_id = $3, retro_action = $4, retro_catch = $5, "
                "retro_verdict = $6, retro_answered_by = $7, retro_reasons = $8::jsonb, retro_at = $9 "
                "WHERE region = $1 AND decision_id = $2",
                [
                    (
                        self.region, d.retro_of, d.decision_id, d.action, d.retro_catch, d.verdict, d.answered_by,
                        json.dumps([list(r) for r in d.reasons]), utc(d.time_s),
                    )
                    for d in sorted(retros, key=lambda d: (d.retro_of, d.time_s))
                ],
            )  # fmt: skip

    def _case_args(self, d: Decision) -> tuple:
        c = d.content
        return (
            d.decision_id,
            self.region,
            d.tenant,
            d.account_hmac,
            d.model,
            d.action,
            list(d.categories),
            json.dumps([list(r) for r in d.reasons]),
            json.dumps([list(s) for s in d.scores]),
            d.data_policy,
            c.snippet,
            c.characters,
            c.messages,
            c.text_hmac,
            c.request_id,
            d.policy_version,
            d.surface,
            CASE_OPEN,
            utc(d.time_s),
            self.retention.for_policy(d.data_policy),
        )

    # ---- aggregates --------------------------------------------------------------------
    async def window_counts(
        self,
        start: datetime,
        end: datetime,
        *,
        tenant: str = "",
        category: str = "",
        action: int = 0,
        model: str = "",
    ) -> list[AggregateRow]:
        """Sum of the buckets with start <= minute < end, per tenant/category/action/model."""
        rows = await self.pool.fetch(
            "SELECT tenant, category, action, model, sum(count)::bigint AS n FROM monitor_buckets "
            "WHERE region = $1 AND minute >= $2 AND minute < $3 "
            "AND ($4 = '' OR tenant = $4) AND ($5 = '' OR category = $5) AND ($6 = 0 OR action = $6) "
            "AND ($7 = '' OR model = $7) "
            "GROUP BY tenant, category, action, model ORDER BY tenant, category, action, model",
            self.region,
            start,
            end,
            tenant,
            category,
            action,
            model,
        )
        return [AggregateRow(r["tenant"], r["category"], r["action"], r["model"], r["n"]) for r in rows]

    # ---- the overview ------------------------------------------------------------------
    async def overview_minutes(self, start: datetime, end: datetime) -> dict[datetime, MinuteTotals]:
        """Per minute with start <= minute < end, summed over tenants."""
        rows = await self.pool.fetch(
            "SELECT minute, sum(decisions)::bigint AS decisions, sum(blocked)::bigint AS blocked, "
            "sum(full_verdict)::bigint AS full, sum(partial_verdict)::bigint AS partial, "
            "sum(no_verdict)::bigint AS none, sum(retro_screens)::bigint AS retro_screens, "
            "sum(retro_catches)::bigint AS retro_catches FROM monitor_overview_minutes "
            "WHERE region = $1 AND minute >= $2 AND minute < $3 GROUP BY minute",
            self.region,
            start,
            end,
        )
        out = {
            r["minute"]: MinuteTotals(
                r["decisions"], r["blocked"], r["full"], r["partial"], r["none"], r["retro_screens"],
                r["retro_catches"],
            )
            for r in rows
        }  # fmt: skip
        hist = await self.pool.fetch(
            "SELECT minute, i, sum(v)::bigint AS n FROM monitor_overview_minutes, "
            "unnest(latency) WITH ORDINALITY AS u(v, i) WHERE region = $1 AND minute >= $2 AND minute < $3 "
            "GROUP BY minute, i",
            self.region,
            start,
            end,
        )
        for r in hist:
            row = out.get(r["minute"])
            if row is not None and 1 <= r["i"] <= BUCKETS:
                row.latency[r["i"] - 1] = r["n"]
        return out

    async def top_tenants(self, start: datetime, end: datetime, by: str, limit: int) -> list[TopRow]:
        """The tenants with the most blocks (by="blocked") or retro catches ("retro_catches")."""
        column = _top_column(by)
        rows = await self.pool.fetch(
            "SELECT tenant, sum(blocked)::bigint AS blocked, sum(retro_catches)::bigint AS retro_catches "
            "FROM monitor_overview_minutes WHERE region = $1 AND minute >= $2 AND minute < $3 GROUP BY tenant "
            f"HAVING sum({column}) > 0 ORDER BY sum({column}) DESC, tenant LIMIT $4",  # column: checked
            self.region,
            start,
            end,
            limit,
        )
        return [TopRow(r["tenant"], "", r["blocked"], r["retro_catches"]) for r in rows]

    async def top_accounts(self, start: datetime, end: datetime, by: str, limit: int) -> list[TopRow]:
        column = _top_column(by)
        rows = await self.pool.fetch(
            "SELECT tenant, account_hmac, sum(blocked)::bigint AS blocked, "
            "sum(retro_catches)::bigint AS retro_catches FROM monitor_account_minutes "
            "WHERE region = $1 AND minute >= $2 AND minute < $3 GROUP BY tenant, account_hmac "
            f"HAVING sum({column}) > 0 ORDER BY sum({column}) DESC, tenant, account_hmac LIMIT $4",
            self.region,
            start,
            end,
            limit,
        )
        return [TopRow(r["tenant"], r["account_hmac"], r["blocked"], r["retro_catches"]) for r in rows]

    # ---- stored decisions --------------------------------------------------------------
    async def get_decision(self, decision_id: str) -> DecisionRow:
        row = await self.pool.fetchrow(
            "SELECT * FROM monitor_decisions WHERE region = $1 AND decision_id = $2", self.region, decision_id
        )
        if row is None:
            raise NotFound(f"no stored decision {decision_id!r} in region {self.region}")
        return _decision(row)

    async def find_decision(self, decision_id: str) -> DecisionRow | None:
        try:
            return await self.get_decision(decision_id)
        except NotFound:
            return None

    async def account_decisions(self, tenant: str, account_hmac: str, limit: int) -> list[DecisionRow]:
        """An account's stored decisions (cases, partial or missing verdicts), newest first."""
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_decisions WHERE region = $1 AND tenant = $2 AND account_hmac = $3 "
            "ORDER BY decided_at DESC, decision_id DESC LIMIT $4",
            self.region,
            tenant,
            account_hmac,
            limit,
        )
        return [_decision(r) for r in rows]

    async def recent_retro_catches(self, since: datetime, limit: int) -> list[DecisionRow]:
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_decisions WHERE region = $1 AND retro_catch AND retro_at >= $2 "
            "ORDER BY retro_at DESC, decision_id DESC LIMIT $3",
            self.region,
            since,
            limit,
        )
        return [_decision(r) for r in rows]

    # ---- review cases ------------------------------------------------------------------
    async def list_cases(self, f: CaseFilter, page_size: int, page_token: str) -> tuple[list[CaseRow], str]:
        after_time, after_id = _decode_token(page_token) if page_token else (None, "")
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_cases WHERE region = $1 "
            "AND ($2 = '' OR tenant = $2) AND ($3 = '' OR $3 = ANY(categories)) AND ($4 = 0 OR action = $4) "
            "AND ($5 = 0 OR status = $5) "
            "AND ($6::timestamptz IS NULL OR (decided_at, case_id) < ($6, $7)) "
            "ORDER BY decided_at DESC, case_id DESC LIMIT $8",
            self.region,
            f.tenant,
            f.category,
            f.action,
            f.status,
            after_time,
            after_id,
            page_size + 1,
        )
        cases = [_case(r) for r in rows[:page_size]]
        token = _encode_token(cases[-1].decided_at, cases[-1].case_id) if len(rows) > page_size else ""
        return cases, token

    async def get_case(self, case_id: str) -> CaseRow:
        row = await self.pool.fetchrow(
            "SELECT * FROM monitor_cases WHERE region = $1 AND case_id = $2", self.region, case_id
        )
        if row is None:
            raise NotFound(f"no case {case_id!r} in region {self.region}")
        return _case(row)

    async def account_cases(self, tenant: str, account_hmac: str, limit: int) -> list[CaseRow]:
        """An account's cases, newest first."""
        rows = await self.pool.fetch(
            "SELECT * FROM monitor_cases WHERE region = $1 AND tenant = $2 AND account_hmac = $3 "
            "ORDER BY decided_at DESC, case_id DESC LIMIT $4",
            self.region,
            tenant,
            account_hmac,
            limit,
        )
        return [_case(r) for r in rows]

    async def set_case_status(self, case_id: str, status: int) -> CaseRow:
        if status not in CASE_STATUSES:
            raise InvalidArgument(f"unknown case status {status}")
        row = await self.pool.fetchrow(
            "UPDATE monitor_cases SET status = $3::smallint, "
            "reviewed_at = CASE WHEN $3::smallint = 1 THEN NULL ELSE now() END "
            "WHERE region = $1 AND case_id = $2 RETURNING *",
            self.region,
            case_id,
            status,
        )
        if row is None:
            raise NotFound(f"no case {case_id!r} in region {self.region}")
        return _case(row)

    # ---- retention ---------------------------------------------------------------------
    async def purge(self, now: datetime, bucket_retention_s: float, dedupe_retention_s: float) -> dict[str, int]:
        """Delete expired cases, old buckets, old processed ids, old dead letters and old rollup marks."""
        out = {}
        async with self.pool.acquire() as conn:
            out["cases"] = _count(await conn.execute("DELETE FROM monitor_cases WHERE expires_at <= $1", now))
            out["decisions"] = _count(await conn.execute("DELETE FROM monitor_decisions WHERE expires_at <= $1", now))
            bucket_cut = now - timedelta(seconds=bucket_retention_s)
            out["buckets"] = _count(await conn.execute("DELETE FROM monitor_buckets WHERE minute < $1", bucket_cut))
            for table in (
                "monitor_tenant_minutes",
                "monitor_dependency_minutes",
                "monitor_overview_minutes",
                "monitor_account_minutes",
                "monitor_shadow_minutes",
            ):
                out["buckets"] += _count(await conn.execute(f"DELETE FROM {table} WHERE minute < $1", bucket_cut))
            out["processed"] = _count(
                await conn.execute(
                    "DELETE FROM monitor_processed WHERE processed_at < $1",
                    now - timedelta(seconds=dedupe_retention_s),
                )
            )
            out["dead_letters"] = await deadletters.purge(conn, now - timedelta(seconds=dedupe_retention_s))
            out["rollup_marks"] = _count(
                await conn.execute("DELETE FROM monitor_rollup_sent WHERE window_start < $1", bucket_cut)
            )
        return out

    # ---- rollup ------------------------------------------------------------------------
    async def unsent_windows(self, window_s: int, first: datetime, last_end: datetime) -> list[datetime]:
        """Starts of the windows of `window_s` with data, start >= first and end <= last_end, not yet sent."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT to_timestamp(floor(extract(epoch FROM minute) / $2) * $2) AS start "
            "FROM monitor_buckets WHERE region = $1 AND minute >= $3 AND minute < $4 ORDER BY start",
            self.region,
            window_s,
            first,
            last_end,
        )
        starts = [
            r["start"] for r in rows if r["start"] >= first and r["start"] + timedelta(seconds=window_s) <= last_end
        ]
        if not starts:
            return []
        sent = await self.pool.fetch(
            "SELECT window_start FROM monitor_rollup_sent WHERE region = $1 AND window_seconds = $2 "
            "AND window_start = ANY($3::timestamptz[])",
            self.region,
            window_s,
            starts,
        )
        done = {r["window_start"] for r in sent}
        return [s for s in starts if s not in done]

    async def claim_window(self, window_s: int, start: datetime, publish) -> bool:
        """Mark a window sent and publish it in one transaction: of several replicas
        only the one whose insert wins publishes. `publish(counts)` gets the counts."""
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                "INSERT INTO monitor_rollup_sent (region, window_seconds, window_start) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING true",
                self.region,
                window_s,
                start,
            )
            if not claimed:
                return False
            rows = await conn.fetch(
                "SELECT tenant, category, action, sum(count)::bigint AS n FROM monitor_buckets "
                "WHERE region = $1 AND minute >= $2 AND minute < $3 "
                "GROUP BY tenant, category, action ORDER BY tenant, category, action",
                self.region,
                start,
                start + timedelta(seconds=window_s),
            )
            publish([(r["tenant"], r["category"], r["action"], r["n"]) for r in rows])
            return True


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    return int(status.rsplit(" ", 1)[-1])


def _minute(d: Decision) -> datetime:
    return minute_of(utc(d.time_s))


def _top_column(by: str) -> str:
    if by not in ("blocked", "retro_catches"):
        raise InvalidArgument("top rows are by 'blocked' or 'retro_catches'")
    return by


def _decision(r: asyncpg.Record) -> DecisionRow:
    retro_reasons = r["retro_reasons"]
    return DecisionRow(
        decision_id=r["decision_id"],
        region=r["region"],
        tenant=r["tenant"],
        account_hmac=r["account_hmac"],
        model=r["model"],
        surface=r["surface"],
        action=r["action"],
        categories=tuple(r["categories"]),
        reasons=tuple(tuple(x) for x in json.loads(r["reasons"])),
        verdict=r["verdict"],
        verdict_reason=r["verdict_reason"],
        answered_by=r["answered_by"],
        failed_dependencies=tuple(r["failed_dependencies"]),
        request_id=r["request_id"],
        latency_ms=r["latency_ms"],
        data_policy=r["data_policy"],
        policy_version=r["policy_version"],
        decided_at=r["decided_at"],
        expires_at=r["expires_at"],
        retro_decision_id=r["retro_decision_id"],
        retro_action=r["retro_action"],
        retro_catch=r["retro_catch"],
        retro_verdict=r["retro_verdict"],
        retro_answered_by=r["retro_answered_by"],
        retro_reasons=tuple(tuple(x) for x in json.loads(retro_reasons)) if retro_reasons else (),
        retro_at=r["retro_at"],
    )


def _case(r: asyncpg.Record) -> CaseRow:
    return CaseRow(
        case_id=r["case_id"],
        region=r["region"],
        tenant=r["tenant"],
        account_hmac=r["account_hmac"],
        model=r["model"],
        action=r["action"],
        categories=tuple(r["categories"]),
        reasons=tuple(tuple(x) for x in json.loads(r["reasons"])),
        scores=tuple(tuple(x) for x in json.loads(r["scores"])),
        data_policy=r["data_policy"],
        snippet=r["snippet"],
        characters=r["characters"],
        messages=r["messages"],
        text_hmac=r["text_hmac"],
        request_id=r["request_id"],
        policy_version=r["policy_version"],
        surface=r["surface"],
        status=r["status"],
        decided_at=r["decided_at"],
        created_at=r["created_at"],
        expires_at=r["expires_at"],
    )


def _encode_token(decided_at: datetime, case_id: str) -> str:
    raw = json.dumps([decided_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, case_id = json.loads(raw)
        parsed = datetime.fromisoformat(when)
        if parsed.tzinfo is None or not isinstance(case_id, str):
            raise ValueError("bad token")
        return parsed, case_id
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc


def catch_cases(new: Sequence[Decision]) -> list[Decision]:
    """The review cases retro catches open: one per re-screened decision whose full
    verdict calls for FLAG or BLOCK, filed under that decision's id with the re-screen's
    reasons, scores and the content its data policy kept."""
    return [dataclasses.replace(d, decision_id=d.retro_of) for d in new if d.retro_catch and d.action in CASE_ACTIONS]
