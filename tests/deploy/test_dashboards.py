"""Grafana dashboards as files (deploy/grafana/*.json): every query parses as PromQL and
names only metrics and labels that the services define, and the dashboard shows what
the issue asks for (decisions, blocks, partial and fail-open share, latency, queue
depths, consumer lag, spool depth)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy import promql
from tests.deploy.metrics import ROOT, exported_series

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>\w+)\)$")


def _panels(items):
    for p in items:
        yield p
        yield from _panels(p.get("panels") or [])


def _queries(dashboard) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = []
    for p in _panels(dashboard["panels"]):
        for t in p.get("targets") or []:
            found.append((f"panel {p['title']!r} target {t.get('refId')}", t["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = _LABEL_VALUES.match(query)
            found.append((f"variable {var['name']}", m.group("metric") if m and m.group("metric") else query))
    return found


def test_there_is_a_dashboard():
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_reads_exported_metrics(path: Path):
    dashboard = json.loads(path.read_text())
    problems = []
    for where, expr in _queries(dashboard):
        problems += [f"{where}: {p}" for p in promql.problems(promql.grafana_to_promql(expr))]
    assert problems == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_importable(path: Path):
    """What Grafana needs to import it as a file (provisioning) into any instance: a uid,
    unique panel ids, a datasource chosen by variable (no instance-specific uid)."""
    dashboard = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for p in _panels(dashboard["panels"]):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and p["description"], p["title"]


def test_the_dashboard_shows_what_the_issue_asks_for():
    exprs = " ".join(expr for path in DASHBOARDS for _, expr in _queries(json.loads(path.read_text())))
    for metric in (
        "enforcer_decisions_total",  # decisions
        'action="BLOCK"',  # blocks
        'verdict="partial"',  # partial share
        "enforcer_degraded_decisions_total",  # fail-open share
        "enforcer_decision_seconds_bucket",  # latency
        "classifier_queue_depth",  # queue depths
        "enforcer_retro_queue_depth",
        "safeguards_monitor_consumer_lag",  # consumer lag
        "kafka_spool_records",  # spool depth
    ):
        assert metric in exprs, metric


def test_the_check_fails_on_a_renamed_metric(tmp_path):
    dashboard = json.loads(DASHBOARDS[0].read_text())
    target = next(p for p in _panels(dashboard["panels"]) if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace("enforcer_decisions_total", "enforcer_decision_total")
    problems = [p for _, e in _queries(dashboard) for p in promql.problems(promql.grafana_to_promql(e))]
    assert "metric 'enforcer_decision_total' is not exported by any service" in problems
    assert "enforcer_decisions_total" in exported_series()
