"""Dynamic batching for one model version (Triton's dynamic batcher, TEI's queue), with
deadline-aware admission and per-tenant fair queueing.

The API is deliberately tiny: ``submit(arrays, lengths, timeout, tenant, background)``
returns a future of the model's output rows for exactly the rows submitted, and one
background loop turns whatever is queued into batches.  Why each piece is here:

* Admission control is separate from batching, and answers at once:

  - ``ResourceExhausted`` when the rows already waiting plus the request's own would pass
    the queue's capacity (an idle queue always admits, so one large request can still
    run).  This is the model's own overload answer: shedding at the door keeps queue
    time bounded instead of letting every caller time out.
  - ``WouldMissDeadline`` (a ``DeadlineExceeded``) when the request is *predicted* to
    finish after its deadline: the time left of the batch running now, plus the work
    queued that the fairness rule would run before it, plus its own rows, costed by the
    model version's learned cost model (below).  Computing an answer nobody waits for
    would only delay the callers that can still be answered; refusing at once lets a
    cascade answer with its earlier stage while there is still time to.

* The cost model (``CostModel``) is learned, per model version, from what was measured:
  ``seconds = a + b * padded tokens`` for a batch (``rows * width``), fitted online by
  exponentially weighted least squares over ``_run``'s own timings (seeded from the
  repository's warm-up runs when there are any), so it follows the machine it runs on,
  including the CPU other work takes.  Predicted queue work is the queued rows' real
  tokens times the padding factor the batches actually had.  Until a first batch has
  been measured nothing is refused on prediction, and a model idle on its live side (no
  live row waiting or running; queued background rows do not count) and unmeasured for
  ``probe_interval_s`` admits one refused request anyway, so a model made too
  pessimistic (refused work is never measured) gets measured again.

* Per-tenant fairness: rows are queued per tenant and batches are formed by deficit
  round robin over tenants, weighted by tokens: each visit grants a tenant one quantum
  (the longest row seen), so a tenant flooding long texts gets one long row per round
  while a tenant with one short text gets into the very next batch.  Background
  requests (retro-screening) are a lower class with its own round robin: a batch takes
  background rows only when no live row waits, and a background batch is cut short
  (``background_batch_s``).  Given a ``background_infer`` (its own ONNX Runtime session
  on one thread), background batches run on their own thread at the lowest OS priority
  (nice 19), alongside live batches instead of ahead of them: a live row never waits for
  a background batch (one MiniLM window costs longer than a 50 ms budget on a CPU), and
  the kernel gives background work only the CPU that live work leaves.

* A running batch cannot be interrupted, so its length is what a newly arrived row waits
  at least: a live batch stops growing once its predicted cost reaches ``max_batch_s``.
  On a CPU a batch of long rows costs about the sum of its rows (ONNX Runtime measured
  15.4 rows/s at batch 8 and 14.4 at batch 1 for MiniLM, bench/RESULTS.md), so the cap
  costs little throughput there and binds only for long rows; on a GPU it rarely binds.

* A batch is sent when ``max_batch_size`` rows wait, or when the oldest row has waited
  ``max_queue_delay``.  Under load the queue refills while a batch runs, so batches form
  with no extra delay; when idle, a lone row waits at most the delay.

* Within a round, the tenant whose oldest row is due first is visited first (the ring's
  rotation breaks ties), so a tight-deadline row is not shut out of a batch by a slower
  tenant ahead of it in the ring.

* Within the fair order, rows are grouped by length: a tenant's first visit in a batch
  starts with its oldest row (so nothing starves), and further rows are picked from a bounded look-ahead
  of its queue to waste the least padding.  A batch also stops growing where one more
  row would make any row in it miss its deadline; a row that cannot make its deadline
  even alone is dropped before inference, like a row whose deadline passed or whose
  caller went away.

* Inference runs on a dedicated thread (ONNX Runtime releases the GIL), so the event loop
  keeps accepting, tokenising and admitting while a batch runs.
* A request's rows may be spread over several batches; each row's output is written back
  at its own index, and the future resolves when the last one arrives.

Nothing here knows about gRPC, manifests or tokenisers: the caller gives a synchronous
``infer(feeds) -> [rows, k]`` function and the padding value of every input.  Tenant
names are queue keys only: they are never logged nor used as metric labels.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.classifier.stats import ClassifierStats
from services.common.errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable, WouldMissDeadline

log = logging.getLogger("safeguards.classifier.batcher")

Infer = Callable[[dict[str, np.ndarray]], np.ndarray]
_INF = math.inf


class InferenceFailed(ServiceError):
    """ONNX Runtime raised on a batch; every request in the batch gets this."""

    code = "INTERNAL"


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    capacity: int  # rows that may wait before admission refuses new requests
    lookahead: int = 4  # rows considered for length grouping: lookahead * max_batch_size
    # A live batch stops growing once its predicted cost would pass this (it always takes
    # at least one row; None: no cap).  A running batch cannot be interrupted, so this is
    # about the longest a newly arrived row waits for the batch ahead of it.
    max_batch_s: float | None = None
    # A background batch is cut once its predicted cost reaches this (it always takes at
    # least one row): a live request arriving meanwhile waits at most about this long.
    background_batch_s: float = 0.025
    # An idle model that measured nothing for this long admits one request its cost model
    # refuses, to measure again (see Batcher._may_probe).
    probe_interval_s: float = 0.25


class CostModel:
    """``seconds = a + b * tokens`` for one batch of ``tokens = rows * width`` positions.

    Fitted by exponentially weighted least squares (each new batch weighs ``1 - decay``
    of the total), so it tracks the machine as load on it changes while one slow batch
    moves it only a little.  When the recent batches all had about the same size the
    slope cannot be told apart from the intercept: the last good slope is kept and only
    the intercept moves.  Both terms are kept non-negative.
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self._n = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.a = 0.0  # seconds per batch
        self.b = 0.0  # seconds per padded token
        self.observations = 0

    @property
    def known(self) -> bool:
        return self.observations > 0

    def observe(self, tokens: float, seconds: float) -> None:
        if tokens <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        d = self.decay
        self._n = d * self._n + 1.0
        self._sx = d * self._sx + tokens
        self._sy = d * self._sy + seconds
        self._sxx = d * self._sxx + tokens * tokens
        self._sxy = d * self._sxy + tokens * seconds
        self.observations += 1
        mx, my = self._sx / self._n, self._sy / self._n
        var = self._sxx / self._n - mx * mx
        if var > (0.05 * mx) ** 2:  # sizes varied enough to separate slope from intercept
            b = (self._sxy / self._n - mx * my) / var
            a = my - b * mx
            if b <= 0:
                a, b = my, 0.0 if self.b <= 0 else self.b
                a = max(0.0, my - b * mx)
            elif a < 0:  # through the origin
                a, b = 0.0, self._sxy / self._sxx
            self.a, self.b = a, b
        elif self.b > 0:
            self.a = max(0.0, my - self.b * mx)
        else:  # nothing known about the slope yet: all cost proportional to tokens
            self.a, self.b = 0.0, my / mx

    def seconds(self, tokens: float, batches: float = 1.0) -> float:
        return self.a * batches + self.b * tokens


