"""The monitor's durable state in PostgreSQL (asyncpg): processed decision ids,
per-minute aggregate buckets, review cases, and which rollup windows were sent.

Idempotence lives here. `apply()` runs one transaction per batch: it inserts the
batch's decision ids into `monitor_processed` (ON CONFLICT DO NOTHING RETURNING),
and only the ids that were new add to buckets and open cases. A replay, a
redelivery after a rebalance or a restart before the Kafka offsets were committed
therefore changes nothing, and a batch is all or nothing.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.common.errors import ConfigError, InvalidArgument, NotFound
from services.monitor.decisions import METADATA_ONLY, STANDARD, ZERO_RETENTION, Decision

log = logging.getLogger("safeguards.monitor.store")

SCHEMA = """
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

CREATE TABLE IF NOT EXISTS monitor_rollup_sent (
    region text NOT NULL,
    window_seconds integer NOT NULL,
    window_start timestamptz NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, window_seconds, window_start)
);
"""

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
        async with self._pool.acquire() as conn:
            # One schema creator at a time when several replicas start together.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(5405)")
                await conn.execute(SCHEMA)

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
            buckets: Counter[tuple] = Counter()
            for d in new:
                minute = minute_of(utc(d.time_s))
                for category in d.categories:
                    buckets[(minute, d.tenant, category, d.action, d.model)] += 1
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
            cases = [d for d in new if d.needs_case]
            if cases:
                await conn.executemany(
                    "INSERT INTO monitor_cases (case_id, region, tenant, account_hmac, model, action, categories, "
                    "reasons, scores, data_policy, snippet, characters, messages, text_hmac, request_id, "
                    "policy_version, surface, status, decided_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                    "$8::jsonb, $9::jsonb, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, "
                    "now() + make_interval(secs => $20)) ON CONFLICT (case_id) DO NOTHING",
                    [self._case_args(d) for d in cases],
                )
            if after is not None and new:
                await after(conn, new)
        return ApplyResult(len(new), len(decisions) - len(new), len(cases))

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
            "UPDATE monitor_cases SET status = $3 WHERE region = $1 AND case_id = $2 RETURNING *",
            self.region,
            case_id,
            status,
        )
        if row is None:
            raise NotFound(f"no case {case_id!r} in region {self.region}")
        return _case(row)

    # ---- retention ---------------------------------------------------------------------
    async def purge(self, now: datetime, bucket_retention_s: float, dedupe_retention_s: float) -> dict[str, int]:
        """Delete expired cases, old buckets, old processed ids and old rollup marks."""
        out = {}
        async with self.pool.acquire() as conn:
            out["cases"] = _count(await conn.execute("DELETE FROM monitor_cases WHERE expires_at <= $1", now))
            bucket_cut = now - timedelta(seconds=bucket_retention_s)
            out["buckets"] = _count(await conn.execute("DELETE FROM monitor_buckets WHERE minute < $1", bucket_cut))
            out["processed"] = _count(
                await conn.execute(
                    "DELETE FROM monitor_processed WHERE processed_at < $1",
                    now - timedelta(seconds=dedupe_retention_s),
                )
            )
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
