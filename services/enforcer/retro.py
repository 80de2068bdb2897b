"""Background screening of decided prompts, in memory: retro-screening and shadow models.

Retro-screening: every decision taken on a PARTIAL verdict, or on none, is screened
again in the background with the full cascade (docs/ARCHITECTURE.md, "Failure semantics").
Shadow models (issue 13, the promotion path): a tenant's policy may name
`classifier.shadow_models`; a sample of its prompt decisions is classified again by
each, and the action the live policy would take on the shadow's scores is published
beside the action it took. Both are the same kind of work, done by the same workers.

Why this shape:

* In memory, in region, nothing written anywhere: the job holds the text only while it
  waits, so ZERO_RETENTION tenants are re-screened too without a copy of their content
  at rest.
* Bounded queues (jobs and bytes), one per kind: under a flood the oldest decisions are
  not worth more than the newest, and memory must stay bounded, so a full queue drops
  the new job and counts it (`enforcer_retro_jobs_total{result="dropped"}`,
  `enforcer_shadow_model_jobs_total{result="dropped"}`), never blocks a decision.
* Retro before shadow: a worker takes a shadow job only when no retro job waits, and
  the two queues have separate bounds, so shadow load never drops or starves a retro
  job (a retro job waits at most for the shadow calls already in flight). Shadow
  results are a sample: on SIGTERM `drain` waits for the retro jobs only.
* Off the hot path: the classifier call is `background` (batched only when no live
  request waits) with its own long deadline, and not through the hot path's circuit
  breaker (a background timeout says nothing about serving health).
* The result is one follow-up signal naming the decision and its original action:
  SURFACE_RETRO_SCREEN with `retro_catch` when the full verdict calls for a stricter
  action (the monitor counts those per tenant and account and its rules can act on
  them, e.g. suspend an account after N retro-confirmed attacks); SURFACE_SHADOW_MODEL
  with the shadow's scores and versions and no content (the monitor's promotion
  report compares them with the live actions; nothing acts on them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from safeguards.v1 import signals_pb2

from services.common.kafka import Publisher
from services.common.privacy import RegionalKey
from services.enforcer.decision import (
    ClassifierOutcome,
    EnforcementVerdict,
    Outcome,
    RateLimitOutcome,
    Verdict,
    compare_actions,
    decide,
)
from services.enforcer.detectors import Tier0Result
from services.enforcer.detectors.textnorm import classifier_texts, normalize
from services.enforcer.policy import Policy
from services.enforcer.signals import SignalInput, build_signal, signal_record

log = logging.getLogger("safeguards.enforcer.retro")


class WholeTextClassifier(Protocol):
    async def classify_whole(
        self, texts: Sequence[str], models: tuple[str, ...], timeout_s: float, *, tenant: str = ""
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
    texts: tuple[str, ...]  # what the classifier screens: the normalised text, its payloads (in memory only)
    raw_text: str  # the text as sent: the snippet and the hash, as the data policy allows
    messages: int
    tier0: Tier0Result
    policy: Policy
    original: Outcome
    forced_categories: frozenset[str]
    #: The models to screen with: the policy's prompt or completion models.
    models: tuple[str, ...] = ()
    enqueued: float = 0.0
    #: `texts` are text as sent (a whole completion, screened window by window on the hot
    #: path): normalised and decoded here first, off the event loop, as a prompt's were.
    raw: bool = False

    @property
    def size(self) -> int:
        return sum(map(len, self.texts)) + len(self.raw_text)


@dataclass(frozen=True)
class ShadowModelJob:
    """One sampled prompt decision to classify with one shadow model. The decision's
    other inputs (tier 0, the rate-limit answer, the enforcement verdict) are kept so
    that the would-be action differs from the live one only by the classifier."""

    decision_id: str
    tenant: str
    account_hmac: str
    project: str
    model: str
    request_id: str
    texts: tuple[str, ...]  # what the classifier screened (held in memory only)
    tier0: Tier0Result
    policy: Policy
    original: Outcome
    forced_categories: frozenset[str]
    shadow_model: str
    ratelimit: RateLimitOutcome | None = None
    enforcement: EnforcementVerdict | None = None
    enqueued: float = 0.0

    @property
    def size(self) -> int:
        return sum(map(len, self.texts))


Job = RetroJob | ShadowModelJob


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
        self.shadow_jobs = Counter(
            "enforcer_shadow_model_jobs",
            "Shadow-model jobs by result: queued, dropped (queue full), same / stricter / looser (the live "
            "policy's action on the shadow's scores against the action taken), incomplete (no full verdict), "
            "failed.",
            ["result"],
            registry=registry,
        )
        self.shadow_depth = Gauge("enforcer_shadow_model_queue_depth", "Shadow-model jobs waiting.", registry=registry)


class _Lane:
    """One bounded FIFO of jobs (by count and by characters held)."""

    def __init__(self, max_jobs: int, max_bytes: int) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.jobs: deque[Job] = deque()
        self.bytes = 0
        self.busy = 0

    def offer(self, job: Job) -> bool:
        if len(self.jobs) >= self.max_jobs or self.bytes + job.size > self.max_bytes:
            return False
        self.jobs.append(job)
        self.bytes += job.size
        return True

    def take(self) -> Job:
        job = self.jobs.popleft()
        self.bytes -= job.size
        return job

    @property
    def pending(self) -> int:
        return len(self.jobs) + self.busy


class BackgroundScreener:
    """The workers and queues of retro-screening and shadow models (module docstring)."""

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
        shadow_max_jobs: int = 1_000,
        shadow_max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._classifier = classifier
        self._publisher = publisher
        self._key = key
        self._region = region
        self._snippet_chars = snippet_chars
        self.stats = stats
        self.timeout_s = timeout_s
        self._workers = workers
        self._retro = _Lane(max_jobs, max_bytes)
        self._shadow = _Lane(shadow_max_jobs, shadow_max_bytes)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- API --------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Queue a job; False (and counted) when its queue is full. Never blocks."""
        retro = isinstance(job, RetroJob)
        lane, counter = (self._retro, self.stats.jobs) if retro else (self._shadow, self.stats.shadow_jobs)
        if not job.enqueued:
            job = dataclasses.replace(job, enqueued=time.monotonic())
        if not lane.offer(job):
            counter.labels("dropped").inc()
            return False
        counter.labels("queued").inc()
        self._gauges()
        self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Retro jobs queued or being screened (shadow jobs: `shadow_pending`)."""
        return self._retro.pending

    @property
    def shadow_pending(self) -> int:
        return self._shadow.pending

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._worker(), name=f"background-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued retro job was screened: on SIGTERM, so the
        follow-ups of the last decisions are not lost with the process."""
        end = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < end:
            await asyncio.sleep(0.05)

    # -- worker -----------------------------------------------------------------------

    def _gauges(self) -> None:
        self.stats.depth.set(len(self._retro.jobs))
        self.stats.shadow_depth.set(len(self._shadow.jobs))

    async def _worker(self) -> None:
        while True:
            lane = self._retro if self._retro.jobs else self._shadow if self._shadow.jobs else None
            if lane is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = lane.take()
            self._gauges()
            lane.busy += 1
            try:
                if isinstance(job, RetroJob):
                    await self.screen(job)
                else:
                    await self.shadow(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one job's failure must not stop the worker
                retro = isinstance(job, RetroJob)
                (self.stats.jobs if retro else self.stats.shadow_jobs).labels("incomplete" if retro else "failed").inc()
                log.error(
                    "retro-screening failed" if retro else "shadow model failed",
                    extra={"decision_id": job.decision_id, "error": repr(exc)[:300]},
                )
            finally:
                lane.busy -= 1

    async def screen(self, job: RetroJob) -> signals_pb2.SafeguardSignal:
        """Screen one job with the full cascade and publish its follow-up signal."""
        started = time.perf_counter()
        texts = await asyncio.to_thread(_screened, job.texts) if job.raw else job.texts
        cl = await self._classifier.classify_whole(
            texts, job.models or job.policy.classifier_models, self.timeout_s, tenant=job.tenant
        )
        outcome = decide(job.policy, job.tier0, cl, None, forced_categories=job.forced_categories)
        signal = self._follow_up(
            job,
            signals_pb2.SURFACE_RETRO_SCREEN,
            outcome,
            cl,
            started,
            text=job.raw_text,
            messages=job.messages,
            findings=job.tier0.findings,
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

    def _follow_up(
        self,
        job: RetroJob | ShadowModelJob,
        surface: int,
        outcome: Outcome,
        cl: ClassifierOutcome,
        started: float,
        **content,
    ) -> signals_pb2.SafeguardSignal:
        """The follow-up signal of a background screen: the decision it screened again,
        that decision's identity and action, the new outcome and model versions, and
        `content` (text, messages, findings; the shadow model) as the kind allows."""
        return build_signal(
            SignalInput(
                decision_id=uuid.uuid4().hex,
                time_s=time.time(),
                region=self._region,
                tenant=job.tenant,
                account_hmac=job.account_hmac,
                project=job.project,
                model=job.model,
                request_id=job.request_id,
                surface=surface,
                outcome=outcome,
                policy=job.policy,
                latencies={"classifier": time.perf_counter() - started},
                model_versions=dict(cl.model_versions),
                retro_of_decision_id=job.decision_id,
                original_action=int(job.original.action),
                **content,
            ),
            self._key,
            self._snippet_chars,
        )

    async def shadow(self, job: ShadowModelJob) -> signals_pb2.SafeguardSignal:
        """Classify one sampled decision's text with a shadow model and publish what
        the live policy would have done on its scores (SURFACE_SHADOW_MODEL, no content)."""
        started = time.perf_counter()
        cl = await self._classifier.classify_whole(job.texts, (job.shadow_model,), self.timeout_s, tenant=job.tenant)
        outcome = decide(
            job.policy,
            job.tier0,
            cl,
            job.ratelimit,
            forced_categories=job.forced_categories,
            enforcement=job.enforcement,
        )
        signal = self._follow_up(
            job,
            signals_pb2.SURFACE_SHADOW_MODEL,
            outcome,
            cl,
            started,
            text="",
            messages=0,
            findings=(),
            shadow_model=job.shadow_model,
        )
        signal.ClearField("content")  # the decision's signal carried what the data policy allows
        self._publisher.publish(signal_record(signal))
        if outcome.verdict is not Verdict.FULL:
            result = "incomplete"
        else:
            result = compare_actions(job.original.action, outcome.action)
        self.stats.shadow_jobs.labels(result).inc()
        log.info(
            "shadow model verdict",
            extra={
                "decision_id": job.decision_id,
                "tenant": job.tenant,
                "shadow_model": job.shadow_model,
                "original_action": job.original.action.name,
                "action": outcome.action.name,
                "result": result,
            },
        )
        return signal


def _screened(raw: Sequence[str]) -> tuple[str, ...]:
    """What the classifier screens for text as sent (`textnorm.classifier_texts`)."""
    return tuple(t for text in raw for t in classifier_texts(normalize(text)))
