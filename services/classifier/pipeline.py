"""The classifier's data plane: validate a request, run its models, return per-text,
per-model, per-label scores.  It knows no protocol (kserve's data plane): the gRPC
layer converts messages to these calls and these types back.

For each model a request names (or the default model):

* an ``onnxruntime`` model: texts are cut into windows (``tokenize.py``), the rows go
  through the version's batcher, and each text's score is the max over its windows (min
  for ``benign``), so content hidden mid-document still counts;
* a ``cascade``: the first stage scores every text; texts whose unsafe score (max
  non-benign probability) lies inside the band are escalated to the second stage, which
  answers for them; ``answered_by`` says which stage answered.  A verdict comes within
  the deadline, always: when the second stage is refused at admission (predicted to miss
  the deadline), overloaded, unavailable, or has not answered ``reply_margin`` before the
  deadline, the escalated texts are answered with the first stage's scores, marked
  ``PARTIAL`` with the reason (``deadline``, ``overloaded``, ``unavailable``).  The first
  stage itself is never replaced by a made-up verdict: if it cannot answer in time the
  request is DEADLINE_EXCEEDED;
  a cascade whose manifest names ``segments`` also cuts each text into segments
  (sentences, lines: ``segment.py``): the first stage scores every segment as well as
  every window, the second stage the windows plus the ``top_k`` segments the first stage
  found most unsafe, and a text scores as its worst window or segment, so an attack after
  a benign sentence or inside a benign document scores as it would alone;
* its ``shadow_models`` run afterwards as background work on the same texts (their rows
  only run when no live row waits): their scores go to metrics and logs, never into the
  answer, and they never delay it.

Every batcher deadline is the caller's deadline minus ``reply_margin``: work is admitted
only if its answer can still be sent before the caller gives up.

Privacy: texts are never logged; log lines and error messages carry counts, lengths and
indices only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.classifier import manifest as mf
from services.classifier import segment
from services.classifier.batcher import InferenceFailed, lowest_priority
from services.classifier.repository import READY, LoadedVersion, ModelRepository
from services.classifier.stats import ClassifierStats
from services.classifier.tokenize import max_over_windows
from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    WouldMissDeadline,
)

log = logging.getLogger("safeguards.classifier.pipeline")
CHARS_PER_TOKEN = 4  # a window of N tokens covers about 4N characters of English text

FULL = "FULL"
PARTIAL = "PARTIAL"
# Why a cascade's later stage did not answer (ModelScores.partial_reason).
DEADLINE = "deadline"
OVERLOADED = "overloaded"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    threshold: float  # 0.0 when the label has no threshold (it never flags, e.g. benign)


@dataclass(frozen=True)
class ModelResult:
    model: str
    version: int
    scores: list[LabelScore]
    flagged: list[str]
    answered_by: str  # cascades: the stage that answered; "" otherwise
    windows: int  # model rows the answering stage ran for the text (a segmenting cascade: windows + segments)
    completeness: str = FULL  # PARTIAL: an earlier cascade stage answered for a later one
    partial_reason: str = ""  # PARTIAL only: DEADLINE, OVERLOADED or UNAVAILABLE
    uncertain_from: float = 0.0  # PARTIAL only: the cascade's band low edge


@dataclass(frozen=True)
class Limits:
    """What one request may hold; ListModels reports the first three so callers (the
    enforcer) size their requests to them instead of learning them from refusals."""

    max_text_bytes: int = 32 * 1024
    max_batch_texts: int = 64
    max_models: int = 8
    tokenize_inline_chars: int = 4096


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None

    @property
    def key(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


@dataclass(frozen=True)
class _Job:
    """What every model of one request shares: its deadline and its place in the queue."""

    deadline: float | None  # monotonic seconds; None: no deadline
    tenant: str = ""
    background: bool = False


@dataclass
class _Scored:
    """One model's answer for a list of texts, before conversion to ModelResult."""

    scores: np.ndarray  # [texts, labels]
    windows: np.ndarray  # [texts]
    version: int
    manifest: mf.ModelManifest


