"""The monitor's PostgreSQL store against a real server: a batch applied twice
changes nothing, buckets sum into windows, cases page and filter, retention
deletes by data policy, and a rollup window is claimed once."""

from __future__ import annotations

import time
from datetime import timedelta

import asyncpg
import pytest

from services.common.errors import InvalidArgument, NotFound
from services.monitor.decisions import decision_from_signal
from services.monitor.store import CaseFilter, Retention, Store, utc
from tests.integration.monitor.monitor_support import make_signal, pg_database

REGION = "mon-1"
HOUR = 3600.0


@pytest.fixture(scope="module")
def db_url():
    with pg_database("monstore") as url:
        yield url


@pytest.fixture
async def store(db_url):
    s = Store(db_url, REGION, Retention(standard_s=10 * HOUR, metadata_only_s=5 * HOUR, zero_retention_s=1 * HOUR))
    await s.start()
    conn = await asyncpg.connect(db_url)
    await conn.execute("TRUNCATE monitor_processed, monitor_buckets, monitor_cases, monitor_rollup_sent")
    await conn.close()
    yield s
    await s.close()


def decisions(n_block: int, n_allow: int, tenant: str = "acme", policy: str = "STANDARD", t: float | None = None):
    t = time.time() if t is None else t
    out = [
        make_signal(region=REGION, tenant=tenant, data_policy=policy, action="BLOCK", time_s=t) for _ in range(n_block)
    ]
    out += [
        make_signal(region=REGION, tenant=tenant, data_policy=policy, action="ALLOW", time_s=t) for _ in range(n_allow)
    ]
    return [decision_from_signal(s, 0) for s in out]


async def snapshot(store: Store):
    buckets = await store.pool.fetch("SELECT * FROM monitor_buckets ORDER BY 1, 2, 3, 4, 5, 6")
    cases = await store.pool.fetch("SELECT case_id, status FROM monitor_cases ORDER BY 1")
    return [tuple(r) for r in buckets], [tuple(r) for r in cases]


async def test_applying_the_same_batch_twice_changes_nothing(store: Store) -> None:
    batch = decisions(3, 4)
    first = await store.apply(batch)
    assert (first.new, first.duplicates, first.cases) == (7, 0, 3)
    before = await snapshot(store)
    again = await store.apply(batch + batch[:2])  # a replay, with duplicates inside the batch too
    assert (again.new, again.duplicates, again.cases) == (0, 9, 0)
    assert await snapshot(store) == before


async def test_window_sums_buckets_of_its_minutes_only(store: Store) -> None:
    now = time.time()
    await store.apply(decisions(2, 1, t=now))
    await store.apply(decisions(5, 0, t=now - 600))  # 10 minutes ago: outside 5m, inside 1h
    end = utc(now)
    minute = end.replace(second=0, microsecond=0)
    five = await store.window_counts(minute - timedelta(minutes=4), minute + timedelta(minutes=1))
    hour = await store.window_counts(minute - timedelta(minutes=59), minute + timedelta(minutes=1))
    assert {(r.category, r.action): r.count for r in five} == {("jailbreak", 5): 2, ("none", 1): 1}
    assert {(r.category, r.action): r.count for r in hour} == {("jailbreak", 5): 7, ("none", 1): 1}
    only_block = await store.window_counts(minute - timedelta(minutes=59), minute + timedelta(minutes=1), action=5)
    assert [r.count for r in only_block] == [7]


async def test_cases_page_and_filter(store: Store) -> None:
    base = time.time() - 100
    for i in range(5):
        await store.apply(decisions(1, 0, tenant="pager", t=base + i))
    await store.apply(decisions(1, 0, tenant="other", t=base))
    seen, token = [], ""
    while True:
        page, token = await store.list_cases(CaseFilter(tenant="pager"), 2, token)
        seen += page
        if not token:
            break
    assert len(seen) == 5 and len({c.case_id for c in seen}) == 5
    assert [c.decided_at for c in seen] == sorted((c.decided_at for c in seen), reverse=True)
    assert {c.tenant for c in seen} == {"pager"}
    assert (await store.list_cases(CaseFilter(category="jailbreak", action=5), 100, ""))[0]
    assert not (await store.list_cases(CaseFilter(action=2), 100, ""))[0]
    with pytest.raises(InvalidArgument):
        await store.list_cases(CaseFilter(), 2, "not-a-token")
    with pytest.raises(NotFound):
        await store.get_case("nope")


async def test_retention_deletes_cases_by_data_policy(store: Store) -> None:
    now = time.time()
    await store.apply(decisions(1, 0, tenant="std", policy="STANDARD", t=now))
    await store.apply(decisions(1, 0, tenant="meta", policy="METADATA_ONLY", t=now))
    await store.apply(decisions(1, 0, tenant="zero", policy="ZERO_RETENTION", t=now))

    async def tenants_left(hours_later: float) -> set[str]:
        await store.purge(utc(now + hours_later * HOUR), bucket_retention_s=48 * HOUR, dedupe_retention_s=100 * HOUR)
        return {r["tenant"] for r in await store.pool.fetch("SELECT tenant FROM monitor_cases")}

    assert await tenants_left(0.5) == {"std", "meta", "zero"}
    assert await tenants_left(2) == {"std", "meta"}
    assert await tenants_left(6) == {"std"}
    assert await tenants_left(11) == set()


async def test_a_rollup_window_is_claimed_and_published_once(store: Store) -> None:
    t = (int(time.time()) // 3600 - 1) * 3600 + 90  # inside the previous hour, minute 1
    await store.apply(decisions(2, 1, tenant="roll", t=t))
    start = utc(t - 90 + 60)
    windows = await store.unsent_windows(60, utc(t - 7200), utc(time.time()))
    assert windows == [start]
    published = []
    assert await store.claim_window(60, start, published.append)
    assert not await store.claim_window(60, start, published.append)
    assert published == [[("roll", "jailbreak", 5, 2), ("roll", "none", 1, 1)]]
    assert await store.unsent_windows(60, utc(t - 7200), utc(time.time())) == []
