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
