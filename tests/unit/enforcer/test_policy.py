"""Tenant policies: golden good and bad files (exact error texts), the default
policy for unknown tenants, and the shipped default policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.enforcer import policy
from services.enforcer.policy import Action, DataPolicy, FailMode
from tests.support import ROOT

DATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted((DATA / "bad").glob("*.yaml")), ids=lambda p: p.name)
def test_bad_files_fail_with_the_expected_message(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as err:
        policy.parse_policy(path.read_text(), path.name)
    assert str(err.value) == expected


def test_good_directory_loads_and_unknown_tenants_get_the_default() -> None:
    ps = policy.load(DATA / "good")
    assert set(ps.policies) == {"default", "hospital"}
    assert ps.for_tenant("someone-new") is ps.default
    hospital = ps.for_tenant("hospital")
    assert hospital.data_policy is DataPolicy.ZERO_RETENTION
    assert hospital.classifier_fail_mode is FailMode.CLOSED
    assert hospital.categories["harmful"].threshold == 0.5
    assert hospital.categories["harmful"].action is Action.FLAG
    assert hospital.pii_action is Action.BLOCK and hospital.screened_pii_kinds == {"SSN"}
    assert hospital.blocklist is not None and hospital.deadline_s == 0.03
    assert hospital.ratelimit is None


def test_the_shipped_default_policy_blocks_attacks_at_the_models_thresholds() -> None:
    ps = policy.load(ROOT / "config" / "policies")
    d = ps.default
    for category in ("jailbreak", "prompt_injection", "harmful"):
        assert d.categories[category].action is Action.BLOCK
        assert d.categories[category].threshold is None  # the model's own threshold
    assert d.ratelimit is not None and d.ratelimit.domain == "llm"
    assert [r.hits_tokens for r in d.ratelimit.descriptors] == [False, True]
    assert {"PRIVATE_KEY", "API_KEY"} <= d.pii_block_kinds


def test_a_directory_without_a_default_policy_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("tenant: a\nversion: '1'\n")
    with pytest.raises(ConfigError, match="no policy for tenant 'default'"):
        policy.load(tmp_path)


def test_duplicate_tenants_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("tenant: default\nversion: '1'\n")
    (tmp_path / "b.yaml").write_text("tenant: default\nversion: '2'\n")
    with pytest.raises(ConfigError, match=r"b.yaml: duplicate tenant 'default' \(also in a.yaml\)"):
        policy.load(tmp_path)


def test_actions_are_ordered_by_severity() -> None:
    assert max(Action.FLAG, Action.REDACT, Action.ALLOW) is Action.REDACT
    assert max(Action.THROTTLE, Action.BLOCK) is Action.BLOCK
