"""The monitor's grpc.health.v1 status follows its signal consumer: a consumer that
has not been able to apply its batch for `--consumer-stuck-seconds` (PostgreSQL
down, a table locked or gone, a privilege revoked) turns every service of the
process NOT_SERVING, and back to SERVING once a batch goes through. A monitor that
cannot store what it consumes is not doing its job, however well it answers
queries; a readiness probe or load balancer then sees it, even when PostgreSQL is
too far gone for the monitor's own alerts to be written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from grpc_health.v1 import health_pb2

log = logging.getLogger("safeguards.monitor.health")


class ConsumerHealth:
    def __init__(self, stuck_seconds: Callable[[], float], after_s: float, interval_s: float = 1.0) -> None:
        self.stuck_seconds = stuck_seconds
        self.after_s = after_s
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def attach(self, server) -> None:
        """`App.on_server` hook: watch the consumer and set the server's health."""
        names = ["", *(b.full_name for b in server.app.bindings)]
        self._task = asyncio.create_task(self._run(server.health, names), name="consumer-health")

    async def _run(self, health, names: list[str]) -> None:
        serving = True
        while True:
            await asyncio.sleep(self.interval_s)
            stuck = self.stuck_seconds()
            ok = stuck < self.after_s
            if ok == serving:
                continue
            serving = ok
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                await health.set(name, status)
            if ok:
                log.info("signal consumer applies batches again: serving")
            else:
                log.error("signal consumer stuck: not serving", extra={"stuck_s": round(stuck, 1)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
