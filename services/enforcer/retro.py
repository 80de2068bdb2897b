"""Retro-screening: every decision taken on a PARTIAL verdict, or on none, is screened
again in the background with the full cascade (DESIGN.md "Never silently off").

Why this shape:

* In memory, in region, nothing written anywhere: the job holds the text only while it
  waits, so ZERO_RETENTION tenants are re-screened too without a copy of their content
  at rest.
* A bounded queue (jobs and bytes): under a flood the oldest decisions are not worth
  more than the newest, and memory must stay bounded, so a full queue drops the new job
  and counts it (`enforcer_retro_jobs_total{result="dropped"}`), never blocks a decision.
* Off the hot path: the classifier call is `background` (batched only when no live
  request waits) with its own long deadline, and not through the hot path's circuit
  breaker (a retro timeout says nothing about serving health).
* The result is one follow-up signal (SURFACE_RETRO_SCREEN) naming the decision it
  re-screened, its original action, and `retro_catch` when the full verdict calls for a
  stricter action: the monitor counts those per tenant and account and its rules can act
  on them (e.g. suspend an account after N retro-confirmed attacks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from safeguards.v1 import signals_pb2

from services.common.kafka import Publisher
from services.common.privacy import RegionalKey
from services.enforcer.decision import ClassifierOutcome, Outcome, Verdict, decide
from services.enforcer.detectors import Tier0Result
from services.enforcer.policy import Policy
from services.enforcer.signals import SignalInput, build_signal, signal_record

log = logging.getLogger("safeguards.enforcer.retro")


class WholeTextClassifier(Protocol):
    async def classify_whole(
        self, text: str, models: tuple[str, ...], timeout_s: float, *, tenant: str = ""
    ) -> ClassifierOutcome: ...


@dataclass(frozen=True)
class RetroJob:
    """One decision to screen again: what the follow-up signal needs, and the text."""

    decision_id: str
    tenant: str
    account_hmac: str
    project: str
    model: str
    request_id: str
    text: str  # the normalised text the classifier screens (held in memory only)
    raw_text: str  # the text as sent: the snippet and the hash, as the data policy allows
    messages: int
    tier0: Tier0Result
    policy: Policy
    original: Outcome
    forced_categories: frozenset[str]
    enqueued: float = 0.0

    @property
    def size(self) -> int:
        return len(self.text) + len(self.raw_text)


class RetroStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "enforcer_retro_jobs",
            "Retro-screening jobs by result: queued, dropped (queue full), caught (the full verdict is "
            "stricter than the decision), cleared (it is not), incomplete (still no full verdict).",
            ["result"],
            registry=registry,
        )
        self.depth = Gauge("enforcer_retro_queue_depth", "Retro-screening jobs waiting.", registry=registry)
        self.lag = Histogram(
            "enforcer_retro_lag_seconds",
            "From the decision to its retro verdict.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )


class RetroScreener:
    def __init__(
        self,
        *,
        classifier: WholeTextClassifier,
        publisher: Publisher,
        key: RegionalKey,
        region: str,
        snippet_chars: int,
        stats: RetroStats,
        max_jobs: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        timeout_s: float = 30.0,
        workers: int = 1,
    ) -> None:
        self._classifier = classifier
        self._publisher = publisher
        self._key = key
        self._region = region
        self._snippet_chars = snippet_chars
        self.stats = stats
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._workers = workers
        self._queue: deque[RetroJob] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._busy = 0

    # -- API --------------------------------------------------------------------------

    def submit(self, job: RetroJob) -> bool:
        """Queue a job; False (and counted) when the queue is full. Never blocks."""
        if len(self._queue) >= self.max_jobs or self._bytes + job.size > self.max_bytes:
            self.stats.jobs.labels("dropped").inc()
            return False
        if not job.enqueued:
            job = dataclasses.replace(job, enqueued=time.monotonic())
        self._queue.append(job)
        self._bytes += job.size
        self.stats.jobs.labels("queued").inc()
        self.stats.depth.set(len(self._queue))
        self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Jobs queued or being screened."""
        return len(self._queue) + self._busy

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._worker(), name=f"retro-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued job was screened: on SIGTERM, so the
        follow-ups of the last decisions are not lost with the process."""
        end = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < end:
            await asyncio.sleep(0.05)

    # -- worker -----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._queue.popleft()
            self._bytes -= job.size
            self.stats.depth.set(len(self._queue))
            self._busy += 1
            try:
                await self.screen(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one job's failure must not stop the worker
                self.stats.jobs.labels("incomplete").inc()
                log.error("retro-screening failed", extra={"decision_id": job.decision_id, "error": repr(exc)[:300]})
            finally:
                self._busy -= 1

    async def screen(self, job: RetroJob) -> signals_pb2.SafeguardSignal:
        """Screen one job with the full cascade and publish its follow-up signal."""
        started = time.perf_counter()
        cl = await self._classifier.classify_whole(
            job.text, job.policy.classifier_models, self.timeout_s, tenant=job.tenant
        )
        outcome = decide(job.policy, job.tier0, cl, None, forced_categories=job.forced_categories)
        signal = build_signal(
            SignalInput(
                decision_id=uuid.uuid4().hex,
                time_s=time.time(),
                region=self._region,
                tenant=job.tenant,
                account_hmac=job.account_hmac,
                project=job.project,
                model=job.model,
                request_id=job.request_id,
                surface=signals_pb2.SURFACE_RETRO_SCREEN,
                text=job.raw_text,
                messages=job.messages,
                findings=job.tier0.findings,
                outcome=outcome,
                policy=job.policy,
                latencies={"classifier": time.perf_counter() - started},
                model_versions=dict(cl.model_versions),
                retro_of_decision_id=job.decision_id,
                original_action=int(job.original.action),
            ),
            self._key,
            self._snippet_chars,
        )
        self._publisher.publish(signal_record(signal))
        if outcome.verdict is not Verdict.FULL:
            result = "incomplete"
        else:
            result = "caught" if signal.retro_catch else "cleared"
        self.stats.jobs.labels(result).inc()
        if job.enqueued:
            self.stats.lag.observe(time.monotonic() - job.enqueued)
        log.log(
            logging.WARNING if signal.retro_catch else logging.INFO,
            "retro verdict",
            extra={
                "decision_id": job.decision_id,
                "tenant": job.tenant,
                "original_action": job.original.action.name,
                "action": outcome.action.name,
                "result": result,
                "verdict": outcome.verdict.name,
            },
        )
        return signal
