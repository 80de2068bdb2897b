"""Helpers for one service calling another: one deadline budget per request,
retries only inside what is left of it (tenacity), and a circuit breaker per
dependency so a dead dependency costs nothing instead of a timeout per call.

All three are protocol-free apart from `retryable_grpc`, so the enforcer's
decision code can use them around any awaitable."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")


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


@dataclass
class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `open_seconds`
    lets one probe through (half-open); closes again on its success."""

    name: str
    failure_threshold: int = 5
    open_seconds: float = 2.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = field(default=BreakerState.CLOSED, init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _probing: bool = field(default=False, init=False)

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.open_seconds:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self.clock()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if not self.allow():
            raise BreakerOpen(f"{self.name}: circuit open")
        try:
            result = await fn()
        except Exception:
            self.record_failure()
            raise
        except BaseException:
            # Cancelled (the caller went away): says nothing about the dependency, but a
            # probe that never reports back must not leave the breaker half-open for good.
            self._probing = False
            raise
        self.record_success()
        return result


RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


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
