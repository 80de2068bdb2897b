"""Helpers for one service calling another: one deadline budget per request,
retries only inside what is left of it (tenacity), a circuit breaker per
dependency so a dead dependency costs nothing instead of a timeout per call, and
the channel options that spread calls over every replica of a dependency.

The budget, retry and breaker are protocol-free apart from `retryable_grpc`, so
the enforcer's decision code can use them around any awaitable."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")

LbPolicy = Literal["round_robin", "pick_first"]


def balanced_channel_options(
    health_service: str, lb_policy: LbPolicy = "round_robin", keepalive_s: float = 10.0
) -> list[tuple[str, object]]:
    """gRPC channel options for a dependency served by several replicas.

    * `round_robin` over every address the target resolves to: `dns:///NAME:PORT`
      (a Kubernetes headless service: one A record per pod) or a static list
      `ipv4:HOST:PORT,HOST:PORT`. gRPC's default, `pick_first`, sends everything to
      one replica and leaves the others idle.
    * Per-replica health: each replica's grpc.health.v1 `Watch` on `health_service`
      (gRPC's client-side health checking, turned on by `healthCheckConfig` under
      round_robin). A replica that starts draining (SIGTERM turns its health
      NOT_SERVING before it stops) leaves the rotation before it refuses anything.
    * Keepalive pings every `keepalive_s` (the servers allow one per 5 s, with or
      without calls), so a replica whose host vanished without closing its
      connections is noticed within `keepalive_s` + its timeout, not a TCP timeout.
    * Retries: one layer only, the caller's `call_in_budget` (idempotent calls, inside
      the budget); each attempt is picked anew, so a retry lands on the next replica.
      gRPC's transparent retries (on by default) also resend calls that never reached
      a server, such as those a draining replica's GOAWAY refused.
    """
    config: dict[str, object] = {"loadBalancingConfig": [{lb_policy: {}}]}
    if lb_policy == "round_robin":
        config["healthCheckConfig"] = {"serviceName": health_service}
    keepalive_ms = int(keepalive_s * 1000)
    return [
        ("grpc.service_config", json.dumps(config)),
        # The config above is the one that applies: never one from DNS TXT records.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", max(1000, keepalive_ms // 2)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
    ]


@dataclass
class Budget:
    """A request's deadline: the caller's, capped by the service's own budget."""

    deadline: float  # time.monotonic() value

    @classmethod
    def start(cls, budget_s: float, caller_remaining_s: float | None = None) -> Budget:
        limit = budget_s if caller_remaining_s is None else min(budget_s, caller_remaining_s)
        return cls(time.monotonic() + max(0.0, limit))

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


class BreakerOpen(Exception):
    """The dependency's breaker is open: fail fast without calling."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Health(enum.Enum):
    """What one call's outcome says about the dependency (not about the request)."""

    HEALTHY = "healthy"  # it answered: a result, or a refusal of this one request
    UNHEALTHY = "unhealthy"  # it is down or overloaded: connection refused, UNAVAILABLE, its overload answer
    SLOW = "slow"  # it did not answer in time: counts only in the error rate over many calls
    UNKNOWN = "unknown"  # says nothing (the caller went away, or its own deadline was too short to judge)


#: gRPC codes by what they say about the server that returned them. INVALID_ARGUMENT and
#: friends are answers about the request (a healthy server refusing it), so they never
#: count against the dependency: one caller's oversize text must not open the breaker
#: for every tenant.
UNHEALTHY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
SLOW_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED})
#: A DEADLINE_EXCEEDED that arrives before this share of the call's budget has passed was
#: the server's own answer, not a call that ran out of time.
EARLY_ANSWER = 0.8


