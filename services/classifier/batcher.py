"""Dynamic batching for one model version (Triton's dynamic batcher, TEI's queue).

The API is deliberately tiny: ``submit(arrays, lengths, timeout)`` returns a future of
the model's output rows for exactly the rows submitted, and one background loop turns
whatever is queued into batches.  Why each piece is here:

* Admission control is separate from batching: ``submit`` refuses a request at once with
  ``ResourceExhausted`` when the rows already waiting plus its own would pass the queue's
  capacity (an idle queue always admits, so one large request can still run).  Shedding at
  the door keeps queue time bounded instead of letting every caller time out.
* A batch is sent when ``max_batch_size`` rows wait, or when the oldest row has waited
  ``max_queue_delay``.  Under load the queue refills while a batch runs, so batches form
  with no extra delay; when idle, a lone row waits at most the delay.
* Rows are grouped by length: from a bounded look-ahead of the queue, the batch is the
  run of rows (sorted by length) that contains the oldest row and wastes the least
  padding.  The oldest row is always taken, so nothing starves; each batch is padded
  only to its own longest row.
* Rows whose request's deadline has passed, or whose caller went away, are dropped before
  inference: running them would only delay callers that can still be answered.
* Inference runs on a dedicated thread (ONNX Runtime releases the GIL), so the event loop
  keeps accepting, tokenising and admitting while a batch runs.
* A request's rows may be spread over several batches; each row's output is written back
  at its own index, and the future resolves when the last one arrives.

Nothing here knows about gRPC, manifests or tokenisers: the caller gives a synchronous
``infer(feeds) -> [rows, k]`` function and the padding value of every input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.classifier.stats import ClassifierStats
from services.common.errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable

log = logging.getLogger("safeguards.classifier.batcher")

Infer = Callable[[dict[str, np.ndarray]], np.ndarray]


class InferenceFailed(ServiceError):
    """ONNX Runtime raised on a batch; every request in the batch gets this."""

    code = "INTERNAL"


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    capacity: int  # rows that may wait before admission refuses new requests
    lookahead: int = 4  # rows considered for length grouping: lookahead * max_batch_size


class _Request:
    __slots__ = ("arrays", "lengths", "n", "future", "deadline", "enqueued", "pending", "queued", "results", "dead")

    def __init__(self, arrays, lengths, future, deadline: float | None, now: float) -> None:
        self.arrays: dict[str, np.ndarray] = arrays
        self.lengths: np.ndarray = lengths
        self.n = len(lengths)
        self.future: asyncio.Future = future
        self.deadline = deadline
        self.enqueued = now
        self.pending = self.n  # rows without an answer yet
        self.queued = self.n  # rows still in the queue
        self.results: np.ndarray | None = None
        self.dead = False  # answered, failed, expired or cancelled: ignore its remaining rows


class Batcher:
    """One queue and one batching loop for one model version."""

    def __init__(
        self,
        name: str,
        infer: Infer,
        pad_values: dict[str, int],
        policy: BatchPolicy,
        stats: ClassifierStats | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._infer = infer
        self._pad = dict(pad_values)
        self._stats = stats
        self._label = stats.model(name) if stats else name
        self._queue: deque[tuple[_Request, int]] = deque()
        self._queued = 0  # live rows waiting (rows of dead requests are not counted)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}"[:15])
        # Plain counters for tests and ListModels-style introspection.
        self.batches_run = 0
        self.rows_run = 0
        self.rows_dropped = 0
        self.rejected = 0

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
        self, arrays: dict[str, np.ndarray], lengths: np.ndarray, timeout: float | None = None
    ) -> asyncio.Future:
        """Queue ``len(lengths)`` rows; row ``i`` is ``arrays[name][i, :lengths[i]]``.

        Returns a future of the output rows in submission order.  Raises
        ``ResourceExhausted`` when the queue is full and ``Unavailable`` when closing.
        ``timeout`` is the caller's remaining time in seconds (None: no deadline).
        """
        n = len(lengths)
        if self._closing:
            self._count_reject("closed")
            raise Unavailable(f"model {self.name} is unloading; retry")
        if self._queued and self._queued + n > self.policy.capacity:
            self._count_reject("queue_full")
            raise ResourceExhausted(
                f"model {self.name} queue is full ({self._queued} rows waiting, capacity "
                f"{self.policy.capacity}); retry with backoff"
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if n == 0:
            future.set_result(np.zeros((0, 0), np.float32))
            return future
        now = time.monotonic()
        req = _Request(
            arrays,
            np.maximum(np.asarray(lengths, dtype=np.int64), 1),
            future,
            None if timeout is None else now + timeout,
            now,
        )
        future.add_done_callback(lambda f, r=req: self._on_done(r, f))
        self._queue.extend((req, i) for i in range(n))
        self._queued += n
        self._depth(n)
        self._wake.set()
        return future

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
        self._fail_all(Unavailable(f"model {self.name} was unloaded"))
        self._executor.shutdown(wait=False)

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
            batch = self._take()
            if batch:
                await self._run(batch)
                # One pass of the event loop before the next batch: answered callers reply
                # and freshly arrived rows join, so the next batch is fuller at no latency cost.
                await asyncio.sleep(0)
            elif self._queued and not self._queue:  # defensive: accounting drifted
                self._depth(-self._queued)
                self._queued = 0

    def _oldest_enqueued(self) -> float:
        for req, _ in self._queue:
            if not req.dead:
                return req.enqueued
        return time.monotonic()

    def _take(self) -> list[tuple[_Request, int]]:
        """Pop the next batch: live rows only, grouped by length around the oldest row."""
        size = self.policy.max_batch_size
        limit = size * max(1, self.policy.lookahead)
        now = time.monotonic()
        window: list[tuple[_Request, int]] = []
        while self._queue and len(window) < limit:
            req, i = self._queue.popleft()
            if req.dead:
                continue
            if req.deadline is not None and req.deadline <= now:
                self._kill(req, "deadline", DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
                continue
            window.append((req, i))
        if len(window) > size:
            lengths = np.fromiter((r.lengths[i] for r, i in window), dtype=np.int64, count=len(window))
            order = np.argsort(lengths, kind="stable")
            sorted_len = lengths[order]
            anchor = int(np.flatnonzero(order == 0)[0])  # window[0] is the oldest row
            lo, hi = max(0, anchor - size + 1), min(anchor, len(window) - size)
            csum = np.r_[0, np.cumsum(sorted_len)]
            starts = np.arange(lo, hi + 1)
            waste = size * sorted_len[starts + size - 1] - (csum[starts + size] - csum[starts])
            s = int(starts[int(np.argmin(waste))])
            chosen = np.zeros(len(window), dtype=bool)
            chosen[order[s : s + size]] = True
            batch = [row for row, c in zip(window, chosen, strict=True) if c]
            rest = [row for row, c in zip(window, chosen, strict=True) if not c]
            self._queue.extendleft(reversed(rest))
        else:
            batch = window
        for req, _ in batch:
            req.queued -= 1
        self._queued -= len(batch)
        self._depth(-len(batch))
        return batch

    async def _run(self, batch: list[tuple[_Request, int]]) -> None:
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
        started = time.monotonic()
        if self._stats:
            label = self._label
            seen: set[int] = set()
            for req, _ in batch:
                if id(req) not in seen:
                    seen.add(id(req))
                    self._stats.queue_duration.labels(label).observe(started - req.enqueued)
            self._stats.batch_size.labels(label).observe(len(batch))
            self._stats.batch_tokens.labels(label, "real").inc(real)
            self._stats.batch_tokens.labels(label, "padding").inc(len(batch) * width - real)
        loop = asyncio.get_running_loop()
        try:
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
            if self._stats:
                self._stats.inference_duration.labels(self._label).observe(time.monotonic() - started)
        self.batches_run += 1
        self.rows_run += len(batch)
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
            self.rows_dropped += req.queued if reason else 0
            if reason and self._stats:
                self._stats.rows_dropped.labels(self._label, reason).inc(req.queued)
            req.queued = 0
        if error is not None and not req.future.done():
            req.future.set_exception(error)

    def _fail_all(self, error: BaseException) -> None:
        while self._queue:
            req, _ = self._queue.popleft()
            if not req.dead:
                self._kill(req, None, error)
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
