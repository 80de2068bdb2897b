"""Golden good and bad config files (envoyproxy/ratelimit style): every good file
loads; every bad file fails with the exact error text in its `# expect:` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.ratelimit import config
from services.ratelimit.config import Algorithm, Unit

DATA = Path(__file__).parent / "testdata"
BAD = sorted((DATA / "bad").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted((DATA / "good").glob("*.yaml")), ids=lambda p: p.name)
def test_good_files_load(path: Path) -> None:
    cfg = config.load(path)
    assert len(cfg.domains) == 1


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_files_fail_with_the_expected_message(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == expected


def test_a_directory_loads_every_file_and_rejects_duplicate_domains(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("domain: one\ndescriptors: []\n")
    (tmp_path / "b.yml").write_text("domain: two\ndescriptors: []\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert sorted(config.load(tmp_path).domains) == ["one", "two"]
    (tmp_path / "c.yaml").write_text("domain: one\n")
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate domain 'one' \(also in a.yaml\)"):
        config.load(tmp_path)


def test_readme_example_parses_into_the_expected_tree() -> None:
    cfg = config.load(DATA / "good" / "envoy_readme_example.yaml")
    dom = cfg.domains["mongo_cps"]
    users = dom.children["database_users"]
    assert users.rate_limit.requests_per_unit == 500 and users.rate_limit.unit is Unit.SECOND
    assert users.rate_limit.algorithm is Algorithm.GCRA
    remote = dom.children["remote_address"]
    assert remote.shadow_mode and remote.detailed_metric
    assert dom.children["to_number"].children["from_number"].rate_limit.unit is Unit.DAY
    assert dom.children["to_number"].children["from_number"].path == "mongo_cps.to_number.from_number"


@pytest.mark.parametrize(
    ("entries", "rule_path"),
    [
        ([("database", "users")], "mongo_cps.database_users"),
        ([("database", "other")], None),  # key with values only: unknown value -> no rule
        ([("remote_address", "10.0.0.1")], "mongo_cps.remote_address"),  # key-only rule: any value
        ([("to_number", "1"), ("from_number", "2")], "mongo_cps.to_number.from_number"),
        ([("to_number", "1")], "mongo_cps.to_number"),  # matched, but it has no limit of its own
        ([("to_number", "1"), ("x", "2")], None),
        ([("remote_address", "a"), ("deeper", "b")], None),  # nothing below a leaf
    ],
)
def test_matching_follows_envoy_semantics(entries, rule_path) -> None:
    cfg = config.load(DATA / "good" / "envoy_readme_example.yaml")
    rule = cfg.match("mongo_cps", entries)
    assert (rule.path if rule else None) == rule_path


def test_specific_value_wins_over_key_only_rule() -> None:
    cfg = config.load(DATA / "good" / "llm.yaml")
    assert cfg.match("llm", [("tenant", "internal-evals")]).rate_limit.unlimited
    assert cfg.match("llm", [("tenant", "acme")]).rate_limit.requests_per_unit == 600
