"""The read side operators use (protocol-free): validated aggregate and case
queries over the store. Bad input raises InvalidArgument with what was wrong."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.errors import InvalidArgument
from services.monitor.aggregates import WINDOWS, window_bounds
from services.monitor.decisions import ACTIONS, MAX_ID_CHARS
from services.monitor.store import CASE_STATUSES, AggregateRow, CaseFilter, CaseRow, Store

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_TOKEN_CHARS = 1024
#: How far back an aggregate query may end (buckets are purged after retention anyway).
MAX_QUERY_AGE = timedelta(days=31)


@dataclass(frozen=True)
class AggregateQuery:
    window: int
    end: datetime | None = None
    tenant: str = ""
    category: str = ""
    action: int = 0
    model: str = ""


def _check_text(name: str, value: str) -> None:
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{name} is longer than {MAX_ID_CHARS} characters")


def _check_action(action: int) -> None:
    if action and action not in ACTIONS:
        raise InvalidArgument(f"action {action} is not a known Action")


class Queries:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def aggregates(self, q: AggregateQuery) -> tuple[datetime, datetime, list[AggregateRow]]:
        if q.window not in WINDOWS:
            raise InvalidArgument("window must be WINDOW_1M, WINDOW_5M or WINDOW_1H")
        for name in ("tenant", "category", "model"):
            _check_text(name, getattr(q, name))
        _check_action(q.action)
        now = datetime.fromtimestamp(time.time(), UTC)
        end = q.end or now
        if end > now + timedelta(minutes=1):
            raise InvalidArgument("end_time is in the future")
        if end < now - MAX_QUERY_AGE:
            raise InvalidArgument(f"end_time is older than {MAX_QUERY_AGE.days} days")
        start, stop = window_bounds(WINDOWS[q.window][1], end)
        rows = await self.store.window_counts(
            start, stop, tenant=q.tenant, category=q.category, action=q.action, model=q.model
        )
        return start, stop, rows

    async def list_cases(self, f: CaseFilter, page_size: int, page_token: str) -> tuple[list[CaseRow], str]:
        _check_text("tenant", f.tenant)
        _check_text("category", f.category)
        _check_action(f.action)
        if f.status and f.status not in CASE_STATUSES:
            raise InvalidArgument(f"status {f.status} is not a known CaseStatus")
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be 1..{MAX_PAGE} (0: {DEFAULT_PAGE})")
        if len(page_token) > MAX_TOKEN_CHARS:
            raise InvalidArgument("page_token is not one this service issued")
        return await self.store.list_cases(f, page_size or DEFAULT_PAGE, page_token)

    async def get_case(self, case_id: str) -> CaseRow:
        if not case_id:
            raise InvalidArgument("case_id is required")
        _check_text("case_id", case_id)
        return await self.store.get_case(case_id)
