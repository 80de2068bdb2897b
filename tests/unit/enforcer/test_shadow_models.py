"""Shadow models (issue 13's promotion path for models): a policy's
`classifier.shadow_models` classify a sample of its prompt decisions in the background,
and a SURFACE_SHADOW_MODEL follow-up says what the live policy would have done on the
shadow's scores. Retro-screening keeps priority over them and is never dropped for them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

from services.common.errors import ConfigError
from services.enforcer.decision import ClassifierOutcome
from services.enforcer.policy import Action, parse_policy
from services.enforcer.requests import Identity, PromptRequest
from tests.unit.enforcer.test_retro import FULL_BENIGN, FULL_HARMFUL, PARTIAL_LOW, THRESHOLDS, wait_for
from tests.unit.enforcer_stream.helpers import screener_with_background

POLICY = """
tenant: default
version: "shadow-models.1"
data_policy: {data_policy}
deadline_ms: 200
classifier:
  models: [prompt_guard]
  shadow_models:
    - {{name: candidate_model, sample_rate: {rate}}}
categories:
  harmful: {{threshold: 0.5, action: BLOCK}}
"""


class PerModelClassifier:
    """The hot path answers `hot`; background calls answer per model asked, each
    recorded, optionally held at a gate."""

    def __init__(self, hot: ClassifierOutcome, background: dict[str, ClassifierOutcome], gate=None) -> None:
        self.hot, self.background, self.gate = hot, background, gate
        self.whole_calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    async def classify(self, texts, models, budget, *, tenant: str = "") -> ClassifierOutcome:
        return self.hot

    async def classify_whole(self, texts, models, timeout_s, *, tenant: str = "") -> ClassifierOutcome:
        self.whole_calls.append((tuple(texts), tuple(models)))
        if self.gate is not None:
            await self.gate.wait()
        return self.background[models[0]]


def make(tmp: Path, cl, *, rate: float = 1.0, data_policy: str = "STANDARD", retro_jobs=100, shadow_jobs=100):
    d = tmp / f"policies-{rate}-{data_policy}-{retro_jobs}-{shadow_jobs}"
    d.mkdir()
    (d / "default.yaml").write_text(POLICY.format(data_policy=data_policy, rate=rate))
    return screener_with_background(d, cl, max_jobs=retro_jobs, shadow_max_jobs=shadow_jobs)


def request(text: str) -> PromptRequest:
    return PromptRequest(Identity(tenant="acme", account="acct-raw-1", request_id="req-9"), (("user", text),))


SHADOW_HARMFUL = ClassifierOutcome(
    scores={"harmful": 0.91}, model_thresholds=THRESHOLDS, model_versions={"candidate_model": 4}
)


async def test_a_sampled_decision_gets_a_shadow_follow_up_with_the_would_be_action(tmp_path) -> None:
    cl = PerModelClassifier(FULL_BENIGN, {"candidate_model": SHADOW_HARMFUL})
    screener, background, pub, registry = make(tmp_path, cl)
    background.start()
    try:
        res = await screener.screen_prompt(request("how do I centre a div"))
        assert res.outcome.action is Action.ALLOW
        await wait_for(lambda: len(pub.signals()) == 2)
    finally:
        await background.stop()
    decision, follow_up = pub.signals()
    assert decision.surface == signals_pb2.SURFACE_SCREEN_PROMPT and decision.action == safeguards_pb2.ACTION_ALLOW
    assert follow_up.surface == signals_pb2.SURFACE_SHADOW_MODEL
    assert follow_up.retro_of_decision_id == res.decision_id != follow_up.decision_id
    assert follow_up.shadow_model == "candidate_model"
    assert dict(follow_up.model_versions) == {"candidate_model": 4}
    assert follow_up.action == safeguards_pb2.ACTION_BLOCK  # the live policy on the shadow's scores
    assert follow_up.original_action == safeguards_pb2.ACTION_ALLOW
    assert [(s.category, round(s.score, 2)) for s in follow_up.scores] == [("harmful", 0.91)]
    assert follow_up.verdict == classifier_pb2.VERDICT_COMPLETENESS_FULL
    assert not follow_up.retro_catch  # nothing acts on a shadow: it is no catch
    assert not follow_up.HasField("content") and b"centre a div" not in follow_up.SerializeToString()
    assert follow_up.policy_version == "shadow-models.1" and follow_up.tenant == "acme"
    assert cl.whole_calls == [(("how do I centre a div",), ("candidate_model",))]
    assert registry.get_sample_value("enforcer_shadow_model_jobs_total", {"result": "stricter"}) == 1


async def test_sample_rate_zero_queues_nothing(tmp_path) -> None:
    cl = PerModelClassifier(FULL_BENIGN, {"candidate_model": SHADOW_HARMFUL})
    screener, background, pub, _ = make(tmp_path, cl, rate=0.0)
    for _ in range(20):
        await screener.screen_prompt(request("text"))
    assert background.shadow_pending == 0 and len(pub.signals()) == 20


async def test_retro_jobs_go_first_and_are_never_dropped_for_shadow_load(tmp_path) -> None:
    gate = asyncio.Event()
    # The hot path answers a partial verdict (a retro job) for every prompt; each also
    # gets a shadow job. The one worker is held at the gate by the first job it takes.
    cl = PerModelClassifier(PARTIAL_LOW, {"prompt_guard": FULL_HARMFUL, "candidate_model": FULL_BENIGN}, gate)
    screener, background, pub, registry = make(tmp_path, cl, retro_jobs=50, shadow_jobs=2)
    background.start()
    try:
        for i in range(6):
            await screener.screen_prompt(request(f"text {i}"))
        await wait_for(lambda: len(cl.whole_calls) == 1)
        # Shadow load overflowed its own queue; not one retro job was dropped.
        assert registry.get_sample_value("enforcer_shadow_model_jobs_total", {"result": "dropped"}) == 4
        assert registry.get_sample_value("enforcer_retro_jobs_total", {"result": "dropped"}) is None
        assert background.pending == 6 and background.shadow_pending == 2
        gate.set()
        await wait_for(lambda: background.pending == 0 and background.shadow_pending == 0)
    finally:
        await background.stop()
    # Every retro call was made before any shadow call.
    asked = [models[0] for _, models in cl.whole_calls]
    assert asked == ["prompt_guard"] * 6 + ["candidate_model"] * 2
    assert registry.get_sample_value("enforcer_retro_jobs_total", {"result": "caught"}) == 6
    assert registry.get_sample_value("enforcer_shadow_model_jobs_total", {"result": "same"}) == 2
    kinds = [s.surface for s in pub.signals()]
    assert kinds.count(signals_pb2.SURFACE_RETRO_SCREEN) == 6 and kinds.count(signals_pb2.SURFACE_SHADOW_MODEL) == 2


async def test_a_failing_shadow_model_is_counted_and_the_worker_goes_on(tmp_path) -> None:
    cl = PerModelClassifier(FULL_BENIGN, {})  # KeyError: the shadow model call fails
    screener, background, pub, registry = make(tmp_path, cl)
    background.start()
    try:
        await screener.screen_prompt(request("one"))
        await screener.screen_prompt(request("two"))
        await wait_for(lambda: registry.get_sample_value("enforcer_shadow_model_jobs_total", {"result": "failed"}) == 2)
    finally:
        await background.stop()
    assert [s.surface for s in pub.signals()] == [signals_pb2.SURFACE_SCREEN_PROMPT] * 2


@pytest.mark.parametrize(
    "shadow, error",
    [
        ("[{name: a, sample_rate: 1.5}]", "sample_rate"),
        ("[{name: a, sample_rate: 0.1}, {name: a, sample_rate: 0.2}]", "named twice"),
        ("[{name: a}]", "sample_rate"),
        ("[{name: a, sample_rate: 0.1, extra: 1}]", "extra"),
    ],
)
def test_bad_shadow_models_fail_the_policy_load(shadow, error) -> None:
    text = f"tenant: t\nversion: v\nclassifier:\n  shadow_models: {shadow}\n"
    with pytest.raises(ConfigError, match=error):
        parse_policy(text, "t.yaml")


def test_shadow_models_parse() -> None:
    p = parse_policy("tenant: t\nversion: v\nclassifier:\n  shadow_models: [{name: m, sample_rate: 0.25}]\n", "t.yaml")
    assert [(m.name, m.sample_rate) for m in p.shadow_models] == [("m", 0.25)]
    assert parse_policy("tenant: t\nversion: v\n", "t.yaml").shadow_models == ()