def parse_model_ref(ref: str) -> ModelRef:
    """ "name" or "name:version" (version a positive integer)."""
    name, sep, version = ref.rpartition(":")
    if not sep:
        name, version = ref, ""
    name = name.strip()
    if not name:
        raise InvalidArgument(f"model {ref!r}: expected NAME or NAME:VERSION")
    if not sep:
        return ModelRef(name, None)
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument(f"model {ref!r}: version must be a positive integer, as in NAME:VERSION")
    return ModelRef(name, int(version))


class Classifier:
    def __init__(
        self,
        repository: ModelRepository,
        stats: ClassifierStats,
        default_model: str,
        limits: Limits = Limits(),
        max_shadow_inflight: int = 16,
        reply_margin_s: float = 0.005,
    ) -> None:
        """``reply_margin_s``: time kept back from every deadline to build and send the
        answer, so a partial verdict still reaches the caller before it gives up."""
        self.repository = repository
        self.reply_margin_s = reply_margin_s
        self.stats = stats
        self.default_model = default_model
        self.limits = limits
        self.max_shadow_inflight = max_shadow_inflight
        self._shadow_tasks: set[asyncio.Task] = set()
        # Background work is tokenised at the lowest OS priority too (its inference already
        # is, see batcher.py): re-screening megabytes must not take CPU from live callers.
        self._background_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bg-featurize", initializer=lowest_priority
        )

    # -- validation ---------------------------------------------------------------------

    def validate(self, texts: Sequence[str], models: Sequence[str]) -> list[ModelRef]:
        lim = self.limits
        if not texts:
            raise InvalidArgument("texts is empty: send at least one text to classify")
        if len(texts) > lim.max_batch_texts:
            raise InvalidArgument(
                f"{len(texts)} texts in one request; the limit is {lim.max_batch_texts} (--max-batch-texts)"
            )
        for i, text in enumerate(texts):
            if len(text) * 4 > lim.max_text_bytes:  # only encode when the text might be too long
                size = len(text.encode("utf-8", "surrogatepass"))
                if size > lim.max_text_bytes:
                    raise InvalidArgument(
                        f"texts[{i}] is {size} bytes; the limit is {lim.max_text_bytes} bytes (--max-text-bytes)"
                    )
        if len(models) > lim.max_models:
            raise InvalidArgument(
                f"{len(models)} models in one request; the limit is {lim.max_models} (--max-models-per-request)"
            )
        refs = [parse_model_ref(m) for m in models] or [ModelRef(self.default_model, None)]
        for ref in refs:
            man = self.repository.manifest(ref.name)  # NotFound lists the available models
            if ref.version is not None and isinstance(man, mf.CascadeManifest):
                raise InvalidArgument(f"model {ref.key!r}: {ref.name!r} is a cascade; it has no versions to pin")
        return refs

    # -- classification ---------------------------------------------------------------------

    async def classify(
        self,
        texts: Sequence[str],
        models: Sequence[str],
        timeout: float | None = None,
        tenant: str = "",
        background: bool = False,
    ) -> list[list[ModelResult]]:
        """Scores per text (request order), per model (request order).

        ``timeout``: seconds the caller still waits (None: no deadline).  ``tenant`` is
        the fair-queueing key; ``background`` work (retro-screening, shadows) only runs
        when no live request waits."""
        refs = self.validate(texts, models)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the request's deadline had already passed on arrival")
        deadline = None if timeout is None else time.monotonic() + timeout
        job = _Job(deadline, tenant, background)
        unique = list({r.key: r for r in refs}.values())
        answers = await asyncio.gather(*(self._answer(r, texts, job) for r in unique))
        by_key = dict(zip((r.key for r in unique), answers, strict=True))
        for ref in unique:
            self._shadow(ref.name, texts, by_key[ref.key])
        log.debug(
            "classified",
            extra={
                "texts": len(texts),
                "chars": sum(len(t) for t in texts),
                "models": [r.key for r in refs],
            },
        )
        return [[by_key[r.key][t] for r in refs] for t in range(len(texts))]

    async def _answer(self, ref: ModelRef, texts: Sequence[str], job: _Job) -> list[ModelResult]:
        man = self.repository.manifest(ref.name)
        if isinstance(man, mf.CascadeManifest):
            return await self._cascade(man, texts, job)
        with self.repository.acquire(ref.name, ref.version) as lv:
            scored = await self._score(lv, texts, job)
        self.stats.texts.labels(self.stats.model(ref.name), ref.name).inc(len(texts))
        return [self._result(ref.name, scored, t, t, "") for t in range(len(texts))]

    async def _cascade(self, man: mf.CascadeManifest, texts: Sequence[str], job: _Job) -> list[ModelResult]:
        first_name, second_name = man.stages
        self._check_cascade(man)
        pieces: list[str] = []
        owners = np.zeros(0, dtype=np.int64)
        with self.repository.acquire(first_name) as first:
            if man.segments is not None:
                pieces, owners = await self._cpu(job, texts, segment.segment_texts, texts, man.segments)
            s1, sampled = await self._first_stage(first, texts, pieces, job)
            if sampled:
                pieces, owners = [], np.zeros(0, dtype=np.int64)
        floors = man.segments.floors_of if man.segments is not None else lambda _: None
        s1, seg1 = _fold_segments(s1, len(texts), owners, floors(first_name))
        unsafe = segment.unsafe(s1.scores, s1.manifest.labels)
        lo, hi = man.band
        escalate = np.flatnonzero((unsafe >= lo) & (unsafe <= hi))
        s2, reason = None, ""
        if sampled:
            escalate, reason = np.arange(len(texts)), DEADLINE  # every text: PARTIAL, first stage
        elif escalate.size:
            # The second stage: the escalated texts' windows, and only the top_k segments of
            # each that the first stage found most unsafe (its cost stays windows + top_k).
            k = man.segments.top_k if man.segments is not None else 0
            top = segment.top_segments(seg1, owners, s1.manifest.labels, k, escalate)
            rank = np.full(len(texts), -1, dtype=np.int64)
            rank[escalate] = np.arange(escalate.size)
            s2, reason = await self._escalate(
                second_name, [*(texts[i] for i in escalate), *(pieces[i] for i in top)], job
            )
            if s2 is not None:
                s2, _ = _fold_segments(s2, int(escalate.size), rank[owners[top]], floors(second_name))
        position = {int(t): k for k, t in enumerate(escalate)}
        out = []
        for t in range(len(texts)):
            if t in position and s2 is not None:
                out.append(self._result(man.name, s2, position[t], t, second_name))
            elif t in position:
                out.append(
                    self._result(man.name, s1, t, t, first_name, PARTIAL, reason, threshold_floor=hi, uncertain_from=lo)
                )
            else:
                out.append(self._result(man.name, s1, t, t, first_name))
        label = self.stats.model(man.name)
        answered_second = int(escalate.size) if s2 is not None else 0
        self.stats.texts.labels(label, first_name).inc(len(texts) - answered_second)
        if answered_second:
            self.stats.texts.labels(label, second_name).inc(answered_second)
        if reason:
            self.stats.partial.labels(label, reason).inc(int(escalate.size))
            log.debug(
                "cascade answered by its first stage",
                extra={"model": man.name, "texts": int(escalate.size), "partial_reason": reason},
            )
        return out

    async def _first_stage(
        self, first: LoadedVersion, texts: Sequence[str], pieces: list[str], job: _Job
    ) -> tuple[_Scored, bool]:
        """The cheap stage's scores on every window and segment, or, when it is refused
        at admission (a burst of long texts queued ahead, often the same tenant's), its
        scores on each text's head and tail (a short text: the text alone), ``True``
        (PARTIAL, no time to escalate). Those rows go ahead of the tenant's own queued
        rows (``urgent``). If even they cannot be answered in time, the refusal stands:
        never a made-up verdict."""
        try:
            return await self._score(first, [*texts, *pieces], job), False
        except WouldMissDeadline:
            cut = [head_and_tail(t, first.manifest.inputs) for t in texts]
            return await self._score(first, cut, job, urgent=True), True

    def _check_cascade(self, man: mf.CascadeManifest) -> None:
        """A cascade answers when its first stage serves; a second stage that exists but
        has no ready version makes answers PARTIAL, not errors.  A cascade whose stages
        are not (onnxruntime) models of the repository is misconfigured: UNAVAILABLE."""
        state, why = self.repository.cascade_state(man)
        if state == READY:
            return
        first_name, second_name = man.stages
        try:
            second_ok = isinstance(self.repository.manifest(second_name), mf.ModelManifest)
        except (NotFound, Unavailable):
            second_ok = False
        if not second_ok or self.repository.serving(first_name) is None:
            raise Unavailable(f"model {man.name!r} is not ready ({state}{': ' + why if why else ''})")

    async def _escalate(self, name: str, texts: list[str], job: _Job) -> tuple[_Scored | None, str]:
        """The second stage's scores, or None and why it could not answer in time."""
        try:
            with self.repository.acquire(name) as second:
                return await self._score(second, texts, job, wait=True), ""
        except DeadlineExceeded:  # refused at admission, dropped in the queue, or not back in time
            return None, DEADLINE
        except ResourceExhausted:
            return None, OVERLOADED
        except (Unavailable, NotFound, InferenceFailed):
            return None, UNAVAILABLE

    async def _cpu(self, job: _Job, texts: Sequence[str], fn, *args):
        """``fn(*args)``, CPU work proportional to ``texts``: inline when they are short,
        otherwise in a thread (background work: at the lowest OS priority), so that
        cutting megabytes never stalls the event loop."""
        if job.background:
            return await asyncio.get_running_loop().run_in_executor(self._background_pool, fn, *args)
        if sum(len(t) for t in texts) <= self.limits.tokenize_inline_chars:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _score(
        self, lv: LoadedVersion, texts: Sequence[str], job: _Job, wait: bool = False, urgent: bool = False
    ) -> _Scored:
        """Run ``texts`` through one model version under the job's deadline.

        ``wait``: stop waiting for the batcher when the deadline (less the reply margin)
        comes, and raise DeadlineExceeded (the batcher then drops the rows if they have
        not run): a cascade's later stage must leave time to answer with the earlier one.
        ``urgent``: ahead of the tenant's own queued rows (see ``Batcher.submit``).
        """
        featurizer = lv.featurizer
        timeout = self._time_left(lv, job)  # no tokenising for a model there is no time left for
        if timeout is not None:  # nor for rows it would refuse at admission (a low estimate of them)
            tokens, rows = featurizer.estimate(texts)
            lv.batcher.admit(tokens, rows, timeout, tenant=job.tenant, background=job.background, urgent=urgent)
        size = sum(len(t) for t in texts)
        if job.background:
            windows = await asyncio.get_running_loop().run_in_executor(self._background_pool, featurizer.windows, texts)
        elif size <= self.limits.tokenize_inline_chars:
            windows = featurizer.windows(texts)
        else:  # tokenising megabytes on the event loop would stall every other caller
            windows = await asyncio.to_thread(featurizer.windows, texts)
        lengths = featurizer.lengths(windows)
        timeout = self._time_left(lv, job)
        future = lv.batcher.submit(
            windows.arrays, lengths, timeout, tenant=job.tenant, background=job.background, urgent=urgent
        )
        if wait and timeout is not None:
            try:
                rows = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"model {lv.name} did not answer before the deadline") from None
        else:
            rows = await future
        labels = lv.manifest.labels
        scores = max_over_windows(rows, windows.text_index, windows.n_texts, labels)
        counts = np.bincount(windows.text_index, minlength=windows.n_texts)
        return _Scored(scores, counts, lv.version, lv.manifest)

    def _time_left(self, lv: LoadedVersion, job: _Job) -> float | None:
        """Seconds the model may take: the deadline less the reply margin (None: no deadline)."""
        if job.deadline is None:
            return None
        timeout = job.deadline - self.reply_margin_s - time.monotonic()
        if timeout <= 0:
            raise DeadlineExceeded(
                f"deadline too short: no time left for model {lv.name} before the answer must be sent"
            )
        return timeout

    def _result(
        self,
        model: str,
        s: _Scored,
        row: int,
        text: int,
        answered_by: str,
        completeness: str = FULL,
        partial_reason: str = "",
        threshold_floor: float = 0.0,
        uncertain_from: float = 0.0,
    ) -> ModelResult:
        """``threshold_floor``: a PARTIAL answer's thresholds are raised to the cascade's
        band edge: the first stage's scores inside its escalation band are the ones the
        cascade itself calls inconclusive, so they must not decide more than a full
        verdict would (a caller may still act on them as uncertain, from
        ``uncertain_from``, the band's low edge)."""
        man = s.manifest
        scores, flagged = [], []
        values = s.scores[row]
        for j, label in enumerate(man.labels):
            threshold = man.thresholds.get(label)
            if threshold is not None:
                threshold = max(threshold, threshold_floor)
            score = float(values[j])
            scores.append(LabelScore(label, score, threshold if threshold is not None else 0.0))
            if threshold is not None and label != mf.BENIGN and score >= threshold:
                flagged.append(label)
        mlabel = self.stats.model(model)
        for label in flagged:
            self.stats.flagged.labels(mlabel, label).inc()
        return ModelResult(
            model,
            s.version,
            scores,
            flagged,
            answered_by,
            int(s.windows[row]),
            completeness,
            partial_reason,
            uncertain_from,
        )

    # -- shadow models --------------------------------------------------------------------------

    def _shadow(self, name: str, texts: Sequence[str], primary: list[ModelResult]) -> None:
        try:
            shadows = self.repository.manifest(name).shadow_models
        except ServiceError:
            return
        for shadow in shadows:
            if len(self._shadow_tasks) >= self.max_shadow_inflight:
                self.stats.shadow_runs.labels(self.stats.model(name), self.stats.model(shadow), "skipped").inc()
                continue
            task = asyncio.ensure_future(self._run_shadow(name, shadow, list(texts), primary))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(self, name: str, shadow: str, texts: list[str], primary: list[ModelResult]) -> None:
        mlabel, slabel = self.stats.model(name), self.stats.model(shadow)
        try:
            ref = ModelRef(shadow, None)
            self.repository.manifest(shadow)
            results = await self._answer(ref, texts, _Job(None, "", background=True))
        except Exception as exc:  # a shadow's failure is a metric and a log line, never the caller's
            self.stats.shadow_runs.labels(mlabel, slabel, "failed").inc()
            log.warning("shadow model failed", extra={"model": name, "shadow": shadow, "error": str(exc)[:300]})
            return
        disagreements = 0
        top = 0.0
        for mine, theirs in zip(primary, results, strict=True):
            unsafe = max((s.score for s in theirs.scores if s.label != mf.BENIGN), default=0.0)
            top = max(top, unsafe)
            self.stats.shadow_unsafe_score.labels(mlabel, slabel).observe(unsafe)
            if bool(mine.flagged) != bool(theirs.flagged):
                disagreements += 1
        self.stats.shadow_runs.labels(mlabel, slabel, "ok").inc()
        if disagreements:
            self.stats.shadow_disagreements.labels(mlabel, slabel).inc(disagreements)
        log.log(
            logging.INFO if disagreements else logging.DEBUG,
            "shadow model scored",
            extra={
                "model": name,
                "shadow": shadow,
                "shadow_version": results[0].version if results else 0,
                "texts": len(texts),
                "disagreements": disagreements,
                "max_unsafe_score": round(top, 4),
            },
        )

    async def stop(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        self._background_pool.shutdown(wait=False)


def head_and_tail(text: str, spec: mf.InputSpec) -> str:
    """The text's first and last window's worth of characters (the text itself when it is
    no longer than two windows): what a stage scores when it has no time for every window."""
    span = spec.max_sequence_length * (1 if spec.kind == mf.TEXT else CHARS_PER_TOKEN)
    if len(text) <= 2 * span:
        return text
    return text[:span] + "\n" + text[-span:]


def _fold_segments(
    s: _Scored, n_texts: int, owners: np.ndarray, floors: dict[str, float] | None
) -> tuple[_Scored, np.ndarray]:
    """``s`` scored ``n_texts`` texts followed by their segments (``owners[i]``: the text
    of segment ``i``): the texts' scores with their segments' folded in (max, min for
    benign; a segment's score counts from its label's floor), their row counts including
    the segments' rows, and the segments' own scores."""
    seg_scores = s.scores[n_texts:]
    if not len(owners):
        return s, seg_scores
    scores = segment.fold(s.scores[:n_texts], seg_scores, owners, s.manifest.labels, floors)
    rows = s.windows[:n_texts] + np.bincount(owners, weights=s.windows[n_texts:], minlength=n_texts).astype(
        s.windows.dtype
    )
    return _Scored(scores, rows, s.version, s.manifest), seg_scores