class _Request:
    __slots__ = (
        "arrays",
        "lengths",
        "n",
        "future",
        "deadline",
        "enqueued",
        "pending",
        "queued",
        "queued_tokens",
        "results",
        "dead",
        "tenant",
        "predicted",
        "probe",
    )

    def __init__(self, arrays, lengths, future, deadline: float | None, now: float) -> None:
        self.arrays: dict[str, np.ndarray] = arrays
        self.lengths: np.ndarray = lengths
        self.n = len(lengths)
        self.future: asyncio.Future = future
        self.deadline = _INF if deadline is None else deadline
        self.enqueued = now
        self.pending = self.n  # rows without an answer yet
        self.queued = self.n  # rows still in the queue
        self.queued_tokens = int(lengths.sum())
        self.results: np.ndarray | None = None
        self.dead = False  # answered, failed, expired or cancelled: ignore its remaining rows
        self.tenant: _Tenant | None = None
        self.predicted: float | None = None  # seconds from submit to answer, as admission predicted
        self.probe = False  # admitted against the prediction, to measure the model again (see _may_probe)


class _Tenant:
    """One tenant's queue in one class (live or background) and its round-robin state."""

    __slots__ = ("key", "lane", "queue", "rows", "tokens", "deficit", "in_ring")

    def __init__(self, key: str, lane: _Lane) -> None:
        self.key = key
        self.lane = lane
        self.queue: deque[tuple[_Request, int]] = deque()  # may hold rows of dead requests
        self.rows = 0  # live rows queued
        self.tokens = 0  # their real tokens
        self.deficit = 0
        self.in_ring = False


