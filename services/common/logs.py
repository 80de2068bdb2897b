"""JSON logs, one object per line, with the request id of the RPC being served,
written by a background thread so that logging can never block a decision.

Why a queue: a log line written from the event loop blocks the whole service as
soon as whoever reads our stderr stops reading (a full pipe: the enforcer once
answered nothing, its main thread stuck in `StreamHandler.emit`). So callers only
put records on a bounded queue (`QueueHandler`, never waiting); one listener
thread (`QueueListener`) formats them and does the blocking write. When the queue
is full the record is dropped and counted (`safeguards_log_records_dropped_total`,
by reason): losing log lines is better than losing decisions, and the metric says
it happened.

Why a rate cap: loggers named `*.decisions` write one line per decision; at high
rates that is most of the log volume and most of the listener's work. Their
INFO-and-below records are capped per logger (`--log-decisions-per-s`); the
suppressed ones are counted too, and the service's metrics keep the full counts.
WARNING and above are never capped.

Privacy rule (docs/ARCHITECTURE.md "Data residency and privacy"): no raw prompt or completion text in logs, ever. Log
call sites pass identifiers, sizes and decisions in `extra`, never content; a
test greps the log bytes of real processes for the text it sent.
"""

from __future__ import annotations

import atexit
import contextvars
import copy
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter

#: Request id of the RPC being served (set by the server interceptor).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

#: Records waiting for the writer thread; beyond this they are dropped (counted).
DEFAULT_QUEUE_SIZE = 10_000
#: At exit, how long to wait for queued lines to be written before giving up on a
#: reader that does not read (the process must still exit).
DEFAULT_FLUSH_TIMEOUT_S = 2.0
#: Loggers whose last name component is this are high-rate (one line per decision).
HIGH_RATE_SUFFIX = "decisions"

# Reasons a record is not written (the `reason` label of the dropped counter).
QUEUE_FULL = "queue_full"
RATE_CAP = "rate_cap"
ERROR = "error"
STOPPED = "stopped"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, region: str) -> None:
        super().__init__()
        self._static = {"service": service, "region": region}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        # The writer thread has no request context: the queue handler captured the
        # id on the record when it was logged. Formatting in place keeps working.
        rid = record.__dict__.get("request_id") or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def new_dropped_counter() -> Counter:
    """The dropped-records counter, not yet in any registry: logging is set up
    before a server builds its registry, which then registers it (`LogPipeline.register`)."""
    return Counter(
        "safeguards_log_records_dropped_total",
        "Log records not written, by reason: queue_full (the writer is behind or its reader stopped "
        "reading), rate_cap (a high-rate logger over --log-decisions-per-s), error (unformattable record, "
        "broken stderr), stopped (logged after the writer stopped at exit).",
        ["reason"],
        registry=None,
    )


