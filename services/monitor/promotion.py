"""The promotion report (issue 13): a shadow next to live over recent decisions, per
tenant, before an operator promotes it.

Two kinds of shadow reach the monitor in the signals, and the store counts both per
minute in `monitor_shadow_minutes` (tenant, live action, shadow action, incomplete):

* a candidate policy (`--shadow-policy` on the enforcers, services/enforcer/shadow.py):
  every prompt decision of its tenants carries its would-be decision;
* a shadow model (a policy's `classifier.shadow_models`, services/enforcer/retro.py): a
  sample of prompt decisions is classified again in the background and a
  SURFACE_SHADOW_MODEL follow-up carries the action the live policy would take on
  the shadow's scores.

For each tenant the report gives the shadowed decisions, the agreement rate (same
action), stricter and looser counts, would-be blocks (the shadow BLOCKs, live did not)
and would-be allows (the shadow ALLOWs, live did not), the live × shadow action matrix,
and the incomplete shadows (a candidate policy that needed inputs the live request did
not fetch, a shadow model without a full verdict): those are counted in every figure
and said apart, so a high count says the comparison is weaker than it looks.

    python -m services.monitor.promotion report --shadow-policy 2026-12-01.1 [--since 24h]
    python -m services.monitor.promotion report --shadow-model prompt_guard_ngram[:3] --json

The other flags are the monitor's (--database-url, --region, or MONITOR_* env vars).
Read only; nothing here changes what the enforcers do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from services.common.errors import InvalidArgument
from services.monitor.commands import command_settings, parse_since, run_against_database
from services.monitor.decisions import ACTIONS, MAX_ID_CHARS, SHADOW_MODEL_KIND, SHADOW_POLICY_KIND

ALLOW, BLOCK = 1, 5  # safeguards.v1.Action


@dataclass
class Comparison:
    """A shadow against live over some decisions (one tenant's, or all of them)."""

    tenant: str
    decisions: int = 0
    agree: int = 0
    stricter: int = 0
    looser: int = 0
    would_block: int = 0
    would_allow: int = 0
    incomplete: int = 0
    #: (live action name, shadow action name) -> decisions
    matrix: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, live: int, shadow: int, incomplete: bool, n: int) -> None:
        self.decisions += n
        self.agree += n * (live == shadow)
        self.stricter += n * (shadow > live)
        self.looser += n * (shadow < live)
        self.would_block += n * (shadow == BLOCK and live != BLOCK)
        self.would_allow += n * (shadow == ALLOW and live != ALLOW)
        self.incomplete += n * incomplete
        key = (ACTIONS.get(live, str(live)), ACTIONS.get(shadow, str(shadow)))
        self.matrix[key] = self.matrix.get(key, 0) + n

    @property
    def agreement(self) -> float | None:
        return self.agree / self.decisions if self.decisions else None

    def as_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "decisions": self.decisions,
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "agree": self.agree,
            "stricter": self.stricter,
            "looser": self.looser,
            "would_block": self.would_block,
            "would_allow": self.would_allow,
            "incomplete": self.incomplete,
            "matrix": [{"live": lv, "shadow": sh, "decisions": n} for (lv, sh), n in sorted(self.matrix.items())],
        }


@dataclass
class Report:
    kind: str  # SHADOW_POLICY_KIND | SHADOW_MODEL_KIND
    candidate: str
    version: str  # the model version asked for ("" = every version seen)
    since: datetime
    until: datetime
    tenants: list[Comparison]
    total: Comparison
    #: Model versions seen in the window (a model's report; "" for a policy).
    versions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "candidate": self.candidate,
            "version": self.version,
            "versions_seen": self.versions,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "total": self.total.as_dict(),
            "tenants": [t.as_dict() for t in self.tenants],
        }


def parse_target(shadow_policy: str | None, shadow_model: str | None) -> tuple[str, str, str]:
    """(kind, candidate, version) from the command's flags."""
    if bool(shadow_policy) == bool(shadow_model):
        raise InvalidArgument("name one shadow: --shadow-policy VERSION or --shadow-model NAME[:VERSION]")
    if shadow_policy:
        candidate, kind, version = shadow_policy, SHADOW_POLICY_KIND, ""
    else:
        candidate, _, version = (shadow_model or "").partition(":")
        kind = SHADOW_MODEL_KIND
    if not candidate or len(candidate) > MAX_ID_CHARS or len(version) > MAX_ID_CHARS:
        raise InvalidArgument("the shadow's name must be 1..256 characters")
    return kind, candidate, version


