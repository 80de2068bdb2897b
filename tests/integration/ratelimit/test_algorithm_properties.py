"""Property tests (hypothesis) of the Lua algorithms on a real Redis, against
reference models written independently here with exact rational arithmetic.

Time is injected (the scripts take an explicit `now` for exactly this), so the
tests explore arbitrary arrival sequences in microseconds without sleeping."""

from __future__ import annotations

import uuid
from fractions import Fraction

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ratelimit.store import load_scripts

SCRIPTS = load_scripts()


@pytest.fixture(scope="module")
def r():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    yield client
    keys = list(client.scan_iter("prop:*"))
    if keys:
        client.delete(*keys)


def run(r, name: str, key: str, *args):
    return r.evalsha(SCRIPTS[name].sha, 1, key, *args)


@pytest.fixture(scope="module", autouse=True)
def _load(r):
    for s in SCRIPTS.values():
        r.script_load(s.source)


class GcraReference:
    """Textbook GCRA with a theoretical arrival time, in exact fractions."""

    def __init__(self, period_us: int, limit: int, capacity: int) -> None:
        self.T = Fraction(period_us, limit)  # emission interval
        self.tau = self.T * capacity  # burst tolerance
        self.tat: Fraction | None = None

    def hit(self, now: int, cost: int) -> tuple[bool, int]:
        tat = max(self.tat if self.tat is not None else Fraction(now), Fraction(now))
        new_tat = tat + self.T * cost
        if new_tat - self.tau > now:
            return False, int((now - (tat - self.tau)) // self.T)
        self.tat = new_tat
        return True, int((now - (new_tat - self.tau)) // self.T)


arrivals = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3_000_000), st.integers(min_value=1, max_value=5)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=1000),
    capacity=st.integers(min_value=1, max_value=20),
    period_s=st.sampled_from([1, 7, 60, 3600]),
    steps=arrivals,
)
def test_gcra_script_agrees_with_the_reference_model(r, limit, capacity, period_s, steps) -> None:
    key = f"prop:{uuid.uuid4().hex}"
    period_us = period_s * 1_000_000
    ref = GcraReference(period_us, limit, capacity)
    now = 1_700_000_000_000_000
    emission = period_us / limit
    for gap, cost in steps:
        now += gap
        allowed, remaining, *_ = run(r, "gcra", key, repr(emission), capacity, cost, now)
        exp_allowed, exp_remaining = ref.hit(now, cost)
        assert (bool(allowed), remaining) == (exp_allowed, exp_remaining)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=50),
    period_s=st.sampled_from([1, 10]),
    steps=arrivals,
)
def test_gcra_never_admits_more_than_burst_plus_rate_in_any_interval(r, limit, period_s, steps) -> None:
    """The token-bucket bound: hits admitted in any interval [t1, t2] are at most
    capacity + rate * (t2 - t1). With capacity = limit this rules out the fixed
    window's double burst at a boundary."""
    key = f"prop:{uuid.uuid4().hex}"
    period_us = period_s * 1_000_000
    now = 1_700_000_000_000_000
    admitted: list[tuple[int, int]] = []
    for gap, cost in steps:
        now += gap
        allowed, *_ = run(r, "gcra", key, repr(period_us / limit), limit, cost, now)
        if allowed:
            admitted.append((now, cost))
    for i, (t1, _) in enumerate(admitted):
        total = 0
        for t2, cost in admitted[i:]:
            total += cost
            assert total <= limit + Fraction(limit, period_us) * (t2 - t1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(min_value=1, max_value=20), steps=arrivals)
def test_fixed_window_matches_envoy_counting(r, limit, steps) -> None:
    key = f"prop:{uuid.uuid4().hex}"
    window_us = 1_000_000
    now = 1_700_000_000_000_000
    counts: dict[int, int] = {}
    for gap, cost in steps:
        now += gap
        allowed, remaining, reset_us = run(r, "fixed_window", key, limit, cost, window_us, now)
        win = now // window_us
        counts[win] = counts.get(win, 0) + cost  # envoy counts every hit, even over the limit
        assert bool(allowed) == (counts[win] <= limit)
        assert remaining == max(0, limit - counts[win])
        assert reset_us == (win + 1) * window_us - now


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_concurrent=st.integers(min_value=1, max_value=5),
    ops=st.lists(
        st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 400_000), st.integers(0, 9)),
        max_size=40,
    ),
)
def test_leases_never_exceed_the_limit_and_expire(r, max_concurrent, ops) -> None:
    key = f"prop:{uuid.uuid4().hex}"
    ttl = 1_000_000
    now = 1_700_000_000_000_000
    held: dict[str, int] = {}  # lease id -> expiry (reference)
    n = 0
    for op, gap, pick in ops:
        now += gap
        held = {k: v for k, v in held.items() if v > now}
        if op == "acquire":
            n += 1
            lease = f"l{n}"
            granted, active, *_ = run(r, "lease_acquire", key, max_concurrent, ttl, lease, "0", now)
            assert bool(granted) == (len(held) < max_concurrent)
            if granted:
                held[lease] = now + ttl
            assert active == len(held)
            assert active <= max_concurrent
        elif held:
            lease = sorted(held)[pick % len(held)]
            released, active = run(r, "lease_release", key, lease, now)
            assert released == 1
            del held[lease]
            assert active == len(held)