def grpc_health(exc: BaseException) -> Health:
    """Classify a failed call for the breaker (see `Health`)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code in UNHEALTHY_CODES:
            return Health.UNHEALTHY
        if code in SLOW_CODES:
            return Health.SLOW
        if code is grpc.StatusCode.CANCELLED:
            return Health.UNKNOWN
        return Health.HEALTHY
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Health.SLOW
    return Health.UNHEALTHY  # connection errors, and anything unexpected in the call path


@dataclass
class CircuitBreaker:
    """Per dependency; opens only on signs that the dependency is unhealthy, never on
    what one request did (docs/ARCHITECTURE.md "Failure semantics").

    Two rules open it:

    * `failure_threshold` consecutive UNHEALTHY outcomes (connection failures,
      UNAVAILABLE, the dependency's own overload answers);
    * over the last `window` calls with a verdict (at least `min_calls` of them), a share
      of UNHEALTHY + SLOW outcomes of `error_rate` or more: a dependency that stopped
      answering in time for most callers, not one caller with a tiny deadline.

    HEALTHY outcomes (an answer, or a refusal of this one request such as
    INVALID_ARGUMENT, or a DEADLINE_EXCEEDED returned early: admission control refusing
    work it cannot finish in time) reset the consecutive count; UNKNOWN ones (the caller went away, or
    its deadline was under `min_judged_budget_s`) are not recorded at all. After
    `open_seconds` one probe goes through (half-open); its success closes the breaker.
    `on_change(breaker)` is called on every transition (metrics, logs)."""

    name: str
    failure_threshold: int = 5
    open_seconds: float = 2.0
    window: int = 50
    min_calls: int = 20
    error_rate: float = 0.5
    min_judged_budget_s: float = 0.010
    classify: Callable[[BaseException], Health] = grpc_health
    on_change: Callable[[CircuitBreaker], None] | None = None
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = field(default=BreakerState.CLOSED, init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _probing: bool = field(default=False, init=False)
    _recent: deque = field(default_factory=deque, init=False)  # bools: True = unhealthy or slow
    _bad: int = field(default=0, init=False)
    opened_because: str = field(default="", init=False)

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.open_seconds:
            self._set(BreakerState.HALF_OPEN)
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record(self, health: Health) -> None:
        """Record one call's outcome and apply the opening rules."""
        if health is Health.UNKNOWN:
            self._probing = False
            return
        bad = health is not Health.HEALTHY
        self._recent.append(bad)
        self._bad += bad
        if len(self._recent) > self.window:
            self._bad -= self._recent.popleft()
        if health is Health.HEALTHY:
            self._failures = 0
            self._probing = False
            # Only the half-open probe's success closes it: a call that started before the
            # breaker opened and succeeds late says nothing about the dependency now.
            if self.state is BreakerState.HALF_OPEN:
                self._set(BreakerState.CLOSED)
            return
        self._probing = False
        if health is Health.UNHEALTHY:
            self._failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open("probe failed")
        elif self.state is BreakerState.CLOSED:
            if self._failures >= self.failure_threshold:
                self._open(f"{self._failures} consecutive failures")
            elif len(self._recent) >= self.min_calls and self._bad >= self.error_rate * len(self._recent):
                self._open(f"{self._bad} of the last {len(self._recent)} calls failed or timed out")

    def _open(self, why: str) -> None:
        self._opened_at = self.clock()
        self.opened_because = why
        self._failures = 0
        self._recent.clear()
        self._bad = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(self)

    async def call(self, fn: Callable[[], Awaitable[T]], budget_s: float | None = None) -> T:
        """Run `fn` through the breaker. `budget_s`: the time the caller gave this call;
        under `min_judged_budget_s` a timeout says nothing about the dependency."""
        if not self.allow():
            raise BreakerOpen(f"{self.name}: circuit open ({self.opened_because})")
        started = self.clock()
        try:
            result = await fn()
        except Exception as exc:
            health = self.classify(exc)
            if health is Health.SLOW and budget_s is not None:
                if budget_s < self.min_judged_budget_s:
                    health = Health.UNKNOWN
                elif self.clock() - started < EARLY_ANSWER * budget_s:
                    # DEADLINE_EXCEEDED well before the deadline: the dependency answered
                    # (it refused work it could not finish in time, as the classifier's
                    # admission control does): an answer about this request's deadline.
                    health = Health.HEALTHY
            self.record(health)
            raise
        except BaseException:
            # Cancelled (the caller went away): says nothing about the dependency, but a
            # probe that never reports back must not leave the breaker half-open for good.
            self._probing = False
            raise
        self.record(Health.HEALTHY)
        return result


#: CANCELLED is in: a call our caller cancels raises asyncio.CancelledError, not this, so
#: an AioRpcError CANCELLED came from the other side: a replica that stopped (its server
#: cancels streams that reached it as it shuts down), where the next pick is another one.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)


def retryable_grpc(exc: BaseException) -> bool:
    """Transient gRPC failures worth retrying for idempotent calls."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRYABLE_CODES


async def call_in_budget(
    fn: Callable[[float], Awaitable[T]],
    budget: Budget,
    *,
    attempts: int = 2,
    retry_on: Callable[[BaseException], bool] = retryable_grpc,
    min_attempt_s: float = 0.002,
) -> T:
    """Call `fn(timeout)` with the budget's remaining time as its timeout; retry
    (idempotent calls only) while attempts and budget remain."""

    def out_of_budget(state: RetryCallState) -> bool:
        return budget.remaining() < min_attempt_s

    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts) | out_of_budget,
        retry=retry_if_exception(retry_on),
        wait=wait_exponential_jitter(multiplier=0.001, max=0.01, jitter=0.001),
        reraise=True,
    ):
        with attempt:
            remaining = budget.remaining()
            if remaining <= 0:
                raise TimeoutError("deadline budget exhausted")
            return await fn(remaining)
    raise AssertionError("unreachable")  # pragma: no cover
