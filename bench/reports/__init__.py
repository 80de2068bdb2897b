"""The harnesses' reports: one module per RESULTS.md block, each a pure `render(run)` of
what its harness measured (plus the result types it renders), so a report can be
re-rendered, and tested, from saved data without measuring anything."""

from __future__ import annotations


def num(v: float | None, digits: int = 2, *, missing: str = "n/a", grouping: bool = True) -> str:
    """A number for a table cell: `digits` decimals (thousands grouped unless not
    `grouping`), `missing` for None or nan."""
    if v is None or v != v:
        return missing
    return f"{v:,.{digits}f}" if grouping else f"{v:.{digits}f}"
