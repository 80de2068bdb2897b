"""The rules' YAML schema: good files load, typos and inconsistent rules fail with a
message naming the file and the field, and a rejected reload keeps the last good set."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.reloader import ReloadingConfig
from services.monitor.rules import load_rules, parse_rules

GOOD = """
rules:
  - name: jb-throttle
    match: {category: jailbreak, action: BLOCK, tenant: acme}
    threshold: {count: 3, window_minutes: 5}
    enforce: {kind: THROTTLE_ACCOUNT, requests_per_minute: 2, ttl_minutes: 30}
    dry_run: false
  - name: pii-suspend
    match: {category: pii}
    threshold: {count: 10, window_minutes: 60}
    enforce: {kind: SUSPEND_ACCOUNT, ttl_minutes: 1440}
    dry_run: true
    open_case: false
"""


def test_good_file_loads_with_defaults():
    rules = parse_rules(GOOD, "good.yaml")
    assert [r.name for r in rules] == ["jb-throttle", "pii-suspend"]
    jb, pii = rules
    assert (jb.match.tenant, jb.enforce.requests_per_minute, jb.mode, jb.open_case) == ("acme", 2, "live", True)
    assert (pii.match.action, pii.match.tenant, pii.mode, pii.open_case) == ("BLOCK", "", "dry_run", False)
    assert parse_rules("", "empty.yaml") == []


def test_shipped_defaults_are_dry_run_a_block_burst_and_a_retro_catch_rule():
    rules = load_rules(Path(__file__).parents[3] / "config" / "monitor-rules").rules
    assert [r.name for r in rules] == ["jailbreak-burst", "retro-confirmed-attacks"]
    assert all(r.dry_run for r in rules)
    retro = rules[1]
    assert retro.match.retro_catch and retro.match.category == "" and retro.enforce.kind == "SUSPEND_ACCOUNT"


def test_a_retro_catch_rule_may_match_any_category_a_decision_rule_may_not():
    retro = (
        "rules:\n  - {name: r, match: {retro_catch: true}, threshold: {count: 2, window_minutes: 30},\n"
        "     enforce: {kind: SUSPEND_ACCOUNT, ttl_minutes: 60}, dry_run: false}\n"
    )
    (rule,) = parse_rules(retro, "retro.yaml")
    assert (rule.match.retro_catch, rule.match.category, rule.match.action) == (True, "", "BLOCK")
    with pytest.raises(ConfigError) as err:
        parse_rules(retro.replace("retro_catch: true", "retro_catch: false"), "bad.yaml")
    assert str(err.value).startswith("bad.yaml: rules.0.match: ") and "category is required" in str(err.value)


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        (("threshold: {count: 3,", "threshold: {cuont: 3,"), "threshold.cuont"),  # typo: extra=forbid
        (("dry_run: false", "dryrun: false"), "dry_run"),  # missing + unknown key
        (("action: BLOCK, tenant", "action: BANANA, tenant"), "match.action"),
        (("kind: THROTTLE_ACCOUNT", "kind: DELETE_ACCOUNT"), "enforce.kind"),
        (("requests_per_minute: 2, ", ""), "needs requests_per_minute"),
        (("ttl_minutes: 1440}", "ttl_minutes: 1440, requests_per_minute: 3}"), "only applies to THROTTLE"),
        (("count: 3", "count: 0"), "threshold.count"),
        (("window_minutes: 5}", "window_minutes: -1}"), "window_minutes"),
        (("name: pii-suspend", "name: jb-throttle"), "duplicate rule name"),
        (("name: jb-throttle", "name: 'Bad Name!'"), "name"),
        (("rules:", "rulez:"), "rulez"),
    ],
)
def test_bad_file_is_rejected_naming_file_and_field(mutation, needle):
    old, new = mutation
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        parse_rules(GOOD.replace(old, new, 1), "bad.yaml")
    assert str(err.value).startswith("bad.yaml: ") and needle in str(err.value)


def test_not_yaml_and_duplicates_across_files(tmp_path):
    with pytest.raises(ConfigError, match="not YAML"):
        parse_rules("rules: [", "x.yaml")
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.split("  - name: pii-suspend")[0])
    with pytest.raises(ConfigError, match="duplicate rule 'jb-throttle'"):
        load_rules(tmp_path)


def test_reload_rejects_bad_file_and_keeps_last_good(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD)
    cfg = ReloadingConfig(f, load_rules)
    assert len(cfg.load_initial().rules) == 2
    f.write_text(GOOD.replace("count: 3", "count: three") + "\n")
    assert cfg.reload_if_changed() is False
    assert "threshold.count" in cfg.last_error and len(cfg.current.rules) == 2
    f.write_text(GOOD.split("  - name: pii-suspend")[0] + "\n\n")
    assert cfg.reload_if_changed() is True
    assert [r.name for r in cfg.current.rules] == ["jb-throttle"]
