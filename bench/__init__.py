"""Benchmarks: load generators in separate processes, results in bench/RESULTS.md.

Run one with `python -m bench.ratelimit` (see its --help). They are measurements,
not tests: nothing here runs in CI.
"""
