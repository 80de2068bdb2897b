"""Sliding-window aggregates and their Prometheus metrics.

PostgreSQL holds per-minute buckets; a window of N minutes ending at minute M is
the sum of the buckets M-N+1 .. M (the current, partial minute included). The
metrics are a snapshot recomputed every few seconds by one task and exposed by a
custom collector, so label sets that vanished from the window vanish from
/metrics too. Cardinality is bounded: the top-N tenants of the last hour keep
their name and the rest are summed as `_other`; categories and models are capped
by `BoundedLabels`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.metrics import BoundedLabels
from services.monitor.decisions import ACTIONS
from services.monitor.store import AggregateRow, Store, minute_of, utc

#: Window enum value (monitor.proto Window) -> (label, seconds).
WINDOWS = {1: ("1m", 60), 2: ("5m", 300), 3: ("1h", 3600)}
OTHER = BoundedLabels.OVERFLOW

log = logging.getLogger("safeguards.monitor.aggregates")


def window_bounds(window_s: int, end: datetime) -> tuple[datetime, datetime]:
    """[start, stop) of the sliding window of `window_s` whose last minute holds `end`."""
    stop = minute_of(end) + timedelta(minutes=1)
    return stop - timedelta(seconds=window_s), stop


def top_tenants(rows: Iterable[AggregateRow], n: int) -> set[str]:
    totals: Counter[str] = Counter()
    for r in rows:
        totals[r.tenant] += r.count
    return {t for t, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]}


class AggregateMetrics(Collector):
    """`safeguards_monitor_decisions{window, tenant, category, action, model}`: decisions
    in each sliding window ending now, from the last snapshot."""

    def __init__(self, registry: CollectorRegistry, top_n: int, max_labels: int) -> None:
        self.top_n = top_n
        self._categories = BoundedLabels(max_labels)
        self._models = BoundedLabels(max_labels)
        self._snapshot: dict[tuple[str, str, str, str, str], int] = {}
        self.refreshed_at = 0.0
        registry.register(self)

    def describe(self):
        return [GaugeMetricFamily("safeguards_monitor_decisions", "Decisions in the sliding window ending now.")]

    def collect(self):
        g = GaugeMetricFamily(
            "safeguards_monitor_decisions",
            "Decisions in the sliding window ending now (tenants beyond the top N of the last hour as _other).",
            labels=["window", "tenant", "category", "action", "model"],
        )
        for labels, value in sorted(self._snapshot.items()):
            g.add_metric(list(labels), value)
        yield g
        yield GaugeMetricFamily(
            "safeguards_monitor_aggregates_refreshed_timestamp_seconds",
            "When the windowed aggregates were last recomputed.",
            value=self.refreshed_at,
        )

    def update(self, per_window: dict[str, list[AggregateRow]]) -> None:
        keep = top_tenants(per_window.get("1h", []), self.top_n)
        snap: dict[tuple[str, str, str, str, str], int] = defaultdict(int)
        for label, rows in per_window.items():
            for r in rows:
                tenant = r.tenant if r.tenant in keep else OTHER
                key = (
                    label,
                    tenant,
                    self._categories(r.category),
                    ACTIONS.get(r.action, "UNKNOWN"),
                    self._models(r.model),
                )
                snap[key] += r.count
        self._snapshot = dict(snap)
        self.refreshed_at = time.time()


class AggregateRefresher:
    """Recomputes the metric snapshot every `interval_s` (one task per process)."""

    def __init__(self, store: Store, metrics: AggregateMetrics, interval_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def refresh(self, now: datetime | None = None) -> None:
        end = now or utc(time.time())
        per_window = {}
        for label, seconds in WINDOWS.values():
            start, stop = window_bounds(seconds, end)
            per_window[label] = await self.store.window_counts(start, stop)
        self.metrics.update(per_window)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep the last snapshot; the refreshed timestamp shows staleness
                log.exception("aggregate refresh failed")
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aggregate-refresh")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
