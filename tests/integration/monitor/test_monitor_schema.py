"""The monitor's schema migrations on real PostgreSQL.

Proves: a fresh database gets every migration once, recorded in schema_migrations,
and a second run applies nothing; replicas migrating at the same moment apply each
migration exactly once (the advisory lock) and all start; a database an older
monitor created (tables, no schema_migrations) adopts the migrations and keeps its
rows; a database a newer monitor migrated still starts.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.monitor.schema import BASELINE, MIGRATIONS, migrate
from tests.integration.monitor.monitor_support import pg_database

VERSIONS = [m.version for m in MIGRATIONS]


@pytest.fixture
def db_url():
    with pg_database("monschema") as url:
        yield url


async def applied(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [(r["version"], r["name"]) for r in await conn.fetch("SELECT * FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()


async def test_a_fresh_database_gets_every_migration_once(db_url) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        assert await migrate(pool) == VERSIONS
        assert await migrate(pool) == []
        tables = {
            r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        for table in ("monitor_processed", "monitor_rule_actions", "monitor_alert_outbox", "monitor_audit",
                      "console_sessions", "monitor_cases", "monitor_decisions"):  # fmt: skip
            assert table in tables
    finally:
        await pool.close()
    assert [v for v, _ in await applied(db_url)] == VERSIONS


async def test_replicas_starting_together_apply_each_migration_once(db_url) -> None:
    pools = [await asyncpg.create_pool(db_url, min_size=1, max_size=1) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert sorted(v for r in results for v in r) == VERSIONS  # each applied by exactly one replica
    assert [v for v, _ in await applied(db_url)] == VERSIONS


async def test_a_database_an_older_monitor_created_adopts_the_migrations_and_keeps_its_rows(db_url) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(BASELINE)  # what the monitor created before migrations existed
        await conn.execute("INSERT INTO monitor_processed (decision_id) VALUES ('kept-1')")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        assert await migrate(pool) == VERSIONS
        assert await pool.fetchval("SELECT count(*) FROM monitor_processed WHERE decision_id = 'kept-1'") == 1
    finally:
        await pool.close()


async def test_a_database_a_newer_monitor_migrated_still_starts(db_url) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        await migrate(pool)
        await pool.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from the future')")
        assert await migrate(pool) == []
    finally:
        await pool.close()
