"""The fault suite with longer phases (issue 14): the scenarios of tests/e2e/test_faults.py
(harness: tests/e2e/faultmesh.py), each fault held for --fault-seconds under --rps of
load, and the table in bench/RESULTS.md ("## Fault suite"): fault, how long it lasted,
decisions, degraded (taken without a dependency or on less than a full verdict),
calls retried on the other enforcer replica, signals dropped and counted (the spool
full), lost (decisions with no signal and no counted drop, plus requests with no
decision: must be 0), signal redeliveries (the same record twice, dropped by id),
time until the decisions were clean again and no spool held a signal, and the
invariants that broke.

    .venv/bin/python -m bench.faults [--fault-seconds 10] [--rps 24] [--only kafka-kill ...]

Needs the built models (make models) and the machine's PostgreSQL (MONITOR_TEST_PG,
default postgresql://postgres@127.0.0.1:5432/postgres); makes a throwaway database.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as tests/conftest.py (fork + busy channels)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import system  # noqa: E402
from bench.results import RESULTS, write_results  # noqa: E402
from tests.e2e.faultmesh import FAULTS, PER_TRY_S, FaultMesh, run_scenario, table  # noqa: E402

SECTION = "## Fault suite"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fault-seconds", type=float, default=10.0, help="how long each fault is held")
    ap.add_argument("--warm-seconds", type=float, default=3.0, help="load before each fault")
    ap.add_argument("--rps", type=float, default=24.0, help="ScreenPrompt calls per second, over both replicas")
    ap.add_argument("--only", nargs="*", default=[], help="fault names (e.g. kafka-kill); default all")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    reports = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp, FaultMesh(Path(tmp)) as mesh:
        for fault in faults:
            report = run_scenario(
                mesh, fault, warm_s=args.warm_seconds, fault_s=args.fault_seconds, rps=args.rps, settle_cap_s=60
            )
            print(f"{fault.name}: {report}", flush=True)
            reports.append(report)
    block = "\n".join(
        [
            f"{system.machine()['date']}, {system.cpu_model()}, {os.cpu_count()} CPUs (shared), load average "
            f"at the end {system.loadavg()}; {len(reports)} scenarios in {time.monotonic() - started:.0f} s; "
            f"load {args.rps:g} ScreenPrompt/s over two enforcer replicas (4 callers, round robin, one retry on "
            f"the other replica after UNAVAILABLE or a {PER_TRY_S:g} s per-try timeout), "
            f"{args.warm_seconds:g} s before each fault, each fault held {args.fault_seconds:g} s "
            "(the spool's: at least 8 s, past the producer's 5 s request timeout).",
            "",
            table(reports),
            "",
            "Reproduce: `.venv/bin/python -m bench.faults` (the same scenarios, shorter: "
            "`pytest tests/e2e/test_faults.py`).",
        ]
    )
    print(block)
    if not args.no_write:
        write_results(RESULTS, SECTION, "faults", block)
    return 0 if all(r.lost == 0 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
