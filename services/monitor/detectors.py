"""The alert detectors: what holds *now*, read from PostgreSQL (and the consumer's
lag and whether it is stuck), with the EWMA / z-score maths they share. They decide nothing about
notifying: `services.monitor.alerts` turns their findings into an alert lifecycle.

Baselines are exponentially weighted (`--alert-half-life-minutes`) over the series'
earlier minutes, read LOOKBACK_HALF_LIVES half-lives back (older minutes weigh less
than 2%). A spread is never taken below the noise of the data (binomial for a share,
Poisson for a count), so a perfectly steady series does not fire on one extra
block. Work is bounded: only series with traffic in the evaluated minute, the
busiest `max_series` of each detector.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.monitor.decisions import NO_CATEGORY
from services.monitor.store import minute_of, utc

TENANT_BLOCK_RATE = "tenant_block_rate"
CATEGORY_VOLUME = "category_volume"
DEPENDENCY_DEGRADED = "dependency_degraded"
CONSUMER_LAG = "consumer_lag"
CONSUMER_STUCK = "consumer_stuck"
DEAD_LETTERS = "dead_letters"
#: Baselines read this many half-lives back (older minutes weigh < 2%).
LOOKBACK_HALF_LIVES = 6
#: Smallest standard deviation of a BLOCK share (one percentage point).
SHARE_STD_FLOOR = 0.01


# ---- the maths ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    mean: float
    std: float
    points: int


def ewma_alpha(half_life: float) -> float:
    """Weight of the newest point such that a point's weight halves every `half_life` points."""
    return 1.0 - 0.5 ** (1.0 / half_life)


def ewma(values: Iterable[float], half_life: float) -> Baseline:
    """Exponentially weighted mean and standard deviation (the incremental form of
    Finch, "Incremental calculation of weighted mean and variance", 2009), seeded
    with the first value."""
    alpha = ewma_alpha(half_life)
    mean = var = 0.0
    n = 0
    for x in values:
        if n == 0:
            mean = x
        else:
            diff = x - mean
            incr = alpha * diff
            mean += incr
            var = (1.0 - alpha) * (var + diff * incr)
        n += 1
    return Baseline(mean, math.sqrt(max(var, 0.0)), n)


def zscore(x: float, mean: float, std: float) -> float:
    if std > 0:
        return (x - mean) / std
    return 0.0 if x == mean else math.copysign(math.inf, x - mean)


def share_std(b: Baseline, decisions: int) -> float:
    """A share's spread: the baseline's own, but never below the binomial noise of a
    minute of `decisions` at the baseline's rate, nor below SHARE_STD_FLOOR."""
    p = min(max(b.mean, 0.0), 1.0)
    return max(b.std, math.sqrt(p * (1 - p) / max(decisions, 1)), SHARE_STD_FLOOR)


def count_std(b: Baseline) -> float:
    """A count's spread: the baseline's own, but never below Poisson noise (sqrt of the mean, >= 1)."""
    return max(b.std, math.sqrt(max(b.mean, 1.0)))


