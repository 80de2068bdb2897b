"""Benchmarks: load generators in separate processes, results in bench/RESULTS.md.

One module per harness holds its measurement only (`python -m bench.ratelimit`, see its
--help); bench.harness what they share (log, service processes, metrics before and after
a step, a step's CPU, the Python driver's loop); bench.reports one pure renderer per
RESULTS.md block; bench.results the block's place in the file; bench.system the box
(CPU per process, machine facts); bench.h2load the h2load driver. They are measurements,
not tests: nothing here runs in CI (the reports' golden tests do, tests/unit/test_bench_*).
"""
