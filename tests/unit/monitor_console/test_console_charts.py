"""The chart data the console's script draws: every minute of the last hour on the
axis, block rate = blocked / total per minute (None where nothing was decided), and
only the keys with the most blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.monitor.console.app import CHART_KEYS, chart_series
from services.monitor.operations import SeriesPoint

NOW = datetime(2026, 5, 1, 12, 30, 41, tzinfo=UTC)
LAST = NOW.replace(second=0)


def test_every_minute_of_the_hour_is_on_the_axis_and_rates_are_per_minute() -> None:
    points = [
        SeriesPoint(LAST, "jailbreak", 3, 4),
        SeriesPoint(LAST - timedelta(minutes=2), "jailbreak", 0, 5),
        SeriesPoint(LAST - timedelta(minutes=2), "none", 0, 7),
        SeriesPoint(LAST - timedelta(minutes=90), "jailbreak", 9, 9),  # outside the hour: left out
    ]
    data = chart_series(points, NOW)
    assert len(data["minutes"]) == 60
    assert data["minutes"][0] == (LAST - timedelta(minutes=59)).isoformat() and data["minutes"][-1] == LAST.isoformat()
    jailbreak, none = data["series"]
    assert (jailbreak["key"], jailbreak["blocked"], jailbreak["total"]) == ("jailbreak", 3, 9)
    assert jailbreak["rates"][-1] == 0.75 and jailbreak["rates"][-3] == 0.0 and jailbreak["rates"][-2] is None
    assert none["key"] == "none" and none["blocked"] == 0


def test_only_the_keys_with_the_most_blocks_are_drawn() -> None:
    points = [SeriesPoint(LAST, f"tenant-{i:02d}", i, 100) for i in range(CHART_KEYS + 5)]
    keys = [s["key"] for s in chart_series(points, NOW)["series"]]
    assert keys == [f"tenant-{i:02d}" for i in range(CHART_KEYS + 4, 4, -1)]


def test_no_decisions_gives_an_empty_chart() -> None:
    data = chart_series([], NOW)
    assert data["series"] == [] and len(data["minutes"]) == 60


def test_blocks_per_category_are_counts_per_minute_and_categories_that_never_blocked_are_left_out() -> None:
    points = [
        SeriesPoint(LAST, "jailbreak", 3, 3),  # a category is only recorded when its reason fired:
        SeriesPoint(LAST - timedelta(minutes=1), "jailbreak", 2, 2),  # its "rate" always reads 100%
        SeriesPoint(LAST - timedelta(minutes=1), "harmful", 0, 4),  # flagged, never blocked
        SeriesPoint(LAST - timedelta(minutes=1), "none", 0, 50),
    ]
    data = chart_series(points, NOW, measure="blocks")
    assert data["unit"] == "count"
    (jailbreak,) = data["series"]
    assert jailbreak["key"] == "jailbreak" and jailbreak["values"][-2:] == [2, 3]
    assert jailbreak["values"][:-2] == [0] * 58 and jailbreak["legend"] == "jailbreak: 5 blocked"
    rates = chart_series(points, NOW)  # the tenant chart keeps its rates
    assert rates["unit"] == "share" and {s["key"] for s in rates["series"]} == {"jailbreak", "harmful", "none"}


def test_the_time_axis_is_labelled_hh_mm_at_round_ten_minutes() -> None:
    data = chart_series([], NOW)
    # The window is 11:31 .. 12:30 (UTC): ticks at 11:40, 11:50, 12:00, 12:10, 12:20, 12:30.
    assert data["ticks"] == [[9, "11:40"], [19, "11:50"], [29, "12:00"], [39, "12:10"], [49, "12:20"], [59, "12:30"]]
    for i, label in data["ticks"]:
        assert data["minutes"][i][11:16] == label


def test_overview_series_volume_verdict_shares_and_latency() -> None:
    from services.monitor.console.app import overview_series
    from services.monitor.overview import BUCKETS, MinuteTotals, latency_bucket

    axis = [LAST - timedelta(minutes=59 - i) for i in range(60)]
    rows = [(m, MinuteTotals()) for m in axis]
    busy = rows[-1][1]
    busy.decisions, busy.blocked, busy.full, busy.partial, busy.no_verdict = 10, 2, 7, 2, 1
    busy.retro_screens, busy.retro_catches = 3, 1
    busy.latency = [0] * BUCKETS
    busy.latency[latency_bucket(0.008)] = 9
    busy.latency[latency_bucket(0.4)] = 1
    data = overview_series(rows)
    volume = {s["key"]: s["values"] for s in data["volume"]["series"]}
    assert volume["decisions"][-1] == 10 and volume["blocks"][-1] == 2 and volume["retro catches"][-1] == 1
    assert volume["decisions"][0] == 0
    shares = {s["key"]: s["values"] for s in data["verdicts"]["series"]}
    assert (shares["full"][-1], shares["partial"][-1], shares["none"][-1]) == (0.7, 0.2, 0.1)
    assert shares["full"][0] is None  # no decisions: no share, not 0%
    latency = {s["key"]: s["values"] for s in data["latency"]["series"]}
    assert 5 < latency["p50"][-1] <= 10 and 300 < latency["p99"][-1] <= 500 and latency["p50"][0] is None
    assert data["verdicts"]["unit"] == "share" and data["latency"]["unit"] == "ms"
    assert [s["legend"] for s in data["verdicts"]["series"]][0] == "full verdict: 70.0%"
    assert data["volume"]["ticks"][-1] == [59, "12:30"]
