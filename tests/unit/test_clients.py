"""Deadline budget, retries within it, and the circuit breaker."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.clients import BreakerOpen, BreakerState, Budget, CircuitBreaker, Health, call_in_budget
from tests.support import free_port


def test_budget_takes_the_tighter_of_caller_and_service() -> None:
    assert Budget.start(0.05, caller_remaining_s=10).remaining() <= 0.05
    assert Budget.start(10, caller_remaining_s=0.02).remaining() <= 0.02
    assert Budget.start(0.0).expired


def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    now = [0.0]
    b = CircuitBreaker("dep", failure_threshold=3, open_seconds=1.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.record(Health.UNHEALTHY)
    assert b.state is BreakerState.CLOSED
    b.record(Health.UNHEALTHY)
    assert b.state is BreakerState.OPEN and not b.allow()
    now[0] = 1.5
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    b.record(Health.UNHEALTHY)
    assert b.state is BreakerState.OPEN
    now[0] = 3.0
    assert b.allow()
    b.record(Health.HEALTHY)
    assert b.state is BreakerState.CLOSED and b.allow()


async def test_breaker_fails_fast_when_open() -> None:
    b = CircuitBreaker("dep", failure_threshold=1, open_seconds=60)

    async def boom():
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await b.call(boom)
    with pytest.raises(BreakerOpen):
        await b.call(boom)


async def test_a_cancelled_probe_does_not_leave_the_breaker_stuck_half_open() -> None:
    now = [0.0]
    b = CircuitBreaker("dep", failure_threshold=1, open_seconds=1.0, clock=lambda: now[0])
    b.record(Health.UNHEALTHY)
    now[0] = 2.0
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.sleep(60)

    probe = asyncio.create_task(b.call(hang))
    await started.wait()
    probe.cancel()  # the caller whose request carried the probe went away
    with pytest.raises(asyncio.CancelledError):
        await probe

    async def ok():
        return "fine"

    assert await b.call(ok) == "fine"  # the next call probes, and closes the breaker
    assert b.state is BreakerState.CLOSED


async def test_retries_stay_inside_the_budget_against_a_dead_grpc_server() -> None:
    """A real channel to a port nobody listens on: UNAVAILABLE, retried, and the
    whole thing returns within the budget instead of hanging."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    calls = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def check(timeout: float):
            nonlocal calls
            calls += 1
            return await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)

        budget = Budget.start(0.3)
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call_in_budget(check, budget, attempts=3)
        assert time.monotonic() - t0 < 0.6
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert calls >= 2


async def test_non_retryable_errors_are_not_retried() -> None:
    calls = 0

    async def bad(timeout: float):
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await call_in_budget(bad, Budget.start(1.0), attempts=5)
    assert calls == 1


async def test_slow_dependency_gets_only_the_remaining_time() -> None:
    seen = []

    async def slow(timeout: float):
        seen.append(timeout)
        await asyncio.sleep(timeout)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await call_in_budget(slow, Budget.start(0.1), attempts=3, retry_on=lambda e: isinstance(e, TimeoutError))
    assert seen[0] <= 0.1 and sum(seen) <= 0.12


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


async def fail_with(b: CircuitBreaker, exc: BaseException, budget_s: float | None = 0.05) -> None:
    async def boom():
        raise exc

    with pytest.raises(type(exc)):
        await b.call(boom, budget_s)


async def test_refusals_of_one_request_never_open_the_breaker() -> None:
    """INVALID_ARGUMENT (an oversize text, a bad field) is a healthy server refusing one
    request: a thousand of them must not switch the classifier off for every tenant."""
    b = CircuitBreaker("dep", failure_threshold=3, min_calls=5, window=10)
    for _ in range(1000):
        await fail_with(b, rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    assert b.state is BreakerState.CLOSED and b.allow()


async def test_a_callers_own_tiny_deadline_says_nothing_about_the_dependency() -> None:
    b = CircuitBreaker("dep", failure_threshold=3, min_calls=5, window=10, min_judged_budget_s=0.01)
    for _ in range(100):
        await fail_with(b, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), budget_s=0.001)
    assert b.state is BreakerState.CLOSED


