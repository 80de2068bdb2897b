"""The operators' overview: per minute and tenant, what the decisions rested on.

Why its own rows (`monitor_overview_minutes`): the category buckets count a decision
once per category and the alert baselines want only decisions and blocks; the
overview also needs the verdict completeness (full / partial / none), the retro
catches and the latency, summed over tenants and minutes at read time.

Latency is kept as counts in fixed buckets (`LATENCY_BOUNDS_MS`) rather than as
percentiles: bucket counts add up across tenants, replicas and minutes (a
percentile of percentiles means nothing), so p50/p99 of any set of rows is read off
their summed buckets, to within a bucket's width (linear inside the bucket).

A retro follow-up (SURFACE_RETRO_SCREEN) is not a decision: it adds to
`retro_screens` (and `retro_catches` when the full verdict called for a stricter
action) in the minute it arrived, and to nothing else.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.monitor.decisions import BLOCK, FULL, NO_VERDICT, PARTIAL, Decision

#: Upper bounds (ms) of the latency buckets; one more bucket holds everything above.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000,
)  # fmt: skip
BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def latency_bucket(seconds: float) -> int:
    """Index of the bucket `seconds` falls in (upper bounds inclusive)."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)


def percentile_ms(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a latency histogram, interpolated linearly in
    its bucket; None without observations. Above the last bound it answers the last
    bound (the histogram cannot say more)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            high = LATENCY_BOUNDS_MS[i]
            return low + (high - low) * max(rank - seen, 0.0) / n
        seen += n
    return float(LATENCY_BOUNDS_MS[-1])


def add_buckets(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise sum (a shorter array, e.g. from an older schema, counts as zeros)."""
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


@dataclass
class MinuteTotals:
    """One minute (of one tenant, or summed over several)."""

    decisions: int = 0
    blocked: int = 0
    full: int = 0
    partial: int = 0
    no_verdict: int = 0
    retro_screens: int = 0
    retro_catches: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add_decision(self, d: Decision) -> None:
        if d.is_retro:
            self.retro_screens += 1
            self.retro_catches += d.retro_catch
            return
        self.decisions += 1
        self.blocked += d.action == BLOCK
        self.full += d.verdict == FULL
        self.partial += d.verdict == PARTIAL
        self.no_verdict += d.verdict == NO_VERDICT
        if d.latency_s is not None:
            self.latency[latency_bucket(d.latency_s)] += 1

    def merge(self, o: MinuteTotals) -> None:
        self.decisions += o.decisions
        self.blocked += o.blocked
        self.full += o.full
        self.partial += o.partial
        self.no_verdict += o.no_verdict
        self.retro_screens += o.retro_screens
        self.retro_catches += o.retro_catches
        self.latency = add_buckets(self.latency, o.latency)

    def share(self, part: int) -> float | None:
        """`part` as a share of the minute's decisions (None: no decisions)."""
        return part / self.decisions if self.decisions else None

    @property
    def p50_ms(self) -> float | None:
        return percentile_ms(self.latency, 0.50)

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.latency, 0.99)


def tally(decisions: Iterable[Decision], minute_of) -> dict[tuple[datetime, str], MinuteTotals]:
    """Per (minute, tenant) totals of a batch; `minute_of(decision)` picks the minute."""
    out: dict[tuple[datetime, str], MinuteTotals] = {}
    for d in decisions:
        key = (minute_of(d), d.tenant)
        row = out.get(key)
        if row is None:
            row = out[key] = MinuteTotals()
        row.add_decision(d)
    return out


def account_tally(decisions: Iterable[Decision], minute_of) -> dict[tuple[datetime, str, str], tuple[int, int]]:
    """Per (minute, tenant, account): (blocks, retro catches), for accounts with either.
    Only the accounts that did something an operator looks at get a row, so the
    table grows with abuse, not with traffic."""
    out: dict[tuple[datetime, str, str], tuple[int, int]] = {}
    for d in decisions:
        if not d.account_hmac:
            continue
        blocked = int(d.action == BLOCK and not d.is_retro)
        caught = int(d.retro_catch)
        if not (blocked or caught):
            continue
        key = (minute_of(d), d.tenant, d.account_hmac)
        b, c = out.get(key, (0, 0))
        out[key] = (b + blocked, c + caught)
    return out
