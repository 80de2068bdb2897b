"""Retention: review cases are deleted when their data policy's retention ends;
old buckets, processed ids and rollup marks go too, so the database stays bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter

from services.monitor.store import Store, utc

log = logging.getLogger("safeguards.monitor.retention")


class Purger:
    def __init__(
        self, store: Store, registry: CollectorRegistry, *, interval_s: float, bucket_s: float, dedupe_s: float
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.bucket_s = bucket_s
        self.dedupe_s = dedupe_s
        self.deleted = Counter(
            "safeguards_monitor_purged", "Rows deleted by retention, by kind.", ["kind"], registry=registry
        )
        self._task: asyncio.Task | None = None

    async def run_once(self, now: datetime | None = None) -> dict[str, int]:
        out = await self.store.purge(now or utc(time.time()), self.bucket_s, self.dedupe_s)
        for kind, n in out.items():
            self.deleted.labels(kind).inc(n)
        if any(out.values()):
            log.info("purged", extra=out)
        return out

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("purge failed")
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="purge")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
