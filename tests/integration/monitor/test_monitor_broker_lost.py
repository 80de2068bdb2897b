"""A broker that comes back without its log (issue 14's kafka-kill, made
deterministic): the monitor as a real process, a real Tansu broker (in memory, so a
restart recreates its topics empty), real PostgreSQL.

The monitor had read a partition to offset N when the broker died; while the monitor
was not fetching (paused here with SIGSTOP, in the fault suite merely busy or
reconnecting), the enforcers' spools refilled the new log past N. A consumer that
simply continues at N never sees the new log's first N records. The monitor looks at
the record before a batch that follows a silence and, finding a stranger there, reads
the partition again from its beginning: every decision of the new log is stored once.
(The consumer group's rejoin on the new broker may also reset the position to the
new log's beginning, or may come after the batch was applied and committed: a race
the monitor does not rely on; the rewind counter shows its own check caught it.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from tests.integration.monitor.monitor_support import make_signal, pg_database
from tests.integration.monitor.test_monitor_poison import metric, processed, produce, wait_for
from tests.support import EmbeddedKafka, ServiceProcess, free_port
from tools.run_mesh import create_topics

REGION = "poison-1"  # the topic name test_monitor_poison.produce writes to


@pytest.fixture
def env(tmp_path):
    kafka = EmbeddedKafka().start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        with pg_database("monlost") as db_url:
            metrics_port = free_port()
            mon = ServiceProcess(
                "services.monitor",
                [
                    "--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                    "--region", REGION, "--kafka-bootstrap", kafka.bootstrap, "--database-url", db_url,
                    "--group-id", f"mon-lost-{uuid.uuid4().hex[:6]}", "--batch-wait-ms", "50",
                    "--spool-dir", str(tmp_path / "spool"), "--drain-grace-seconds", "2",
                ],
            ).start(timeout=60)  # fmt: skip
            try:
                yield {"kafka": kafka, "db": db_url, "mon": mon, "metrics": metrics_port}
            finally:
                os.kill(mon.proc.pid, signal.SIGCONT)
                mon.stop()
    finally:
        kafka.close()


def signals(n: int):
    # One tenant: one key, one partition, so the new log's offsets pass the old ones.
    return [make_signal(region=REGION, tenant="acme", action="BLOCK") for _ in range(n)]


def test_a_log_recreated_and_refilled_past_the_read_offset_is_read_again_from_its_beginning(env) -> None:
    before = signals(20)
    asyncio.run(produce(env["kafka"].bootstrap, before))
    wait_for(lambda: processed(env, [s.decision_id for s in before]) == 20, what="the first log's decisions")

    os.kill(env["mon"].proc.pid, signal.SIGSTOP)  # the monitor fetches nothing meanwhile
    env["kafka"].stop()  # in memory: the log is gone
    env["kafka"].start()
    asyncio.run(create_topics(env["kafka"].bootstrap, REGION))
    after = signals(35)  # offsets 0..34 on the new log, past the 20 read on the old one
    asyncio.run(produce(env["kafka"].bootstrap, after))
    os.kill(env["mon"].proc.pid, signal.SIGCONT)

    wait_for(lambda: processed(env, [s.decision_id for s in after]) == 35, timeout=60, what="every new decision")
    assert processed(env, [s.decision_id for s in before]) == 20
    assert metric(env, "safeguards_monitor_partition_rewinds_total") >= 1
