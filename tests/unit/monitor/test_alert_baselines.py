"""The alerts' maths: EWMA mean / standard deviation and z-scores, the noise floors
that keep a perfectly steady series from firing on one extra block, and what a
degraded signal contributes (bounded dependency names)."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.monitor.decisions import MAX_DEPENDENCIES, UNKNOWN_DEPENDENCY, decision_from_signal
from services.monitor.detectors import (
    Baseline,
    count_std,
    evaluated_minute,
    ewma,
    ewma_alpha,
    fingerprint,
    share_std,
    zscore,
)
from tests.integration.monitor.monitor_support import make_signal

values = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200)
half_lives = st.floats(min_value=0.5, max_value=500)


def test_a_point_weighs_half_as_much_one_half_life_later() -> None:
    alpha = ewma_alpha(10)
    assert (1 - alpha) ** 10 == pytest.approx(0.5)
    # A step from 0 to 1: after one half-life of 1s the mean is half way.
    b = ewma([0.0] + [1.0] * 10, half_life=10)
    assert b.mean == pytest.approx(0.5)


def test_an_empty_series_has_no_points_and_a_single_value_no_spread() -> None:
    assert ewma([], 5).points == 0
    assert ewma([3.0], 5) == Baseline(3.0, 0.0, 1)


@given(values, half_lives)
def test_the_mean_stays_within_the_values_and_the_spread_is_never_negative(xs: list[float], h: float) -> None:
    b = ewma(xs, h)
    assert b.points == len(xs)
    assert min(xs) - 1e-6 * (1 + abs(min(xs))) <= b.mean <= max(xs) + 1e-6 * (1 + abs(max(xs)))
    assert b.std >= 0 and math.isfinite(b.std)
    assert b.std <= (max(xs) - min(xs)) + 1e-6


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(1, 100), half_lives)
def test_a_constant_series_has_its_value_as_mean_and_no_spread(c: float, n: int, h: float) -> None:
    b = ewma([c] * n, h)
    assert b.mean == pytest.approx(c) and b.std == pytest.approx(0.0, abs=1e-9)


@given(values, half_lives, st.floats(min_value=-1e3, max_value=1e3), st.floats(min_value=0.1, max_value=10))
def test_shifting_and_scaling_the_series_moves_the_baseline_alike(xs, h, shift: float, scale: float) -> None:
    b = ewma(xs, h)
    moved = ewma([x * scale + shift for x in xs], h)
    tol = 1e-6 * (1 + max(abs(x) for x in xs)) * scale + 1e-6 * abs(shift)
    assert moved.mean == pytest.approx(b.mean * scale + shift, abs=tol + 1e-3)
    assert moved.std == pytest.approx(b.std * scale, abs=tol + 1e-3)


@given(st.floats(-10, 10), st.floats(-10, 10), st.floats(0.01, 10), st.floats(0.01, 10))
def test_the_z_score_grows_with_the_value(x: float, dx: float, std: float, mean: float) -> None:
    lo, hi = sorted((x, x + dx))
    assert zscore(lo, mean, std) <= zscore(hi, mean, std)


def test_the_z_score_of_a_series_with_no_spread() -> None:
    assert zscore(2.0, 1.0, 0.0) == math.inf
    assert zscore(0.5, 1.0, 0.0) == -math.inf
    assert zscore(1.0, 1.0, 0.0) == 0.0


def test_a_steady_share_is_not_a_spike_for_one_extra_block() -> None:
    # A tenant that always blocked exactly 5% of 100 decisions: its own spread is 0,
    # so binomial noise (and at least one point) is what a minute is measured against.
    b = ewma([0.05] * 60, 30)
    assert b.std == pytest.approx(0.0, abs=1e-12)
    std = share_std(b, 100)
    assert std == pytest.approx(math.sqrt(0.05 * 0.95 / 100))
    assert zscore(0.06, b.mean, std) < 1  # one more block in 100
    assert zscore(0.60, b.mean, std) > 20  # a real spike
    assert share_std(ewma([0.0] * 30, 30), 100) == 0.01  # a tenant that never blocks: the floor


def test_a_steady_count_is_measured_against_poisson_noise() -> None:
    b = ewma([100.0] * 60, 30)
    assert count_std(b) == pytest.approx(10.0)
    assert zscore(110, b.mean, count_std(b)) == pytest.approx(1.0)
    assert count_std(ewma([0.0] * 10, 30)) == 1.0


def test_the_fingerprint_is_stable_and_tells_kind_and_subject_apart() -> None:
    assert fingerprint("tenant_block_rate", "acme") == fingerprint("tenant_block_rate", "acme")
    assert len(fingerprint("tenant_block_rate", "acme")) == 16
    assert fingerprint("tenant_block_rate", "acme") != fingerprint("category_volume", "acme")
    assert fingerprint("a", "b\x00c") != fingerprint("a\x00b", "c")


def test_a_degraded_decision_names_its_failed_dependencies_bounded() -> None:
    ok = decision_from_signal(make_signal(region="r", tenant="t"), 0)
    assert ok.failed_dependencies == ()
    d = decision_from_signal(make_signal(region="r", tenant="t", failed_dependencies=("ratelimit", "classifier")), 0)
    assert d.failed_dependencies == ("classifier", "ratelimit")
    sig = make_signal(region="r", tenant="t", failed_dependencies=tuple(f"dep{i:02d}" + "x" * 100 for i in range(20)))
    many = decision_from_signal(sig, 0).failed_dependencies
    assert len(many) == MAX_DEPENDENCIES and all(len(n) == 64 for n in many)
    unnamed = make_signal(region="r", tenant="t")
    unnamed.degraded = True
    assert decision_from_signal(unnamed, 0).failed_dependencies == (UNKNOWN_DEPENDENCY,)


def test_the_evaluated_minute_is_the_last_one_closed_grace_seconds_ago() -> None:
    at = datetime.fromisoformat("2025-01-01T10:00:14+00:00").timestamp()
    assert evaluated_minute(at, 15) == datetime.fromisoformat("2025-01-01T09:58:00+00:00")
    assert evaluated_minute(at + 1, 15) == datetime.fromisoformat("2025-01-01T09:59:00+00:00")
    assert evaluated_minute(at, 0) == datetime.fromisoformat("2025-01-01T09:59:00+00:00")
