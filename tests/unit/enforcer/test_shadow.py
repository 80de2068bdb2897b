"""Candidate policies in shadow: decided on the live request's inputs, in the signal,
never enforced; the detectors re-run only when the candidate changes them; what the
candidate needs that was not fetched is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import safeguards_pb2

from services.common.errors import ConfigError
from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.enforcer import policy, shadow
from services.enforcer.policy import Action
from services.enforcer.requests import Identity, Limits, PromptRequest
from services.enforcer.screening import Screener
from services.enforcer.stats import ScreenStats
from tests.unit.enforcer_stream.helpers import ListPublisher, NoRateLimit, RecordingClassifier

LIVE = """
tenant: {tenant}
version: "live.1"
data_policy: STANDARD
classifier: {{models: [prompt_guard], fail_mode: open}}
categories:
  harmful: {{threshold: 0.5, action: BLOCK}}
blocklist: {{action: BLOCK, terms: [plutonium recipe]}}
"""
CANDIDATE = """
tenant: {tenant}
version: "cand.2"
data_policy: STANDARD
classifier: {{models: [{models}], fail_mode: open}}
categories:
  harmful: {{threshold: {threshold}, action: {action}}}
blocklist: {{action: BLOCK, terms: [{terms}]}}
"""


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)


def make(tmp: Path, candidates: dict[str, str]) -> tuple[Screener, ListPublisher, ScreenStats]:
    live, cand = tmp / "live", tmp / "shadow"
    write(live, "default", LIVE.format(tenant="default"))
    write(live, "acme", LIVE.format(tenant="acme"))
    cand.mkdir()
    for tenant, text in candidates.items():
        write(cand, tenant, text)
    policies = ReloadingConfig(live, policy.load)
    policies.load_initial()
    shadows = ReloadingConfig(cand, shadow.load)
    shadows.load_initial()
    pub, stats = ListPublisher(), ScreenStats(CollectorRegistry())
    screener = Screener(
        region="unit",
        policies=policies,
        key=RegionalKey.from_bytes("unit", b"k" * 32),
        classifier=RecordingClassifier(),
        ratelimit=NoRateLimit(),
        publisher=pub,
        stats=stats,
        limits=Limits(max_prompt_bytes=10_000, max_messages=10, classifier_max_chars=1000, snippet_chars=40),
        shadow=lambda: shadows.current,
    )
    return screener, pub, stats


def req(tenant: str, text: str) -> PromptRequest:
    return PromptRequest(Identity(tenant=tenant, account="a"), (("user", text),))


def candidate(tenant: str, *, threshold=0.05, action="BLOCK", models="prompt_guard", terms="plutonium recipe"):
    return CANDIDATE.format(tenant=tenant, threshold=threshold, action=action, models=models, terms=terms)


async def test_a_stricter_candidate_is_reported_not_enforced(tmp_path) -> None:
    screener, pub, stats = make(tmp_path, {"acme": candidate("acme")})
    res = await screener.screen_prompt(req("acme", "a harmless question"))  # harmful 0.1
    assert res.outcome.action is Action.ALLOW
    (sig,) = pub.signals()
    assert sig.shadow.policy_version == "cand.2" and sig.shadow.action == safeguards_pb2.ACTION_BLOCK
    assert "classifier.harmful" in [r.code for r in sig.shadow.reasons] and not sig.shadow.incomplete
    assert stats.shadow.labels("1", "stricter")._value.get() == 1


async def test_tenants_without_a_candidate_have_no_shadow_and_default_covers_default_tenants(tmp_path) -> None:
    screener, pub, _ = make(tmp_path, {"default": candidate("default", threshold=0.9, action="FLAG")})
    await screener.screen_prompt(req("acme", "HARMFUL request"))  # acme has a live file of its own
    await screener.screen_prompt(req("newco", "HARMFUL request"))  # newco is on the live default
    acme, newco = pub.signals()
    assert not acme.HasField("shadow")
    assert newco.action == safeguards_pb2.ACTION_BLOCK and newco.shadow.action == safeguards_pb2.ACTION_FLAG


async def test_a_candidate_with_other_detectors_reruns_tier0_and_names_what_it_lacks(tmp_path) -> None:
    screener, pub, _ = make(
        tmp_path, {"acme": candidate("acme", threshold=0.95, terms="secret handshake", models="other_model")}
    )
    res = await screener.screen_prompt(req("acme", "the secret handshake is"))
    assert res.outcome.action is Action.ALLOW
    (sig,) = pub.signals()
    assert sig.shadow.action == safeguards_pb2.ACTION_BLOCK
    assert [r.code for r in sig.shadow.reasons] == ["blocklist"]
    assert sig.shadow.incomplete == "classifier_models"


def test_a_duplicate_candidate_is_a_config_error(tmp_path) -> None:
    d = tmp_path / "shadow"
    write(d, "a", candidate("acme"))
    write(d, "b", candidate("acme"))
    with pytest.raises(ConfigError, match="duplicate shadow candidate"):
        shadow.load(d)