class _Lane:
    """A priority class: per-tenant queues and the deficit round robin's ring."""

    def __init__(self) -> None:
        self.tenants: dict[str, _Tenant] = {}
        self.ring: deque[_Tenant] = deque()
        self.rows = 0
        self.tokens = 0

    def tenant(self, key: str) -> _Tenant:
        t = self.tenants.get(key)
        if t is None:
            t = self.tenants[key] = _Tenant(key, self)
        if not t.in_ring:
            t.in_ring = True
            self.ring.append(t)
        return t

    def ahead(self, key: str, tokens: int, rows: int, urgent: bool = False) -> tuple[float, float]:
        """(tokens, rows) queued that deficit round robin would run before a new request
        of ``tokens`` real tokens in ``rows`` rows from tenant ``key``, its own included
        (an ``urgent`` request goes to the front of its tenant's queue: only itself).

        Round robin weighted by tokens gives every waiting tenant about the same tokens
        while the new request's tenant drains its queue up to and including the request,
        so each other tenant contributes at most that many tokens.
        """
        own = self.tenants.get(key)
        own_tokens = (0 if urgent or own is None else own.tokens) + tokens
        own_rows = (0 if urgent or own is None else own.rows) + rows
        out_tokens, out_rows = float(own_tokens), float(own_rows)
        for t in self.tenants.values():
            if t is own or t.tokens <= 0:
                continue
            if t.tokens <= own_tokens:
                out_tokens += t.tokens
                out_rows += t.rows
            else:
                out_tokens += own_tokens
                out_rows += t.rows * own_tokens / t.tokens
        return out_tokens, out_rows


def _head_deadline(t: _Tenant) -> float:
    for req, _ in t.queue:
        if not req.dead:
            return req.deadline
    return _INF


class _Window:
    """The rows at the front of one tenant's queue that a batch may pick from (length
    grouping looks this far ahead), with the ones picked so far."""

    __slots__ = ("tenant", "rows", "order", "sorted_len", "used", "left")

    def __init__(self, tenant: _Tenant, rows: list[tuple[_Request, int]]) -> None:
        self.tenant = tenant
        self.rows = rows
        lengths = [int(r.lengths[i]) for r, i in rows]
        self.order = sorted(range(len(rows)), key=lengths.__getitem__)
        self.sorted_len = [lengths[k] for k in self.order]
        self.used = [False] * len(rows)
        self.left = len(rows)

    def use(self, k: int) -> None:
        self.used[k] = True
        self.left -= 1

    def oldest(self) -> int:
        return self.used.index(False)

    def closest(self, width: int) -> int:
        """The unused row that adds the least padding: the longest one not wider than the
        batch, else the shortest wider one; the oldest among rows of that length."""
        used, order, lens = self.used, self.order, self.sorted_len
        pos = bisect.bisect_right(lens, width) - 1
        for j in range(pos, -1, -1):
            if not used[order[j]]:
                for first in range(bisect.bisect_left(lens, lens[j]), j + 1):
                    if not used[order[first]]:
                        return order[first]
        for j in range(pos + 1, len(order)):
            if not used[order[j]]:
                return order[j]
        raise AssertionError("no unused row")  # callers check `left`

    def unused(self) -> list[tuple[_Request, int]]:
        return [row for row, u in zip(self.rows, self.used, strict=True) if not u]


