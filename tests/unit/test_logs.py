"""Logging never blocks a decision: records leave the caller through a bounded queue,
a full queue drops (counted) instead of waiting, the request id is captured in the
caller's context, `*.decisions` loggers are rate-capped (counted) while warnings never
are, and a clean exit writes what is queued even when stderr is a pipe nobody reads.

Real pipes, real files, real threads and real child processes; the only time bounds
are generous join/wait deadlines that fail only on a hang."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.common import logs
from services.enforcer.settings import EnforcerSettings
from tests.support import ROOT

HANG = 120.0  # seconds: only a real hang takes this long
DROPPED = "safeguards_log_records_dropped_total"


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(DROPPED, {"reason": reason}) or 0.0


def pipeline_logger(stream, name: str = "", **kwargs) -> tuple[logs.LogPipeline, logging.Logger, CollectorRegistry]:
    """A pipeline feeding one private logger (the root logger stays pytest's)."""
    pipeline = logs.LogPipeline(logs.JsonFormatter("test", "unit-1"), stream, **kwargs)
    registry = CollectorRegistry()
    pipeline.register(registry)
    logger = logging.getLogger(name or f"test.{uuid.uuid4().hex[:8]}")
    logger.handlers[:] = [pipeline.handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return pipeline, logger, registry


def run_bounded(fn) -> None:
    """Run `fn` in a thread and fail (instead of hanging the suite) if it never returns."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG)
    assert not t.is_alive(), "logging blocked the caller"
    if errors:
        raise errors[0]


def test_logging_to_a_pipe_nobody_reads_never_blocks_and_counts_drops() -> None:
    r, w = os.pipe()  # nobody reads r: the writer blocks once the pipe's 64 KiB are full
    stream = os.fdopen(w, "w")
    pipeline, logger, registry = pipeline_logger(stream, queue_size=1000)
    try:

        def flood() -> None:
            for i in range(100_000):
                logger.info("decision", extra={"decision_id": f"d{i}", "action": "ALLOW"})

        run_bounded(flood)
        lost = dropped(registry, logs.QUEUE_FULL)
        assert lost > 0
        # What was not dropped is queued (the queue), in the writer's hands (1) or in
        # the pipe (64 KiB of lines over 100 bytes each).
        assert 100_000 - lost <= 1000 + 1 + 64 * 1024 // 100
        assert pipeline.stop(timeout=0.2) is False  # the writer is stuck: stop gives up, does not hang
        logger.info("after stop")
        assert dropped(registry, logs.STOPPED) == 1
    finally:
        os.close(r)  # the stuck write fails (EPIPE), the writer drains and ends
        assert pipeline.stop(timeout=HANG) is True
        stream.close()
    assert dropped(registry, logs.ERROR) > 0


def test_request_id_captured_in_the_callers_context_is_written(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    with out.open("w") as stream:
        pipeline, logger, _ = pipeline_logger(stream)

        async def serve(rid: str) -> None:
            logs.request_id_var.set(rid)
            await asyncio.sleep(0)  # interleave the two "RPCs"
            logger.info("decision %s", "made", extra={"tenant": f"t-{rid}", "latency_ms": 1.5})

        async def main() -> None:
            await asyncio.gather(serve("req-a"), serve("req-b"))

        asyncio.run(main())
        logger.info("outside any rpc")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        assert pipeline.stop(timeout=HANG) is True

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    decisions = {rec["request_id"]: rec for rec in lines if rec["msg"] == "decision made"}
    assert set(decisions) == {"req-a", "req-b"}
    for rid, rec in decisions.items():
        assert rec["tenant"] == f"t-{rid}" and rec["latency_ms"] == 1.5
        assert rec["service"] == "test" and rec["region"] == "unit-1" and rec["level"] == "INFO"
    outside = next(rec for rec in lines if rec["msg"] == "outside any rpc")
    assert "request_id" not in outside
    failed = next(rec for rec in lines if rec["msg"] == "failed")
    assert "ValueError: boom" in failed["exc"]


def test_decision_lines_are_capped_per_second_and_the_rest_counted(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    cap, burst = 50, 2000
    with out.open("w") as stream:
        pipeline, logger, registry = pipeline_logger(stream, name="test.cap.decisions", decisions_per_s=cap)
        started = time.monotonic()
        for i in range(burst):
            logger.info("decision", extra={"i": i})
        elapsed = time.monotonic() - started
        for i in range(300):
            logger.warning("decision warning", extra={"i": i})
        assert pipeline.stop(timeout=HANG) is True

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    written = sum(1 for rec in lines if rec["msg"] == "decision")
    capped = dropped(registry, logs.RATE_CAP)
    assert written + capped == burst  # every record is either written or counted
    # A full bucket (one second of lines) plus what refilled while the burst ran.
    assert cap <= written <= cap + cap * elapsed + 1
    assert sum(1 for rec in lines if rec["msg"] == "decision warning") == 300  # warnings are never capped


def test_only_high_rate_loggers_are_capped_and_zero_means_no_cap(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    with out.open("w") as stream:
        pipeline, other, registry = pipeline_logger(stream, name="test.cap.decisions.audit", decisions_per_s=5)
        uncapped = logging.getLogger("test.nocap.decisions")
        uncapped.handlers[:] = [logs.LogPipeline(logs.JsonFormatter("t", "r"), stream).handler]
        uncapped.propagate = False
        uncapped.setLevel(logging.INFO)
        for _ in range(500):
            other.info("not a decisions logger")
            uncapped.info("cap 0")
        assert uncapped.handlers[0].pipeline.stop(timeout=HANG) is True
        assert pipeline.stop(timeout=HANG) is True
    text = out.read_text()
    assert text.count("not a decisions logger") == 500 and text.count("cap 0") == 500
    assert dropped(registry, logs.RATE_CAP) == 0


def test_the_cap_flag_reads_its_env_var_and_flags_win(monkeypatch) -> None:
    monkeypatch.setenv("ENFORCER_LOG_DECISIONS_PER_S", "7")
    assert EnforcerSettings.parse(["--plaintext"]).log_decisions_per_s == 7
    assert EnforcerSettings.parse(["--plaintext", "--log-decisions-per-s", "0"]).log_decisions_per_s == 0
    monkeypatch.delenv("ENFORCER_LOG_DECISIONS_PER_S")
    assert EnforcerSettings.parse(["--plaintext"]).log_decisions_per_s == 100


CHILD = """
import logging, sys
from prometheus_client import CollectorRegistry
from services.common import logs

pipeline = logs.configure("child", "unit-1", "INFO", queue_size=int(sys.argv[2]))
registry = CollectorRegistry()
pipeline.register(registry)
log = logging.getLogger("safeguards.child")
for i in range(int(sys.argv[1])):
    log.info("line", extra={"i": i})
print(registry.get_sample_value("safeguards_log_records_dropped_total", {"reason": "queue_full"}) or 0, flush=True)
"""


def test_a_process_whose_stderr_is_never_read_logs_on_and_exits_cleanly() -> None:
    """configure() on the root logger in a real process: 100k records with stderr a
    full pipe; the process prints its drop count and exits 0 (no hang in the writer
    thread, no abort flushing a locked stderr at shutdown)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "100000", "1000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # never read
        text=True,
    )
    try:
        out = proc.stdout.readline()  # type: ignore[union-attr]
        assert proc.wait(HANG) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert float(out) > 0


def test_a_clean_exit_writes_every_queued_line(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, "5000", "10000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=stream,
            text=True, timeout=HANG,
        )  # fmt: skip
    assert out.returncode == 0 and float(out.stdout) == 0
    lines = [json.loads(line) for line in err.read_text().splitlines()]
    assert [rec["i"] for rec in lines if rec["msg"] == "line"] == list(range(5000))


def test_a_reply_to_a_caller_that_had_gone_is_one_info_line_without_a_traceback(tmp_path: Path) -> None:
    """grpc's aio server logs ExecuteBatchError with a traceback when the caller went
    away before the reply (routine under load): configure() turns it into one INFO line."""
    out = tmp_path / "log.jsonl"
    with out.open("w") as stream:
        pipeline, logger, _ = pipeline_logger(stream, name=logs.CallerGone.LOGGER)
        logger.addFilter(logs.CallerGone())
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            logger.exception(
                "ExecuteBatchError raised in core by servicer method [%s]", "/safeguards.v1.ClassifierService/Classify"
            )
        logger.error("something else went wrong")
        assert pipeline.stop(timeout=HANG) is True
    gone, other = (json.loads(line) for line in out.read_text().splitlines())
    assert gone["level"] == "INFO" and gone["msg"] == "reply not delivered: the caller had gone"
    assert gone["grpc_method"] == "/safeguards.v1.ClassifierService/Classify" and "exc" not in json.dumps(gone)
    assert other["level"] == "ERROR"