class RateCap(logging.Filter):
    """Caps INFO-and-below records of high-rate loggers (`*.decisions`) to
    `per_second` per logger: a token bucket holding one second of lines, so a
    burst writes about `per_second` lines and the rest are counted, not written.
    Runs in the caller's thread before the record is queued, so a capped record
    costs one lock and one counter increment."""

    def __init__(self, per_second: float, dropped: Counter) -> None:
        super().__init__()
        self._rate = float(per_second)
        self._buckets: dict[str, list[float]] = {}  # logger name -> [tokens, last refill]
        self._lock = threading.Lock()
        self._dropped = dropped.labels(RATE_CAP)

    @staticmethod
    def is_high_rate(name: str) -> bool:
        return name.rsplit(".", 1)[-1] == HIGH_RATE_SUFFIX

    def filter(self, record: logging.LogRecord) -> bool:
        if self._rate <= 0 or record.levelno > logging.INFO or not self.is_high_rate(record.name):
            return True
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(record.name)
            if bucket is None:
                bucket = self._buckets[record.name] = [self._rate, now]
            tokens = min(self._rate, bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return True
            bucket[0] = tokens
        self._dropped.inc()
        return False


class CallerGone(logging.Filter):
    """grpc's aio server logs an ERROR with a traceback ("ExecuteBatchError raised in
    core by servicer method [...]") when it cannot send a reply because the caller went
    away first (its deadline passed, it cancelled): routine under load, not an error of
    ours. Such a record becomes one INFO line naming the method, without the traceback;
    any other record of that logger passes unchanged."""

    LOGGER = "grpc._cython.cygrpc"
    _PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self._PREFIX):
            method = record.args[0] if isinstance(record.args, tuple) and record.args else ""
            record.msg, record.args = "reply not delivered: the caller had gone", None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            record.__dict__["grpc_method"] = str(method)[:200]
        return True


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never waits: a full queue drops the record (counted).

    `prepare` does the little that must happen in the caller's context: it
    resolves `msg % args` (arguments may change after the call) and captures the
    request id from the contextvar, which the writer thread cannot see. JSON
    formatting, exception rendering and the write happen in the writer thread."""

    def __init__(self, q: queue.Queue, dropped: Counter, pipeline: LogPipeline) -> None:
        super().__init__(q)
        self._full = dropped.labels(QUEUE_FULL)
        self._stopped = dropped.labels(STOPPED)
        self._errors = dropped.labels(ERROR)
        self.stopped = False
        #: The pipeline this handler feeds, so `configure` can stop the one it replaces.
        self.pipeline = pipeline

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if "request_id" not in record.__dict__:
            rid = request_id_var.get()
            if rid:
                record.request_id = rid
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.stopped:
            self._stopped.inc()
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._full.inc()

    def handleError(self, record: logging.LogRecord) -> None:
        # The default prints a traceback to stderr: the very write that may block.
        self._errors.inc()


class FdWriter(logging.Handler):
    """The writer thread's handler: one `os.write` per line on a raw descriptor.

    Why not a StreamHandler on sys.stderr: when the reader never reads, this
    thread stays blocked in the write until the process exits; a thread blocked
    inside a buffered file object holds its lock, and the interpreter aborts at
    exit when it cannot flush that object. A raw write holds no Python lock.
    Streams without a descriptor (test capture objects) are written as text."""

    def __init__(self, stream: IO[str], dropped: Counter) -> None:
        super().__init__()
        self._stream = stream
        self._errors = dropped.labels(ERROR)
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def createLock(self) -> None:
        # No handler lock: only the writer thread calls emit, and a lock held across
        # a write that never returns would hang `logging.shutdown` at exit.
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._fd is None:
                self._stream.write(line)
                self._stream.flush()
                return
            data = line.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # A broken or non-blocking stderr: nowhere to report it but the metric.
        self._errors.inc()


class StoppableListener(logging.handlers.QueueListener):
    """A QueueListener whose stop is bounded: the stock one waits forever for a
    writer that a stopped reader has blocked, and fails on a full queue."""

    def stop_within(self, timeout: float) -> bool:
        """Write what is queued, waiting at most `timeout` s; True if all was written."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(self._sentinel, timeout=max(0.0, timeout))
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        self._thread = None
        return True


class LogPipeline:
    """What `configure` installed: the queue handler on the root logger, the
    writer thread, and the dropped-records counter the server exports."""

    def __init__(
        self,
        formatter: logging.Formatter,
        stream: IO[str],
        *,
        decisions_per_s: float = 0.0,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
    ) -> None:
        self.dropped = new_dropped_counter()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.handler = DroppingQueueHandler(self.queue, self.dropped, self)
        if decisions_per_s > 0:
            self.handler.addFilter(RateCap(decisions_per_s, self.dropped))
        writer = FdWriter(stream, self.dropped)
        writer.setFormatter(formatter)
        self.listener = StoppableListener(self.queue, writer)
        self._flush_timeout_s = flush_timeout_s
        self.listener.start()
        atexit.register(self.stop)

    def register(self, registry: CollectorRegistry) -> None:
        """Export the dropped-records counter in a server's registry."""
        registry.register(self.dropped)

    def stop(self, timeout: float | None = None) -> bool:
        """Write what is queued (bounded wait) and stop the writer; later records
        are counted as `stopped`. Called on a clean exit (atexit) and when
        `configure` replaces this pipeline. True if every queued line was written."""
        atexit.unregister(self.stop)
        self.handler.stopped = True
        return self.listener.stop_within(self._flush_timeout_s if timeout is None else timeout)


def configure(
    service: str,
    region: str,
    level: str = "INFO",
    *,
    decisions_per_s: float = 0.0,
    stream: IO[str] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> LogPipeline:
    """Route all logging to `stream` (stderr) as JSON lines through a bounded
    queue and a writer thread; cap `*.decisions` loggers at `decisions_per_s`
    lines per second each (0: no cap). Replaces a pipeline installed before."""
    pipeline = LogPipeline(
        JsonFormatter(service, region),
        sys.stderr if stream is None else stream,
        decisions_per_s=decisions_per_s,
        queue_size=queue_size,
    )
    root = logging.getLogger()
    replaced = [h.pipeline for h in root.handlers if isinstance(h, DroppingQueueHandler)]
    root.handlers[:] = [pipeline.handler]
    root.setLevel(level.upper())
    # aiokafka and grpc are chatty at INFO about reconnects we already report.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    grpc_core = logging.getLogger(CallerGone.LOGGER)
    if not any(isinstance(f, CallerGone) for f in grpc_core.filters):
        grpc_core.addFilter(CallerGone())
    for previous in replaced:
        previous.stop()
    return pipeline
