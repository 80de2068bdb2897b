"""The limiter's storage interface and its Redis implementation.

Every decision is one Lua script (atomic: exact under any concurrency, across any
number of replicas). Scripts from concurrent requests are pipelined into one
Redis round trip by a small batching loop: at low load a call goes out at once;
under load, calls that arrive while `max_inflight` pipelines are outstanding are
sent together in the next one, which is what lets one process make thousands of
decisions per second.

When Redis fails or times out, the store turns "down": calls fail fast with
RedisUnavailable (the limiter then applies the fail mode) while one background
task reconnects with exponential backoff (tenacity) and turns it back "up".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

log = logging.getLogger("safeguards.ratelimit.redis")

LUA_DIR = Path(__file__).parent / "lua"
FAILURES_TO_MARK_DOWN = 3
SCRIPT_NAMES = ("gcra", "fixed_window", "lease_acquire", "lease_renew", "lease_release")


class RedisUnavailable(Exception):
    """Redis could not answer in time; the caller applies its fail mode."""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


def load_scripts() -> dict[str, Script]:
    out = {}
    for name in SCRIPT_NAMES:
        src = (LUA_DIR / f"{name}.lua").read_text()
        out[name] = Script(name, src, hashlib.sha1(src.encode()).hexdigest())
    return out


class LimitStore(Protocol):
    """What the limiter needs from storage: run one named script on one key."""

    async def run(self, script: str, key: str, args: tuple[object, ...]) -> list[int]: ...

    @property
    def up(self) -> bool: ...


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "ratelimit_redis_latency_seconds",
            "Round-trip time of one Redis pipeline.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.batch = Histogram(
            "ratelimit_redis_pipeline_size",
            "Scripts sent in one Redis round trip.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.errors = Counter("ratelimit_redis_errors", "Failed Redis round trips.", ["kind"], registry=registry)
        self.up = Gauge(
            "ratelimit_redis_up",
            "1 when Redis answers, 0 while reconnecting.",
            registry=registry,
            multiprocess_mode="min",
        )


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        metrics: StoreMetrics,
        max_batch: int = 128,
        max_inflight: int = 1,
    ) -> None:
        # The per-decision deadline is the timer in run(); the socket timeout only
        # catches a connection that hangs, so it is looser: on a saturated event loop a
        # reply can sit unread past the decision deadline while Redis itself is fine.
        self._client = aioredis.from_url(
            url,
            socket_timeout=max(1.0, timeout_s * 10),
            socket_connect_timeout=max(0.5, timeout_s * 4),
            health_check_interval=0,
            max_connections=max_inflight + 4,
        )
        self._timeout = timeout_s
        self._metrics = metrics
        self._scripts = load_scripts()
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_inflight)
        self._queue: deque[tuple[Script, str, tuple[object, ...], asyncio.Future]] = deque()
        self._wakeup = asyncio.Event()
        self._up = False
        self._failures = 0  # consecutive failed round trips
        self._loop_task: asyncio.Task | None = None
        self._reconnect_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Connect; a Redis that is down at start is not fatal (we reconnect)."""
        self._loop_task = asyncio.create_task(self._batch_loop(), name="redis-batcher")
        try:
            await self._connect()
            self._set_up(True)
        except (TimeoutError, RedisError, OSError) as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        for task in (self._loop_task, self._reconnect_task, *self._tasks):
            if task:
                task.cancel()
        await self._client.aclose()

    async def _connect(self) -> None:
        await asyncio.wait_for(self._client.ping(), self._timeout * 4)
        for script in self._scripts.values():
            await self._client.script_load(script.source)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.up.set(1 if up else 0)

    def _mark_down(self, exc: BaseException) -> None:
        if self._up or self._reconnect_task is None or self._reconnect_task.done():
            log.error("redis unavailable; reconnecting with backoff", extra={"error": type(exc).__name__})
        self._set_up(False)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
            retry=retry_if_exception_type((RedisError, OSError, asyncio.TimeoutError)),
            reraise=True,
        ):
            with attempt:
                await self._client.connection_pool.disconnect()
                await self._connect()
        self._set_up(True)
        log.warning("redis reconnected")

    async def run(self, script: str, key: str, args: tuple[object, ...]) -> list[int]:
        if not self._up:
            raise RedisUnavailable("redis is down (reconnecting)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((self._scripts[script], key, args, fut))
        self._wakeup.set()
        # A timer on the future, not asyncio.wait_for: wait_for wraps every call in a
        # task, which costs more than the rest of a decision's Python work.
        timer = loop.call_later(self._timeout, self._expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, fut: asyncio.Future) -> None:
        if not fut.done():
            self._metrics.errors.labels("timeout").inc()
            fut.set_exception(RedisUnavailable(f"redis did not answer within {self._timeout * 1000:.0f} ms"))

    async def _batch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            # Let the other coroutines ready in this loop iteration add their calls, so
            # one round trip carries every decision the iteration produced.
            await asyncio.sleep(0)
            await self._slots.acquire()
            batch = []
            while self._queue and len(batch) < self._max_batch:
                item = self._queue.popleft()
                if not item[3].done():  # skip callers that already timed out
                    batch.append(item)
            if not self._queue:
                self._wakeup.clear()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list) -> None:
        start = time.perf_counter()
        try:
            results = await self._pipeline(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted or SCRIPT FLUSH: load the scripts and resend those calls.
                for script in self._scripts.values():
                    await self._client.script_load(script.source)
                retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                again = await self._pipeline([batch[i] for i in retry])
                for i, r in zip(retry, again, strict=False):
                    results[i] = r
        except (TimeoutError, RedisError, OSError) as exc:
            self._metrics.errors.labels(type(exc).__name__).inc()
            self._failures += 1
            # A refused/reset connection means Redis is down; a timeout may only mean
            # this process is overloaded, so only repeated ones turn the store down.
            if isinstance(exc, RedisConnectionError | OSError) or self._failures >= FAILURES_TO_MARK_DOWN:
                self._mark_down(exc)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(RedisUnavailable(f"redis error: {type(exc).__name__}"))
            return
        finally:
            self._slots.release()
        self._failures = 0
        self._metrics.latency.observe(time.perf_counter() - start)
        self._metrics.batch.observe(len(batch))
        for (*_, fut), result in zip(batch, results, strict=False):
            if fut.done():
                continue
            if isinstance(result, ResponseError):
                self._metrics.errors.labels("script").inc()
                fut.set_exception(RedisUnavailable(f"redis script error: {result}"))
            else:
                fut.set_result(result)

    async def _pipeline(self, batch: list) -> list:
        pipe = self._client.pipeline(transaction=False)
        for script, key, args, _fut in batch:
            pipe.evalsha(script.sha, 1, key, *args)
        return await pipe.execute(raise_on_error=False)