class Batcher:
    """One queue and one batching loop for one model version."""

    def __init__(
        self,
        name: str,
        infer: Infer,
        pad_values: dict[str, int],
        policy: BatchPolicy,
        stats: ClassifierStats | None = None,
        seed: Iterable[tuple[int, float]] = (),
        background_infer: Infer | None = None,
    ) -> None:
        """``seed``: (padded tokens, seconds) of batches measured before serving (the
        repository's warm-up), so the first callers are admitted on a real estimate.
        ``background_infer``: runs background batches on a low-priority thread of their
        own, concurrently with live ones (without it they share the live thread)."""
        self.name = name
        self.policy = policy
        self._infer = infer
        self._pad = dict(pad_values)
        self._stats = stats
        self._label = stats.model(name) if stats else name
        self._live = _Lane()
        self._background = _Lane()
        self._queued = 0  # live rows waiting in both classes (rows of dead requests are not counted)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}"[:15])
        self._bg_infer = background_infer
        self._bg_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bg-{name}"[:15], initializer=lowest_priority)
            if background_infer is not None
            else None
        )
        self._bg_task: asyncio.Task | None = None  # the background batch running on its own thread
        self.cost = CostModel()
        for tokens, seconds in seed:
            self.cost.observe(tokens, seconds)
        self._pad_ratio = 1.0  # padded / real tokens of recent batches (EWMA)
        self._quantum = 1  # deficit round robin quantum: the longest row seen, in tokens
        self._running_until = 0.0  # predicted end of the batch running now (monotonic; 0: idle)
        self._running = False
        # Plain counters for tests and ListModels-style introspection.
        self.batches_run = 0
        self.rows_run = 0
        self.rows_dropped = 0
        self.rejected = 0
        self.probes = 0
        self._last_measured = time.monotonic()
        self._last_probe = 0.0
        self._publish_cost()

    # -- API ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        # A bug in the loop must not leave callers waiting forever: refuse and fail them.
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher loop crashed", extra={"model": self.name, "error": repr(task.exception())})
            self._closing = True
            self._fail_all(InferenceFailed(f"model {self.name} batcher stopped"))

    def submit(
        self,
        arrays: dict[str, np.ndarray],
        lengths: np.ndarray,
        timeout: float | None = None,
        tenant: str = "",
        background: bool = False,
        urgent: bool = False,
    ) -> asyncio.Future:
        """Queue ``len(lengths)`` rows; row ``i`` is ``arrays[name][i, :lengths[i]]``.

        Returns a future of the output rows in submission order.  Raises
        ``ResourceExhausted`` when the queue is full, ``WouldMissDeadline`` when the rows
        are predicted to finish after ``timeout`` (the caller's remaining time in seconds;
        None: no deadline) and ``Unavailable`` when closing.  ``tenant`` is the fairness
        key; ``background`` rows only run when no live row waits.  ``urgent`` rows go to
        the front of their tenant's queue (Triton's request priority, within a tenant):
        a cascade's fallback, a few rows that stand for a text refused in full, must not
        wait behind the same tenant's earlier long texts; between tenants nothing changes.
        """
        n = len(lengths)
        if self._closing:
            self._count_reject("closed")
            raise Unavailable(f"model {self.name} is unloading; retry")
        # Live requests are measured against live rows only: background work never makes
        # the queue look full to them.  Background requests only take what is free.
        waiting = self._queued if background else self._live.rows
        if waiting and waiting + n > self.policy.capacity:
            self._count_reject("queue_full")
            raise ResourceExhausted(
                f"model {self.name} queue is full ({waiting} rows waiting, capacity "
                f"{self.policy.capacity}); retry with backoff"
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if n == 0:
            future.set_result(np.zeros((0, 0), np.float32))
            return future
        lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
        now = time.monotonic()
        predicted, probe = self._admit(int(lengths.sum()), n, timeout, tenant, background, urgent, now)
        req = _Request(arrays, lengths, future, None if timeout is None else now + timeout, now)
        req.predicted = predicted
        req.probe = probe
        if probe:
            self.probes += 1
            self._last_probe = now
        lane = self._background if background else self._live
        t = lane.tenant(tenant)
        req.tenant = t
        if urgent:
            t.queue.extendleft((req, i) for i in reversed(range(n)))
        else:
            t.queue.extend((req, i) for i in range(n))
        t.rows += n
        t.tokens += req.queued_tokens
        lane.rows += n
        lane.tokens += req.queued_tokens
        self._quantum = max(self._quantum, int(lengths.max()))
        future.add_done_callback(lambda f, r=req: self._on_done(r, f))
        self._queued += n
        self._depth(n)
        self._wake.set()
        return future

    def admit(
        self,
        tokens: int,
        rows: int,
        timeout: float | None,
        tenant: str = "",
        background: bool = False,
        urgent: bool = False,
    ) -> None:
        """Raise ``WouldMissDeadline`` now if ``rows`` rows of ``tokens`` tokens (a low
        estimate, before the text is tokenised) could not be answered within ``timeout``:
        the caller then skips tokenising what this model would refuse anyway (WordPiece
        on a 16 KB text costs milliseconds of CPU a burst of them cannot spare).
        ``submit`` decides again on the real rows."""
        self._admit(tokens, rows, timeout, tenant, background, urgent, time.monotonic())

    def _admit(
        self, tokens: int, rows: int, timeout: float | None, tenant: str, background: bool, urgent: bool, now: float
    ) -> tuple[float | None, bool]:
        """(predicted seconds, whether to admit as a probe), or ``WouldMissDeadline``."""
        predicted = self.predict(tokens, rows, tenant, background, now, urgent)
        if timeout is None or predicted is None or predicted <= timeout:
            return predicted, False
        if self._may_probe(now):
            return predicted, True
        self._count_reject("deadline")
        raise WouldMissDeadline(
            f"model {self.name} would answer in about {predicted * 1000:.1f} ms but the deadline is in "
            f"{max(0.0, timeout) * 1000:.1f} ms ({rows} rows, {self._queued} rows waiting); refused at admission"
        )

    def predict(
        self,
        tokens: int,
        rows: int,
        tenant: str = "",
        background: bool = False,
        now: float | None = None,
        urgent: bool = False,
    ) -> float | None:
        """Seconds until a request of ``rows`` rows and ``tokens`` real tokens would be
        answered if submitted now; None while the cost of a batch is still unknown."""
        if not self.cost.known:
            return None
        now = time.monotonic() if now is None else now
        if background:
            ahead_tokens, ahead_rows = self._background.ahead(tenant, tokens, rows, urgent)
            ahead_tokens += self._live.tokens
            ahead_rows += self._live.rows
        else:
            ahead_tokens, ahead_rows = self._live.ahead(tenant, tokens, rows, urgent)
        running = max(0.0, self._running_until - now) if self._running_until else 0.0
        batches = math.ceil(ahead_rows / self.policy.max_batch_size - 1e-9)
        # An idle queue holds a lone row up to the delay, waiting for companions.
        delay = self.policy.max_queue_delay_s if ahead_rows < self.policy.max_batch_size and not running else 0.0
        return running + delay + self.cost.seconds(ahead_tokens * self._pad_ratio, max(1, batches))

    def _may_probe(self, now: float) -> bool:
        """Whether to admit a request the prediction refuses, to measure again.

        A cost model that became too pessimistic (a warm-up or batches timed while the
        machine was busy) would otherwise never be corrected when every caller has a
        tight deadline: refused work is never measured.  So when the model is idle and
        has measured nothing for ``probe_interval_s``, one refused request runs anyway.
        Idle means no live row waits behind it and no live batch runs; if it does finish
        late, its caller (a cascade) has already answered with its earlier stage.
        Background rows do not count: they run on their own low-priority thread (or,
        without one, only when no live row waits), and a retro-screening backlog after
        a burst of long prompts can last seconds, during which a pessimistic model would
        otherwise refuse every short live text without ever being measured again.
        """
        idle = self._live.rows == 0 and not self._running
        quiet = now - max(self._last_measured, self._last_probe) >= self.policy.probe_interval_s
        return idle and quiet

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        """The batching loop is running (started and neither stopped nor crashed)."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Refuse new rows, finish the queued ones, stop the loop and its thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._bg_task is not None:
            await asyncio.gather(self._bg_task, return_exceptions=True)
        self._fail_all(Unavailable(f"model {self.name} was unloaded"))
        self._executor.shutdown(wait=False)
        if self._bg_executor is not None:
            self._bg_executor.shutdown(wait=False)

    # -- loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        policy = self.policy
        while True:
            if self._queued == 0:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            fire_at = self._oldest_enqueued() + policy.max_queue_delay_s
            while self._queued < policy.max_batch_size and not self._closing:
                remaining = fire_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            background = not self._live.rows and self._background.rows and self._bg_executor is not None
            if background and self._bg_task is not None:
                # Only background rows wait and a background batch runs on its own thread:
                # wait for it to end or for a live row to arrive.
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            if batch and background:
                self._bg_task = asyncio.get_running_loop().create_task(self._run(batch, background=True))
                self._bg_task.add_done_callback(self._background_done)
            elif batch:
                await self._run(batch)
                # One pass of the event loop before the next batch: answered callers reply
                # and freshly arrived rows join, so the next batch is fuller at no latency cost.
                await asyncio.sleep(0)
            elif self._queued and not self._live.rows and not self._background.rows:
                self._depth(-self._queued)  # defensive: accounting drifted
                self._queued = 0
            else:
                await asyncio.sleep(0)  # rows were only dropped: let callers run before the next look

    def _oldest_enqueued(self) -> float:
        oldest = _INF
        for lane in (self._live, self._background):
            for t in lane.ring:
                for req, _ in t.queue:
                    if not req.dead:
                        oldest = min(oldest, req.enqueued)
                        break
            if oldest < _INF:
                return oldest  # live rows decide; background ones only when none is live
        return time.monotonic() if oldest == _INF else oldest

    def _take(self) -> list[tuple[_Request, int]]:
        """Pop the next batch: deficit round robin over tenants, length-grouped, capped so
        that no row in it misses its deadline because of the others."""
        self._purge(self._live)
        lane = self._live if self._live.rows else self._background
        if lane is self._background:
            self._purge(lane)
        if not lane.rows:
            return []
        policy = self.policy
        size = policy.max_batch_size
        limit = size * max(1, policy.lookahead)
        cap_s = policy.max_batch_s or _INF
        if lane is self._background:
            cap_s = min(cap_s, policy.background_batch_s)
        cost = self.cost if self.cost.known else None
        now = time.monotonic()
        batch: list[tuple[_Request, int]] = []
        width = 0
        earliest = _INF  # earliest deadline in the batch
        if len(lane.ring) > 1 and cost is not None:
            # Within a round, the tenant whose oldest row is due first goes first (the
            # sort is stable: without deadlines the ring's rotation decides).  Shares are
            # still one quantum per tenant per round; this only keeps a tight-deadline
            # row from being shut out of a batch by a slower tenant ahead of it.
            lane.ring = deque(sorted(lane.ring, key=_head_deadline))
        # Each tenant's look-ahead window, popped (and sorted by length) once per batch.
        windows: dict[int, _Window] = {}
        blocked: set[int] = set()  # tenants whose next row would make the batch miss a deadline
        full = False
        while not full:
            progress = False
            for _ in range(len(lane.ring)):
                if len(batch) >= size:
                    full = True
                    break
                t = lane.ring.popleft()
                if t.rows == 0:
                    self._leave(t)
                    continue
                if id(t) in blocked:
                    lane.ring.append(t)
                    continue
                t.deficit += self._quantum
                w = windows.get(id(t))
                first = w is None
                if w is None:
                    w = windows[id(t)] = _Window(t, self._window(t, limit, now))
                while len(batch) < size and w.left:
                    # A tenant's first visit starts with its oldest row (nothing starves);
                    # further rows are the ones that add the least padding.
                    k = w.oldest() if first else w.closest(width)
                    first = False
                    req, i = w.rows[k]
                    if req.dead:
                        w.use(k)
                        continue
                    length = int(req.lengths[i])
                    if length > t.deficit:
                        if lane.ring:
                            break  # its turn is over: the next tenant's turn
                        t.deficit += self._quantum  # alone: round after round
                    if cost is not None:
                        alone = cost.seconds(length)
                        if now + alone > req.deadline and not req.probe:
                            # Cannot finish in time even alone: drop before inference.
                            w.use(k)
                            self._kill(req, "deadline", self._cannot_finish(req, now, alone))
                            continue
                        seconds = cost.seconds((len(batch) + 1) * max(width, length))
                        if batch and (now + seconds > min(earliest, req.deadline) or seconds > cap_s):
                            blocked.add(id(t))
                            full = seconds > cap_s
                            break
                    w.use(k)
                    batch.append((req, i))
                    width = max(width, length)
                    earliest = min(earliest, req.deadline)
                    t.deficit -= length
                    req.queued -= 1
                    req.queued_tokens -= length
                    t.rows -= 1
                    t.tokens -= length
                    lane.rows -= 1
                    lane.tokens -= length
                    self._queued -= 1
                    self._depth(-1)
                    progress = True
                if t.rows > 0:
                    lane.ring.append(t)
                else:
                    self._leave(t)
                if full:
                    break
            if not progress or not lane.ring:
                break
        for w in windows.values():  # rows not taken go back to the front of their queue, in order
            if w.tenant.in_ring:
                w.tenant.queue.extendleft(reversed(w.unused()))
        # A request killed after some of its rows were taken (it cannot finish) runs no row.
        return [row for row in batch if not row[0].dead]

    def _window(self, t: _Tenant, k: int, now: float) -> list[tuple[_Request, int]]:
        """Pop up to ``k`` live rows from the front of a tenant's queue (at least one),
        dropping rows of dead or expired requests on the way."""
        out: list[tuple[_Request, int]] = []
        k = max(1, k)
        while t.queue and len(out) < k:
            req, i = t.queue.popleft()
            if req.dead:
                continue
            if req.deadline <= now:
                self._kill(req, "deadline", DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
                continue
            out.append((req, i))
        return out

    def _purge(self, lane: _Lane) -> None:
        """Forget tenants whose every queued row belongs to a dead request."""
        if lane.rows == 0 and lane.ring:
            for t in lane.ring:
                t.queue.clear()
                t.in_ring = False
                t.deficit = 0
            lane.ring.clear()
            lane.tenants.clear()
            lane.tokens = 0

    def _leave(self, t: _Tenant) -> None:
        """A tenant whose queue emptied leaves the ring and loses its deficit (DRR)."""
        t.queue.clear()
        t.deficit = 0
        t.in_ring = False
        if t.lane.tenants.get(t.key) is t:
            del t.lane.tenants[t.key]

    def _cannot_finish(self, req: _Request, now: float, seconds: float) -> DeadlineExceeded:
        return WouldMissDeadline(
            f"model {self.name} cannot answer before the deadline (a row needs about {seconds * 1000:.1f} ms, "
            f"{max(0.0, req.deadline - now) * 1000:.1f} ms left); dropped before inference"
        )

    def _background_done(self, task: asyncio.Task) -> None:
        self._bg_task = None
        self._wake.set()

    async def _run(self, batch: list[tuple[_Request, int]], background: bool = False) -> None:
        """Run one batch.  A background batch on its own thread (``background``) neither
        counts as the running batch for live admission nor teaches the cost model: it
        runs at the lowest priority, so its timings say nothing about live batches."""
        width = int(max(r.lengths[i] for r, i in batch))
        feeds: dict[str, np.ndarray] = {}
        for name, pad in self._pad.items():
            first = batch[0][0].arrays[name]
            out = np.full((len(batch), width), pad, dtype=first.dtype)
            for k, (req, i) in enumerate(batch):
                n = int(req.lengths[i])
                out[k, :n] = req.arrays[name][i, :n]
            feeds[name] = out
        real = int(sum(int(r.lengths[i]) for r, i in batch))
        padded = len(batch) * width
        started = time.monotonic()
        if not background:
            self._running = True
            self._running_until = started + (self.cost.seconds(padded) if self.cost.known else 0.0)
        if self._stats:
            label = self._label
            seen: set[int] = set()
            for req, _ in batch:
                if id(req) not in seen:
                    seen.add(id(req))
                    self._stats.queue_duration.labels(label).observe(started - req.enqueued)
            self._stats.batch_size.labels(label).observe(len(batch))
            self._stats.batch_tokens.labels(label, "real").inc(real)
            self._stats.batch_tokens.labels(label, "padding").inc(padded - real)
        loop = asyncio.get_running_loop()
        try:
            if background:
                output = await loop.run_in_executor(self._bg_executor, self._bg_infer, feeds)
            else:
                output = await loop.run_in_executor(self._executor, self._infer, feeds)
            output = np.asarray(output)
            if output.ndim != 2 or output.shape[0] != len(batch):
                raise ValueError(f"model returned shape {output.shape} for a batch of {len(batch)}")
        except Exception as exc:  # the model's failure fails this batch, never the loop
            log.error(
                "inference failed",
                extra={"model": self.name, "rows": len(batch), "width": width, "error": f"{type(exc).__name__}: {exc}"},
            )
            if self._stats:
                self._stats.inference_failures.labels(self._label).inc()
            failure = InferenceFailed(f"inference failed in model {self.name} ({type(exc).__name__})")
            for req, _ in batch:
                if not req.dead:
                    self._kill(req, None, failure)
            return
        finally:
            if not background:
                self._running = False
                self._running_until = 0.0
            elapsed = time.monotonic() - started
            if self._stats:
                self._stats.inference_duration.labels(self._label).observe(elapsed)
        if not background:
            self.cost.observe(padded, elapsed)
            self._last_measured = time.monotonic()
            self._pad_ratio = 0.8 * self._pad_ratio + 0.2 * (padded / max(1, real))
            self._publish_cost()
        self.batches_run += 1
        self.rows_run += len(batch)
        done = time.monotonic()
        for k, (req, i) in enumerate(batch):
            if req.dead or req.future.done():
                # Dead, or cancelled by its caller in this very loop iteration, before
                # `_on_done` (a scheduled callback) could mark it dead.
                continue
            if req.results is None:
                req.results = np.empty((req.n, output.shape[1]), dtype=output.dtype)
            req.results[i] = output[k]
            req.pending -= 1
            if req.pending == 0:
                req.dead = True
                req.future.set_result(req.results)
                if self._stats and req.predicted is not None:
                    self._stats.admission_error.labels(self._label).observe(done - req.enqueued - req.predicted)

    # -- bookkeeping ----------------------------------------------------------------

    def _on_done(self, req: _Request, future: asyncio.Future) -> None:
        if future.cancelled() and not req.dead:  # the caller went away (cancel, deadline)
            self._kill(req, "cancelled", None)

    def _kill(self, req: _Request, reason: str | None, error: BaseException | None) -> None:
        """Mark a request finished without an answer and forget its queued rows."""
        req.dead = True
        if req.queued:
            self._queued -= req.queued
            self._depth(-req.queued)
            t = req.tenant
            if t is not None:
                t.rows -= req.queued
                t.tokens -= req.queued_tokens
                t.lane.rows -= req.queued
                t.lane.tokens -= req.queued_tokens
                if t.rows == 0:
                    t.deficit = 0
            self.rows_dropped += req.queued if reason else 0
            if reason and self._stats:
                self._stats.rows_dropped.labels(self._label, reason).inc(req.queued)
            req.queued = 0
            req.queued_tokens = 0
        if error is not None and not req.future.done():
            req.future.set_exception(error)

    def _fail_all(self, error: BaseException) -> None:
        for lane in (self._live, self._background):
            for t in list(lane.ring):
                while t.queue:
                    req, _ = t.queue.popleft()
                    if not req.dead:
                        self._kill(req, None, error)
                t.in_ring = False
            lane.ring.clear()
            lane.tenants.clear()
            lane.rows = lane.tokens = 0
        self._depth(-self._queued)
        self._queued = 0

    def _count_reject(self, reason: str) -> None:
        self.rejected += 1
        if self._stats:
            self._stats.rejected.labels(self._label, reason).inc()

    def _depth(self, delta: int) -> None:
        # inc/dec rather than set: an old version draining and its successor share a label.
        if self._stats and delta:
            self._stats.queue_depth.labels(self._label).inc(delta)

    def _publish_cost(self) -> None:
        if self._stats and self.cost.known:
            self._stats.cost_model.labels(self._label, "per_batch").set(self.cost.a)
            self._stats.cost_model.labels(self._label, "per_token").set(self.cost.b)


def lowest_priority() -> None:
    """Executor initializer: this thread (a Linux task of its own) at nice 19, so the
    kernel runs it only on CPU that everything else leaves."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):  # not Linux, or not permitted: still correct, only not yielding
        log.warning("could not lower the background inference thread's priority")
