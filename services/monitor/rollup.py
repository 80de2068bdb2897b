"""Cross-region rollup: the only producer to `safeguards.rollup.global`.

Every `interval_s` the windows (1m, 5m, 1h, aligned to the epoch) that closed more
than `grace_s` ago and hold data are summed per tenant / category / action and
published as one `RollupRecord` per region + window, keyed by both. Nothing else is
in it: no model, no account, request or project identifier, nothing derived from
content (the record is built field by field from the bucket counts, never copied
from a signal). A window is claimed in PostgreSQL in the transaction that reads its
counts, so of several replicas exactly one publishes it; the record id
`<region>/<window>/<start>` lets consumers drop a duplicate from a retry.
Signals arriving after their window was rolled up still count locally, not globally.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from safeguards.v1 import monitor_pb2

from services.common.kafka import Publisher
from services.common.pbtime import timestamp
from services.common.spool import Record
from services.common.topics import ROLLUP_TOPIC
from services.monitor.aggregates import WINDOWS
from services.monitor.store import Store, utc

log = logging.getLogger("safeguards.monitor.rollup")


def rollup_record(
    region: str, window: int, start: datetime, counts: list[tuple[str, str, int, int]]
) -> monitor_pb2.RollupRecord:
    seconds = WINDOWS[window][1]
    rec = monitor_pb2.RollupRecord(
        region=region,
        window=window,
        window_start=timestamp(start),
        window_end=timestamp(start + timedelta(seconds=seconds)),
    )
    for tenant, category, action, count in counts:
        rec.counts.add(tenant=tenant, category=category, action=action, count=count)
    return rec


class RollupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "safeguards_monitor_rollup_records",
            "Rollup records handed to the publisher.",
            ["window"],
            registry=registry,
        )


class Rollup:
    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        region: str,
        metrics: RollupMetrics,
        interval_s: float,
        grace_s: float,
        lookback_s: float,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.region = region
        self.metrics = metrics
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.lookback_s = lookback_s
        self._task: asyncio.Task | None = None

    async def run_once(self, now: datetime | None = None) -> int:
        """Publish every closed, unsent window; returns how many records were published."""
        now = now or utc(time.time())
        closed_before = now - timedelta(seconds=self.grace_s)
        first = now - timedelta(seconds=self.lookback_s)
        published = 0
        for window, (label, seconds) in WINDOWS.items():
            for start in await self.store.unsent_windows(seconds, first, closed_before):

                def publish(counts, window=window, start=start, label=label) -> None:
                    rec = rollup_record(self.region, window, start, counts)
                    key = f"{self.region}/{label}/{int(start.timestamp())}"
                    self.publisher.publish(
                        Record(
                            topic=ROLLUP_TOPIC,
                            key=key.encode(),
                            value=rec.SerializeToString(),
                            record_id=key,
                            headers=(("type", b"safeguards.v1.RollupRecord"),),
                        )
                    )
                    self.metrics.records.labels(label).inc()

                if await self.store.claim_window(seconds, start, publish):
                    published += 1
        return published

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except Exception:  # the next round retries: unsent windows stay unsent
                log.exception("rollup failed")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollup")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
