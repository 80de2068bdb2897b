"""Growth-ratio measurement for the linear-time tests.

Why a ratio and not a time limit: the project's tests never assert wall-clock
durations (a shared 2-core box makes any absolute figure flaky). What a hostile
input exploits is *growth*: an algorithm quadratic in its input takes 64x longer
on 8x the input, a linear one ~8x. So each check times the same function on an
input of size n and of size 8n and asserts the ratio stays far below 64.

Robustness on a loaded machine:
- CPU time of this process (`time.process_time`), not wall time, so time spent
  descheduled by other jobs does not count;
- each sample repeats the call until it has run for several milliseconds, so the
  clock's granularity and per-call overhead do not dominate small inputs;
- best of several samples (noise only ever adds time);
- a ratio over the limit is measured once more before it fails, and the lower of
  the two counts (a quadratic function fails both, by a wide margin).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: 8x the input: linear ~8, n log n ~9-10, quadratic 64.
FACTOR = 8
#: Far below quadratic, with room for cache effects and noise on a busy box.
MAX_RATIO = 24.0
_MIN_SAMPLE_S = 0.004


def _per_call(fn: Callable[[Any], object], arg: Any, repeats: int) -> float:
    """Best-of-`repeats` CPU seconds for one call of `fn(arg)`."""
    t0 = time.process_time()
    fn(arg)  # warm: caches, lazily built tables
    first = time.process_time() - t0
    number = max(1, int(_MIN_SAMPLE_S / first) + 1) if first > 0 else 64
    best = first
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(number):
            fn(arg)
        best = min(best, (time.process_time() - t0) / number)
    return max(best, 1e-9)


def growth_ratio(
    fn: Callable[[Any], object],
    make: Callable[[int], Any],
    small: int = 16 * 1024,
    *,
    repeats: int = 3,
) -> float:
    """CPU time of `fn(make(FACTOR * small))` over that of `fn(make(small))`."""
    a, b = make(small), make(FACTOR * small)
    ratio = _per_call(fn, b, repeats) / _per_call(fn, a, repeats)
    if ratio <= MAX_RATIO:
        return ratio
    if ratio > 4 * MAX_RATIO:
        return ratio  # clearly super-linear: no second look needed
    return min(ratio, _per_call(fn, b, repeats + 2) / _per_call(fn, a, repeats + 2))


def assert_linear(fn: Callable[[Any], object], make: Callable[[int], Any], small: int = 16 * 1024, **kw: Any) -> None:
    ratio = growth_ratio(fn, make, small, **kw)
    assert ratio < MAX_RATIO, (
        f"time grew {ratio:.1f}x for {FACTOR}x the input (linear ~{FACTOR}, quadratic ~{FACTOR**2})"
    )


def repeat_to(unit: str, n: int) -> str:
    """`unit` repeated and cut to exactly `n` characters."""
    return (unit * (n // len(unit) + 1))[:n]
