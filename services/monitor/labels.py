"""Reviewers' verdicts as labelled training data (issue 13's detection-engineering loop).

A reviewer's verdict on a review case in the console (services.monitor.operations
`review`, or an action issued from the case) is a label on the text the case kept:
*approve* says the decision was right, so the text is an example of the classifier
category that fired; *dismiss* says it was wrong, so the text is a benign example that
the classifier flagged (the over-defence examples a model build most lacks).

    python -m services.monitor.labels export --out labels.jsonl [--since 30d] [--tenant acme]

The other flags are the monitor's (--database-url, --region, or MONITOR_* env vars).

What it exports, and what it does not:

* In region: only this region's cases, from this region's database. The file is that
  region's data; keep it there (train in region, or export only what may leave).
* Content only as the tenant's data policy kept it: the case's stored snippet (STANDARD:
  PII-masked and cut to the enforcers' --snippet-chars; `truncated` says when the text
  was longer). METADATA_ONLY and ZERO_RETENTION cases kept no text, so they give no
  row; the counts say how many verdicts were skipped for that, per data policy. A case
  past its retention is gone with its text: labels never outlive the data policy.
* No account: not the raw id (the monitor never has it), not even its pseudonym.
* Only classifier verdicts: a case opened by a tier-0 detector alone (PII, blocklist)
  or by an automated rule says nothing about the classifier and gives no row (counted).

Each line is one JSON object (the model build's `--extra-labels` format, README
"Detection-engineering loop"):

    {"text": "...", "label": "jailbreak" | "harmful" | ... | "benign",
     "category": "jailbreak",          # the classifier category that fired
     "categories": ["jailbreak", "pii"],
     "verdict": "approve" | "dismiss", "direction": "prompt" | "completion",
     "truncated": false, "source_decision_id": "...", "tenant": "acme", "region": "eu",
     "policy_version": "...", "action": "BLOCK",
     "decided_at": "2026-...Z", "reviewed_at": "2026-...Z"}

The counts (`ExportCounts`) are printed as one JSON object on stdout when it is done.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

import asyncpg
from safeguards.v1 import signals_pb2

from services.monitor.commands import command_settings, parse_since, run_against_database
from services.monitor.decisions import ACTIONS, METADATA_ONLY, STANDARD, ZERO_RETENTION
from services.monitor.store import CASE_ACTIONED, CASE_DISMISSED

BENIGN = "benign"
VERDICT_NAMES = {CASE_ACTIONED: "approve", CASE_DISMISSED: "dismiss"}
COMPLETION_SURFACES = frozenset({signals_pb2.SURFACE_SCREEN_COMPLETION, signals_pb2.SURFACE_EXT_PROC_RESPONSE})
_POLICY_NAMES = {STANDARD: "STANDARD", METADATA_ONLY: "METADATA_ONLY", ZERO_RETENTION: "ZERO_RETENTION"}
CLASSIFIER_PREFIX = "classifier."


@dataclass
class ExportCounts:
    reviewed: int = 0
    rows: int = 0
    by_label: Counter = field(default_factory=Counter)
    #: Verdicts that gave no row, by why: "no_text_<DATA_POLICY>", "no_classifier_category".
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "reviewed": self.reviewed,
            "rows": self.rows,
            "by_label": dict(sorted(self.by_label.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


def classifier_category(reasons: list, scores: list) -> str | None:
    """The classifier category a case's decision fired on (the highest-scoring of
    several); None when no classifier reason fired (tier 0 or a rule alone)."""
    fired = {code[len(CLASSIFIER_PREFIX) :] for code, *_ in reasons if code.startswith(CLASSIFIER_PREFIX)}
    fired.discard("")
    if not fired:
        return None
    score = {s[0]: s[1] for s in scores if s and isinstance(s[1], int | float)}
    return max(sorted(fired), key=lambda c: score.get(c, 0.0))


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def label_row(r: asyncpg.Record | dict, counts: ExportCounts) -> dict | None:
    """One reviewed case as a training row, or None (counted in `counts.skipped`)."""
    counts.reviewed += 1
    snippet = r["snippet"]
    if r["data_policy"] != STANDARD or not snippet:
        counts.skipped[f"no_text_{_POLICY_NAMES.get(r['data_policy'], 'UNKNOWN')}"] += 1
        return None
    reasons, scores = json.loads(r["reasons"]), json.loads(r["scores"])
    category = classifier_category(reasons, scores)
    if category is None:
        counts.skipped["no_classifier_category"] += 1
        return None
    verdict = VERDICT_NAMES[r["status"]]
    label = category if verdict == "approve" else BENIGN
    counts.rows += 1
    counts.by_label[label] += 1
    return {
        "text": snippet,
        "label": label,
        "category": category,
        "categories": list(r["categories"]),
        "verdict": verdict,
        "direction": "completion" if r["surface"] in COMPLETION_SURFACES else "prompt",
        "truncated": r["characters"] > len(snippet),
        "source_decision_id": r["case_id"],
        "tenant": r["tenant"],
        "region": r["region"],
        "policy_version": r["policy_version"],
        "action": ACTIONS.get(r["action"], str(r["action"])),
        "decided_at": _iso(r["decided_at"]),
        "reviewed_at": _iso(r["reviewed_at"]),
    }


async def export(
    pool: asyncpg.Pool, region: str, out: TextIO, *, since: datetime | None = None, tenant: str = ""
) -> ExportCounts:
    """Write this region's reviewed cases (reviewed at or after `since`, of `tenant`)
    as JSONL to `out`, oldest review first; streamed, so any number of cases fits."""
    counts = ExportCounts()
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = conn.cursor(
            "SELECT case_id, region, tenant, action, categories, reasons, scores, data_policy, snippet, characters, "
            "surface, status, policy_version, decided_at, reviewed_at FROM monitor_cases "
            "WHERE region = $1 AND status = ANY($2::smallint[]) AND ($3::timestamptz IS NULL OR reviewed_at >= $3) "
            "AND ($4 = '' OR tenant = $4) ORDER BY reviewed_at NULLS FIRST, case_id",
            region,
            sorted(VERDICT_NAMES),
            since,
            tenant,
            prefetch=500,
        )
        async for r in cursor:
            row = label_row(r, counts)
            if row is not None:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return counts


# ---- the command ---------------------------------------------------------------------------------
async def _run(args: argparse.Namespace, settings) -> int:
    since = parse_since(args.since) if args.since else None
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
    out_path = Path(args.out)
    tmp = out_path.with_name(out_path.name + ".partial")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            counts = await export(pool, settings.region, out, since=since, tenant=args.tenant)
        tmp.replace(out_path)  # a failed export leaves no half-written file under the name asked for
    finally:
        await pool.close()
        tmp.unlink(missing_ok=True)
    print(json.dumps({"out": str(out_path), "region": settings.region, **counts.as_dict()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.monitor.labels",
        description="Export reviewers' verdicts on review cases as labelled JSONL (approve: the category that "
        "fired; dismiss: benign), with text only as the tenant's data policy kept it. Other flags are the "
        "monitor's (--database-url, --region, or MONITOR_* env vars)",
    )
    parser.add_argument("command", choices=("export",))
    parser.add_argument("--out", required=True, help="the JSONL file to write (replaced when the export is done)")
    parser.add_argument("--since", default="", help="reviewed since: 24h, 7d or an ISO 8601 time (default: all)")
    parser.add_argument("--tenant", default="", help="one tenant only")
    args, rest = parser.parse_known_args(argv)
    return run_against_database(parser, _run(args, command_settings(rest)))


if __name__ == "__main__":
    sys.exit(main())