async def test_timeouts_alone_open_the_breaker_only_as_an_error_rate_over_many_calls() -> None:
    changes: list[BreakerState] = []
    b = CircuitBreaker(
        "dep", failure_threshold=3, window=20, min_calls=10, error_rate=0.5, on_change=lambda b: changes.append(b.state)
    )

    async def ok():
        return 1

    # Every other call times out: 50% once 10 calls are in the window.
    for i in range(9):
        if i % 2:
            await fail_with(b, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), budget_s=None)
        else:
            await b.call(ok, 0.05)
    assert b.state is BreakerState.CLOSED  # 9 calls: under min_calls
    await fail_with(b, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), budget_s=None)
    assert b.state is BreakerState.OPEN and changes == [BreakerState.OPEN]
    assert "5 of the last 10" in b.opened_because


async def test_a_few_timeouts_among_answers_keep_it_closed() -> None:
    b = CircuitBreaker("dep", failure_threshold=3, window=50, min_calls=20, error_rate=0.5)

    async def ok():
        return 1

    for i in range(200):
        if i % 5 == 0:  # 20% slow
            await fail_with(b, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), budget_s=None)
        else:
            await b.call(ok, 0.05)
    assert b.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "exc",
    [rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), ConnectionRefusedError()],
)
async def test_signs_of_a_down_or_overloaded_dependency_open_it_after_the_threshold(exc) -> None:
    b = CircuitBreaker("dep", failure_threshold=3, min_calls=100)
    for _ in range(2):
        await fail_with(b, exc)
    assert b.state is BreakerState.CLOSED
    await fail_with(b, exc)
    assert b.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen, match="3 consecutive failures"):
        await b.call(lambda: asyncio.sleep(0))


async def test_an_answer_between_failures_resets_the_consecutive_count() -> None:
    b = CircuitBreaker("dep", failure_threshold=3, min_calls=100)

    async def ok():
        return 1

    for _ in range(10):
        await fail_with(b, rpc_error(grpc.StatusCode.UNAVAILABLE))
        await fail_with(b, rpc_error(grpc.StatusCode.UNAVAILABLE))
        await b.call(ok)
    assert b.state is BreakerState.CLOSED


async def test_an_early_deadline_answer_is_admission_control_not_a_slow_dependency() -> None:
    """The classifier refuses at once work it cannot finish before the deadline
    (DEADLINE_EXCEEDED long before the deadline): a healthy server's answer, which must
    not open the breaker however many callers get it; calls that run out the clock do."""
    now = [0.0]
    b = CircuitBreaker("dep", window=20, min_calls=10, error_rate=0.5, clock=lambda: now[0])

    async def refused_early():
        now[0] += 0.002  # answered in 2 ms of a 50 ms budget
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)

    async def ran_out():
        now[0] += 0.05
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)

    for _ in range(100):
        with pytest.raises(grpc.aio.AioRpcError):
            await b.call(refused_early, 0.05)
    assert b.state is BreakerState.CLOSED
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError):
            await b.call(ran_out, 0.05)
    assert b.state is BreakerState.OPEN


async def test_a_late_success_of_a_call_started_before_the_breaker_opened_does_not_close_it() -> None:
    now = [0.0]
    b = CircuitBreaker("dep", failure_threshold=2, open_seconds=5.0, clock=lambda: now[0])
    release = asyncio.Event()

    async def slow_ok():
        await release.wait()
        return 1

    late = asyncio.ensure_future(b.call(slow_ok))
    await asyncio.sleep(0)
    for _ in range(2):
        await fail_with(b, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert b.state is BreakerState.OPEN
    release.set()
    assert await late == 1
    assert b.state is BreakerState.OPEN and not b.allow()  # still open: only a probe closes it
    now[0] = 5.0
    assert await b.call(lambda: asyncio.sleep(0, "probe")) == "probe"
    assert b.state is BreakerState.CLOSED
