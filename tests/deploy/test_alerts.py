"""Prometheus alert rules as files: promtool accepts them and their unit tests pass, every
metric they read is one a service exports, and every alert, Prometheus' and the
monitor's own, links to a runbook in the repository with the four sections."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.metrics import ROOT, catalog

RULES = ROOT / "deploy" / "prometheus" / "rules" / "safeguards.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "safeguards_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
SECTIONS = ("## What it means", "## How to confirm", "## What to do", "## How to roll back")
PROMTOOL = shutil.which("promtool")


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["groups"] for r in group["rules"] if "alert" in r]


def monitor_alert_kinds() -> list[str]:
    from services.monitor.alerts import KINDS

    return sorted(KINDS)


def monitor_runbook(kind: str) -> Path:
    return RUNBOOKS / f"monitor-{kind.replace('_', '-')}.md"


def test_there_are_alerts_for_what_the_issue_asks():
    names = {r["alert"] for r in alert_rules()}
    for wanted in (
        "SafeguardsPartialVerdictShareHigh",
        "SafeguardsNoVerdictShareHigh",
        "SafeguardsFailOpenShareHigh",
        "SafeguardsBreakerOpen",
        "SafeguardsDecisionLatencyHigh",
        "SafeguardsClassifierQueueBacklog",
        "SafeguardsRetroQueueBacklog",
        "SafeguardsMonitorConsumerLag",
        "SafeguardsMonitorStoreStuck",
        "SafeguardsSpoolBacklog",
        "SafeguardsSpoolDropping",
        "SafeguardsRetroScreenLagHigh",
    ):
        assert wanted in names


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_the_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_unit_tests_of_the_rules_pass():
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path):
    """The unit tests can fail: the fail-open alert raised to 10% no longer fires at 5%."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text().replace(") > 0.01", ") > 0.1", 1))
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    out = subprocess.run(
        [PROMTOOL, "test", "rules", f"tests/{RULE_TESTS.name}"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0
    assert "alertname: SafeguardsFailOpenShareHigh" in out.stdout + out.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_reads_only_exported_metrics(rule):
    assert promql.problems(rule["expr"]) == []


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_summary_and_a_runbook_that_exists(rule):
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]
    url = rule["annotations"]["runbook_url"]
    assert url == f"docs/runbooks/{rule['alert']}.md"
    assert (ROOT / url).is_file(), f"{rule['alert']}: runbook_url {url} is not a file of the repository"


@pytest.mark.parametrize("kind", monitor_alert_kinds())
def test_every_monitor_alert_kind_has_a_runbook(kind):
    assert monitor_runbook(kind).is_file()


@pytest.mark.parametrize("kind", monitor_alert_kinds())
def test_the_monitors_notifications_link_their_runbook(kind):
    """The webhook body (Alertmanager's shape) carries annotations.runbook_url."""
    import json

    from safeguards.v1 import alerts_pb2

    from services.monitor.alerts import KINDS, SEVERITIES
    from services.monitor.webhook import webhook_payload

    enum, severity = KINDS[kind]
    rec = alerts_pb2.Alert(kind=enum, severity=SEVERITIES[severity], summary="s")
    body = json.loads(webhook_payload(rec))
    url = body["alerts"][0]["annotations"]["runbook_url"]
    assert url == str(monitor_runbook(kind).relative_to(ROOT))
    assert (ROOT / url).is_file()


def _runbook_pages() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")


@pytest.mark.parametrize("page", _runbook_pages(), ids=lambda p: p.name)
def test_runbook_says_what_it_means_how_to_confirm_act_and_roll_back(page):
    text = page.read_text()
    assert text.startswith(f"# {page.stem}\n")
    positions = [text.find(s) for s in SECTIONS]
    assert -1 not in positions, f"{page.name}: missing {[s for s, p in zip(SECTIONS, positions, strict=True) if p < 0]}"
    assert positions == sorted(positions)
    for start, end in zip(positions, [*positions[1:], len(text)], strict=True):
        assert len(text[start:end].split("\n", 1)[1].strip()) > 20, f"{page.name}: an empty section"


def test_every_runbook_belongs_to_an_alert_and_the_index_lists_it():
    owners = {f"{r['alert']}.md" for r in alert_rules()} | {monitor_runbook(k).name for k in monitor_alert_kinds()}
    pages = {p.name for p in _runbook_pages()}
    assert pages == owners
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)]+\.md)\)", index))
    assert linked == pages


def test_links_between_runbooks_resolve():
    for page in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_metric_catalog_sees_every_service():
    """The catalog is read from the source: if a refactor hid metrics from it (say, names
    built some new way), the reference checks above would pass on nothing."""
    names = set(catalog())
    for prefix in ("enforcer_", "classifier_", "ratelimit_", "safeguards_monitor_", "kafka_", "grpc_server_"):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(enforcer_decision_total[5m])", "metric 'enforcer_decision_total' is not exported by any service"),
        ("enforcer_decisions", "metric 'enforcer_decisions' is not exported by any service"),  # a counter: _total
        (
            'sum(rate(enforcer_verdicts_total{completeness="partial"}[5m]))',
            "metric 'enforcer_verdicts_total' has no label 'completeness' (labels: reason, surface, verdict)",
        ),
        ("sum(rate(enforcer_decisions_total[5m])", "does not parse: unclosed left parenthesis"),
    ],
)
def test_reference_checker_rejects_unknown_metrics_and_labels(expr, problem):
    assert promql.problems(expr) == [problem]


def test_reference_checker_accepts_histogram_series_and_target_labels():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(enforcer_decision_seconds_bucket{job="enforcer"}[5m])))'
    assert promql.problems(expr) == []
    assert promql.problems("safeguards_monitor_actions_lag > 0 and up == 1") == []
