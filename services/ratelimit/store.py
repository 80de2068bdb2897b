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

Redis Cluster (`cluster=True`): the same pipelines through redis-py's
RedisCluster, which splits each one by node and follows MOVED/ASK redirects (a
redirected script ran nowhere before, so it still runs once). Every key a script
touches is one descriptor's key, hash-tagged by the limiter, so each script is
single-slot. The client does not retry a round trip itself: a script whose reply
was lost may have run, so resending it could count a hit twice; the caller's
deadline and fail mode apply instead, and the store reconnects (a fresh topology
from CLUSTER SLOTS) until every primary answers again, e.g. after a replica took
over a failed master.
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
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

log = logging.getLogger("safeguards.ratelimit.redis")

LUA_DIR = Path(__file__).parent / "lua"
FAILURES_TO_MARK_DOWN = 3
SCRIPT_NAMES = ("gcra", "fixed_window", "lease_acquire", "lease_renew", "lease_release")


#: What a failed round trip raises (RedisClusterException is not a RedisError).
ROUND_TRIP_ERRORS = (TimeoutError, RedisError, RedisClusterException, OSError)


class RedisUnavailable(Exception):
    """Redis could not answer in time; the caller applies its fail mode."""


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Seed nodes of a cluster URL, `redis[s]://[user:pass@]host[:port][,host[:port]...][/0][?options]`:
    the URL narrowed to its first seed (it carries the credentials and options for
    every node) and each seed's (host, port). Raises ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"cluster mode needs a redis:// or rediss:// URL, got {scheme or url!r}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if tail.split("?", 1)[0] not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        item = item.strip()
        host, colon, port = item.rpartition(":")
        if not colon or item.endswith("]"):  # no port: a name, or an IPv6 address in brackets
            host, port = item, "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad cluster seed {item!r} (want HOST:PORT)")
        seeds.append((host, int(port)))
    first = f"{scheme}://{userinfo}{at}{hosts.split(',')[0].strip()}{tail}"
    return first, seeds


def make_client(url: str, *, cluster: bool, socket_timeout: float, connect_timeout: float, max_connections: int):
    """A Redis client for one server or for a Redis Cluster seeded from the URL."""
    common = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 0,
        "max_connections": max_connections,  # per node in a cluster
    }
    if not cluster:
        return aioredis.from_url(url, **common)
    first, seeds = cluster_seeds(url)
    return RedisCluster.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
        retry=Retry(NoBackoff(), 0),  # no resend of a script that may have run; see the module doc
        **common,
    )


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
        cluster: bool = False,
    ) -> None:
        # The per-decision deadline is the timer in run(); the socket timeout only
        # catches a connection that hangs, so it is looser: on a saturated event loop a
        # reply can sit unread past the decision deadline while Redis itself is fine.
        self._client = make_client(
            url,
            cluster=cluster,
            socket_timeout=max(1.0, timeout_s * 10),
            connect_timeout=max(0.5, timeout_s * 4),
            max_connections=max_inflight + 4,
        )
        self._cluster = cluster
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
        except ROUND_TRIP_ERRORS as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        for task in (self._loop_task, self._reconnect_task, *self._tasks):
            if task:
                task.cancel()
        await self._client.aclose()

    async def _connect(self) -> None:
        if self._cluster:
            # The slot map from a seed; SCRIPT LOAD then goes to every primary, so
            # "up" means every slot has a primary that answers.
            await asyncio.wait_for(self._client.initialize(), max(2.0, self._timeout * 40))
        else:
            await asyncio.wait_for(self._client.ping(), self._timeout * 4)
        await self._load_scripts()

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            await self._client.script_load(script.source)

    async def _disconnect(self) -> None:
        if self._cluster:
            await self._client.aclose()  # drops the slot map too: the next initialize() reads it anew
        else:
            await self._client.connection_pool.disconnect()

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.up.set(1 if up else 0)

    def _mark_down(self, exc: BaseException) -> None:
        if self._up or self._reconnect_task is None or self._reconnect_task.done():
            extra = {"error": type(exc).__name__}
            if isinstance(exc, RedisClusterException):  # says what is wrong, e.g. "Cluster mode is not enabled"
                extra["detail"] = str(exc)[:200]  # (no key names: those carry descriptor values)
            log.error("redis unavailable; reconnecting with backoff", extra=extra)
        self._set_up(False)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
            retry=retry_if_exception_type(ROUND_TRIP_ERRORS),
            reraise=True,
        ):
            with attempt:
                await self._disconnect()
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
                # Redis restarted, SCRIPT FLUSH, or a promoted replica: load the scripts
                # (on every primary) and resend those calls (they did not run).
                await self._load_scripts()
                retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                again = await self._pipeline([batch[i] for i in retry])
                for i, r in zip(retry, again, strict=False):
                    results[i] = r
        except ROUND_TRIP_ERRORS as exc:
            self._failed(exc)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(RedisUnavailable(f"redis error: {type(exc).__name__}"))
            return
        finally:
            self._slots.release()
        # A cluster pipeline returns a node's connection error in place of its
        # replies (the other nodes' replies are good).
        lost = next((r for r in results if isinstance(r, Exception) and not isinstance(r, ResponseError)), None)
        if lost is None:
            self._failures = 0
            self._metrics.latency.observe(time.perf_counter() - start)
            self._metrics.batch.observe(len(batch))
        else:
            self._failed(lost)
        for (*_, fut), result in zip(batch, results, strict=False):
            if fut.done():
                continue
            if isinstance(result, ResponseError):
                self._metrics.errors.labels("script").inc()
                fut.set_exception(RedisUnavailable(f"redis script error: {result}"))
            elif isinstance(result, Exception):
                fut.set_exception(RedisUnavailable(f"redis error: {type(result).__name__}"))
            else:
                fut.set_result(result)

    def _failed(self, exc: BaseException) -> None:
        self._metrics.errors.labels(type(exc).__name__).inc()
        self._failures += 1
        # A refused/reset connection means Redis (or a cluster primary) is down; a
        # timeout may only mean this process is overloaded, so only repeated ones
        # turn the store down.
        if isinstance(exc, RedisConnectionError | OSError) or self._failures >= FAILURES_TO_MARK_DOWN:
            self._mark_down(exc)

    async def _pipeline(self, batch: list) -> list:
        pipe = self._client.pipeline(transaction=False)
        for script, key, args, _fut in batch:
            # execute_command, not pipe.evalsha: redis-py blocks the evalsha helper in
            # cluster pipelines (a multi-key script could span slots); ours touch one key,
            # and the cluster client routes EVALSHA by that key.
            pipe.execute_command("EVALSHA", script.sha, 1, key, *args)
        return await pipe.execute(raise_on_error=False)