async def report(
    pool: asyncpg.Pool,
    region: str,
    *,
    kind: str,
    candidate: str,
    version: str = "",
    since: datetime,
    until: datetime | None = None,
    tenant: str = "",
) -> Report:
    """The shadow's comparison with live over the minutes in [since, until)."""
    until = until or datetime.now(UTC) + timedelta(minutes=1)
    rows = await pool.fetch(
        "SELECT tenant, version, live_action, shadow_action, incomplete, sum(count)::bigint AS n "
        "FROM monitor_shadow_minutes WHERE region = $1 AND kind = $2 AND candidate = $3 "
        "AND ($4 = '' OR version = $4) AND minute >= date_trunc('minute', $5::timestamptz) AND minute < $6 "
        "AND ($7 = '' OR tenant = $7) "
        "GROUP BY tenant, version, live_action, shadow_action, incomplete",
        region,
        kind,
        candidate,
        version,
        since,
        until,
        tenant,
    )
    return summarise(kind, candidate, version, since, until, rows)


def summarise(kind: str, candidate: str, version: str, since: datetime, until: datetime, rows: Iterable) -> Report:
    per_tenant: dict[str, Comparison] = {}
    total = Comparison("*")
    versions: set[str] = set()
    for r in rows:
        c = per_tenant.get(r["tenant"])
        if c is None:
            c = per_tenant[r["tenant"]] = Comparison(r["tenant"])
        for target in (c, total):
            target.add(r["live_action"], r["shadow_action"], r["incomplete"], r["n"])
        if r["version"]:
            versions.add(r["version"])
    return Report(
        kind, candidate, version, since, until, [per_tenant[t] for t in sorted(per_tenant)], total, sorted(versions)
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_text(r: Report) -> str:
    what = "policy" if r.kind == SHADOW_POLICY_KIND else "model"
    name = f"{r.candidate}:{r.version}" if r.version else r.candidate
    lines = [f"shadow {what} {name} against live, {r.since:%Y-%m-%d %H:%M} .. {r.until:%Y-%m-%d %H:%M} UTC"]
    if r.versions and r.kind == SHADOW_MODEL_KIND:
        lines.append(f"model versions seen: {', '.join(r.versions)}")
    if not r.total.decisions:
        lines.append("no shadowed decisions in this window")
        return "\n".join(lines) + "\n"
    header = ("tenant", "decisions", "agreement", "stricter", "looser", "would-block", "would-allow", "incomplete")
    table = [header]
    for c in [*r.tenants, r.total]:
        table.append(
            (
                "all tenants" if c is r.total else c.tenant,
                str(c.decisions),
                _pct(c.agreement),
                str(c.stricter),
                str(c.looser),
                str(c.would_block),
                str(c.would_allow),
                str(c.incomplete),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    changed = sorted(((n, lv, sh) for (lv, sh), n in r.total.matrix.items() if lv != sh), reverse=True)
    if changed:
        lines.append("changed actions (live -> shadow): " + ", ".join(f"{lv}->{sh} {n}" for n, lv, sh in changed))
    return "\n".join(lines) + "\n"


# ---- the command ---------------------------------------------------------------------------------
async def _run(args: argparse.Namespace, settings) -> int:
    kind, candidate, version = parse_target(args.shadow_policy, args.shadow_model)
    since = parse_since(args.since)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
    try:
        r = await report(
            pool, settings.region, kind=kind, candidate=candidate, version=version, since=since, tenant=args.tenant
        )
    finally:
        await pool.close()
    sys.stdout.write(json.dumps(r.as_dict(), indent=2) + "\n" if args.json else render_text(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.monitor.promotion",
        description="Compare a shadow (candidate policy or shadow model) with live over recent decisions, per "
        "tenant: agreement, would-be blocks and allows, incomplete shadows. Other flags are the monitor's "
        "(--database-url, --region, or MONITOR_* env vars)",
    )
    parser.add_argument("command", choices=("report",))
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--shadow-policy", metavar="VERSION", help="a candidate policy's version")
    target.add_argument("--shadow-model", metavar="NAME[:VERSION]", help="a shadow model (and one of its versions)")
    parser.add_argument("--since", default="24h", help="how far back: 24h, 30m, 7d or an ISO 8601 time (default 24h)")
    parser.add_argument("--tenant", default="", help="one tenant only")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    args, rest = parser.parse_known_args(argv)
    return run_against_database(parser, _run(args, command_settings(rest)))


if __name__ == "__main__":
    sys.exit(main())
