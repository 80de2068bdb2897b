"""bench.harness: the helpers every harness shares."""

from __future__ import annotations

import pytest

from bench import harness


def test_parse_levels_reads_clients_by_streams_and_skips_empty_parts():
    assert harness.parse_levels("1x1, 2x4,,8 ,") == [(1, 1), (2, 4), (8, 1)]
    with pytest.raises(ValueError):
        harness.parse_levels("4xmany")


def test_not_ok_excuses_at_most_one_cancelled_call_per_open_stream():
    assert harness.not_ok({"OK": 100, "CANCELLED": 3}, open_streams=4) == 0
    assert harness.not_ok({"OK": 100, "CANCELLED": 9, "UNAVAILABLE": 2}, open_streams=4) == 7
    assert harness.codes_of({"code:OK": 5.0, "code:INTERNAL": 0.0, "decisions": 5.0}, "code:") == {"OK": 5}


def test_percentile_is_a_rank_of_the_sorted_values():
    values = [float(v) for v in range(1, 101)]
    assert harness.percentile(values, 50) == 50.0
    assert harness.percentile(values, 100) == 100.0
    assert harness.percentile(values, 0) == 1.0
    assert harness.percentile([7.0], 99) == 7.0
    assert harness.percentile([], 50) != harness.percentile([], 50)  # nan


def test_command_line_repeats_the_arguments():
    assert harness.command_line("bench.x", []) == ".venv/bin/python -m bench.x"
    assert (
        harness.command_line("bench.x", ["--quick", "--rates", "1,2"])
        == ".venv/bin/python -m bench.x --quick --rates 1,2"
    )


def test_work_folder_is_removed_after_a_good_run_and_kept_after_a_failure():
    said: list[str] = []
    with harness.work_folder("bench-test-", log=said.append) as good:
        (good / "log").write_text("x")
    assert not good.exists() and said == []
    with pytest.raises(RuntimeError), harness.work_folder("bench-test-", log=said.append) as bad:
        raise RuntimeError("step failed")
    assert bad.exists() and said == [f"logs kept in {bad}"]
    (bad).rmdir()