# ---- configuration and findings -----------------------------------------------------------------
@dataclass(frozen=True)
class AlertConfig:
    grace_s: float
    half_life_minutes: float
    z_threshold: float
    min_history_minutes: int
    max_series: int
    block_min_decisions: int
    block_min_rise: float
    volume_min_count: int
    volume_min_ratio: float
    dependency_window_minutes: int
    dependency_threshold: float
    dependency_min_count: int
    resolve_s: float
    repeat_s: float

    @property
    def lookback_minutes(self) -> int:
        return max(self.min_history_minutes, math.ceil(self.half_life_minutes * LOOKBACK_HALF_LIVES))


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: what a detector reports."""

    kind: str
    subject: str
    value: float
    baseline: float
    summary: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.subject)


def fingerprint(kind: str, subject: str) -> str:
    return hashlib.sha256(json.dumps([kind, subject]).encode()).hexdigest()[:16]


# ---- the detectors (read-only) -----------------------------------------------------------------
def evaluated_minute(now: float, grace_s: float) -> datetime:
    """Start of the last minute that ended at least `grace_s` before `now`."""
    return minute_of(utc(now - grace_s)) - timedelta(minutes=1)


def _hhmm(minute: datetime) -> str:
    return (minute + timedelta(minutes=1)).strftime("%H:%M UTC")


async def tenant_block_rate(conn: asyncpg.Connection, region: str, minute: datetime, cfg: AlertConfig) -> list[Finding]:
    current = await conn.fetch(
        "SELECT tenant, decisions, blocked FROM monitor_tenant_minutes WHERE region = $1 AND minute = $2 "
        "AND decisions >= $3 ORDER BY decisions DESC, tenant LIMIT $4",
        region,
        minute,
        cfg.block_min_decisions,
        cfg.max_series,
    )
    if not current:
        return []
    history: dict[str, list[float]] = {r["tenant"]: [] for r in current}
    for r in await conn.fetch(
        "SELECT tenant, decisions, blocked FROM monitor_tenant_minutes WHERE region = $1 AND tenant = ANY($2) "
        "AND minute >= $3 AND minute < $4 AND decisions > 0 ORDER BY tenant, minute",
        region,
        list(history),
        minute - timedelta(minutes=cfg.lookback_minutes),
        minute,
    ):
        history[r["tenant"]].append(r["blocked"] / r["decisions"])
    found = []
    for r in current:
        b = ewma(history[r["tenant"]], cfg.half_life_minutes)
        share = r["blocked"] / r["decisions"]
        z = zscore(share, b.mean, share_std(b, r["decisions"]))
        if b.points >= cfg.min_history_minutes and share - b.mean >= cfg.block_min_rise and z >= cfg.z_threshold:
            found.append(
                Finding(
                    TENANT_BLOCK_RATE,
                    r["tenant"],
                    share,
                    b.mean,
                    f"tenant {r['tenant']}: {share:.0%} of {r['decisions']} decisions blocked in the minute to "
                    f"{_hhmm(minute)}, baseline {b.mean:.1%} (z {z:.1f})",
                )
            )
    return found


async def category_volume(conn: asyncpg.Connection, region: str, minute: datetime, cfg: AlertConfig) -> list[Finding]:
    current = await conn.fetch(
        "SELECT category, sum(count)::bigint AS n FROM monitor_buckets WHERE region = $1 AND minute = $2 "
        "AND category <> $5 GROUP BY category HAVING sum(count) >= $3 ORDER BY n DESC, category LIMIT $4",
        region,
        minute,
        cfg.volume_min_count,
        cfg.max_series,
        NO_CATEGORY,  # decisions without a category are traffic, not a safety signal
    )
    if not current:
        return []
    start = minute - timedelta(minutes=cfg.lookback_minutes)
    per_minute: dict[str, dict[datetime, int]] = {r["category"]: {} for r in current}
    for r in await conn.fetch(
        "SELECT category, minute, sum(count)::bigint AS n FROM monitor_buckets WHERE region = $1 "
        "AND category = ANY($2) AND minute >= $3 AND minute < $4 GROUP BY category, minute",
        region,
        list(per_minute),
        start,
        minute,
    ):
        per_minute[r["category"]][r["minute"]] = r["n"]
    found = []
    for r in current:
        seen = per_minute[r["category"]]
        series: list[float] = []
        if seen:  # every minute from the first one seen, zeros included
            m = min(seen)
            while m < minute:
                series.append(float(seen.get(m, 0)))
                m += timedelta(minutes=1)
        b = ewma(series, cfg.half_life_minutes)
        n = r["n"]
        z = zscore(n, b.mean, count_std(b))
        if b.points >= cfg.min_history_minutes and n >= cfg.volume_min_ratio * b.mean and z >= cfg.z_threshold:
            found.append(
                Finding(
                    CATEGORY_VOLUME,
                    r["category"],
                    float(n),
                    b.mean,
                    f"category {r['category']}: {n} decisions in the minute to {_hhmm(minute)}, "
                    f"baseline {b.mean:.1f}/min (z {z:.1f})",
                )
            )
    return found


async def dependency_degraded(
    conn: asyncpg.Connection, region: str, minute: datetime, cfg: AlertConfig
) -> list[Finding]:
    first = minute - timedelta(minutes=cfg.dependency_window_minutes - 1)
    rows = await conn.fetch(
        "SELECT dependency, sum(degraded)::bigint AS n FROM monitor_dependency_minutes WHERE region = $1 "
        "AND minute >= $2 AND minute <= $3 GROUP BY dependency HAVING sum(degraded) >= $4 "
        "ORDER BY n DESC, dependency LIMIT $5",
        region,
        first,
        minute,
        cfg.dependency_min_count,
        cfg.max_series,
    )
    if not rows:
        return []
    total = await conn.fetchval(
        "SELECT coalesce(sum(decisions), 0)::bigint FROM monitor_tenant_minutes WHERE region = $1 "
        "AND minute >= $2 AND minute <= $3",
        region,
        first,
        minute,
    )
    found = []
    for r in rows:
        share = r["n"] / max(total, r["n"], 1)
        if share >= cfg.dependency_threshold:
            found.append(
                Finding(
                    DEPENDENCY_DEGRADED,
                    r["dependency"],
                    share,
                    cfg.dependency_threshold,
                    f"dependency {r['dependency']}: {r['n']} of {total} decisions ({share:.0%}) taken without it "
                    f"(fail mode applied) in the {cfg.dependency_window_minutes} min to {_hhmm(minute)}",
                )
            )
    return found


class LagWatch:
    """Consumer lag above `records` for `seconds` (in memory: one process's own lag)."""

    def __init__(self, source: Callable[[], int], subject: str, records: int, seconds: float) -> None:
        self.source = source
        self.subject = subject
        self.records = records
        self.seconds = seconds
        self._above_since: float | None = None

    def check(self, now: float) -> list[Finding]:
        lag = self.source()
        if lag <= self.records:
            self._above_since = None
            return []
        if self._above_since is None:
            self._above_since = now
        held = now - self._above_since
        if held < self.seconds:
            return []
        return [
            Finding(
                CONSUMER_LAG,
                self.subject,
                float(lag),
                float(self.records),
                f"signal consumer {self.subject}: {lag} records behind for {held:.0f} s "
                f"(threshold {self.records} records for {self.seconds:g} s)",
            )
        ]


class StuckWatch:
    """The signal consumer unable to apply its batch for `seconds` (PostgreSQL down,
    a table locked or gone, a privilege revoked): nothing it consumes is stored.
    Lag alone does not show it when signals are few."""

    def __init__(self, source: Callable[[], float], subject: str, seconds: float) -> None:
        self.source = source
        self.subject = subject
        self.seconds = seconds

    def check(self, now: float) -> list[Finding]:
        stuck = self.source()
        if stuck < self.seconds:
            return []
        return [
            Finding(
                CONSUMER_STUCK,
                self.subject,
                float(stuck),
                float(self.seconds),
                f"signal consumer {self.subject}: no batch applied for {stuck:.0f} s "
                f"(PostgreSQL refuses or stalls the writes; threshold {self.seconds:g} s)",
            )
        ]


async def dead_letters(conn: asyncpg.Connection, region: str) -> list[Finding]:
    """Signal records PostgreSQL refused, parked and not replayed yet: each is a decision
    missing from the aggregates and the review queue until it is."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(parked_at) AS first FROM monitor_dead_letters "
        "WHERE region = $1 AND replayed_at IS NULL",
        region,
    )
    if not row["n"]:
        return []
    return [
        Finding(
            DEAD_LETTERS,
            region,
            float(row["n"]),
            0.0,
            f"{row['n']} signal record(s) refused by PostgreSQL and parked since {row['first']:%Y-%m-%d %H:%M} UTC: "
            "fix the cause, then `python -m services.monitor.deadletters replay`",
        )
    ]
