"""A verdict within the deadline, always: a cascade whose second stage is refused at
admission, slow, overloaded or unavailable answers with its first stage's scores marked
PARTIAL (with the reason, ``answered_by`` the first stage), before the deadline; FULL
otherwise.  A first stage, or a plain model, that cannot answer in time is
DEADLINE_EXCEEDED, never a made-up verdict.  Real ONNX Runtime sessions on tiny models
(the second stage's batcher is held shut where a test needs it slow)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.classifier.pipeline import DEADLINE, FULL, OVERLOADED, PARTIAL, UNAVAILABLE, Classifier
from services.classifier.repository import ModelRepository
from services.classifier.runtime import RuntimeOptions
from services.classifier.stats import ClassifierStats
from services.common.errors import DeadlineExceeded, WouldMissDeadline
from tests.unit.classifier_serving.tinymodel import write_model

SHORT = "hello"  # the tiny model's jailbreak score for it is ~0.37: inside the "mixed" band
LONG = "x" * 60  # ~0.001: below it
MIXED_BAND = [0.3, 0.45]


def cascade(root: Path, name: str, stages: list[str], band: list[float]) -> None:
    (root / name).mkdir()
    (root / name / "manifest.yaml").write_text(
        yaml.safe_dump({"name": name, "platform": "cascade", "stages": stages, "band": band})
    )


@pytest.fixture
async def env(tmp_path: Path):
    write_model(tmp_path, "a", thresholds={"jailbreak": 0.0001})
    write_model(tmp_path, "b")
    broken = write_model(tmp_path, "c")
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    cascade(tmp_path, "guard", ["a", "b"], [0.0, 1.0])
    cascade(tmp_path, "mixed", ["a", "b"], MIXED_BAND)
    cascade(tmp_path, "guard_c", ["a", "c"], [0.0, 1.0])
    registry = CollectorRegistry()
    stats = ClassifierStats(registry)
    repo = ModelRepository(tmp_path, RuntimeOptions(), stats, poll_seconds=0)
    await repo.start()
    classifier = Classifier(repo, stats, "guard", reply_margin_s=0.01)
    yield classifier, repo, registry
    await classifier.stop()
    await repo.stop()


class Gate:
    """Holds a model version's batches shut (its real session runs once opened)."""

    def __init__(self, repo: ModelRepository, name: str) -> None:
        self.batcher = repo.serving(name).batcher
        self._real = self.batcher._infer
        self.open = threading.Event()
        self.started = threading.Event()
        self.batcher._infer = self._infer

    def _infer(self, feeds):
        self.started.set()
        self.open.wait(10)
        return self._real(feeds)


def make_slow(repo: ModelRepository, name: str) -> None:
    """Teach a version's cost model that it costs 10 s a token (and never probe it)."""
    batcher = repo.serving(name).batcher
    batcher.cost.observe(1, 10.0)
    batcher.policy = dataclasses.replace(batcher.policy, probe_interval_s=math.inf)


def scores(result) -> dict[str, float]:
    return {s.label: s.score for s in result.scores}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_second_stage_that_answers_in_time_gives_a_full_verdict(env) -> None:
    classifier, _, _ = env
    ((m,),) = await classifier.classify([SHORT], ["guard"], timeout=5.0)
    assert (m.completeness, m.partial_reason, m.answered_by) == (FULL, "", "b")


async def test_a_second_stage_refused_at_admission_answers_partial_with_the_first_stages_scores(env) -> None:
    classifier, repo, registry = env
    ((first,),) = await classifier.classify([SHORT], ["a"])
    make_slow(repo, "b")
    featurizer = repo.serving("b").featurizer
    cut = []
    real_windows = featurizer.windows
    featurizer.windows = lambda texts: cut.append(len(texts)) or real_windows(texts)
    ((m,),) = await asyncio.wait_for(classifier.classify([SHORT], ["guard"], timeout=2.0), 2.0)
    assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, DEADLINE, "a")
    assert cut == [], "refused on its estimated rows before the text was tokenised for it"
    assert m.model == "guard" and m.version == first.version
    assert scores(m) == pytest.approx(scores(first)) and first.flagged == ["jailbreak"]
    # In its escalation band the first stage is inconclusive by the cascade's own rule: a
    # partial answer's thresholds are raised to the band's edge (1.0 here), so it flags less
    # than a full verdict would; the caller sees the scores and decides (e.g. FLAG).
    assert m.flagged == [] and {s.label: s.threshold for s in m.scores}["jailbreak"] == 1.0
    assert m.uncertain_from == 0.0  # the band's low edge, from which the caller may FLAG (0.0 here)
    assert sample(registry, "classifier_partial_answers_total", model="guard", reason=DEADLINE) == 1
    assert sample(registry, "classifier_requests_rejected_total", model="b", reason="deadline") == 1
    assert sample(registry, "classifier_texts_total", model="guard", answered_by="a") == 1
    # No deadline: nothing is refused on prediction, the answer is FULL.
    ((m,),) = await classifier.classify([SHORT], ["guard"])
    assert (m.completeness, m.answered_by) == (FULL, "b")


async def test_only_the_escalated_texts_of_a_request_are_partial(env) -> None:
    classifier, repo, _ = env
    make_slow(repo, "b")
    short, long_ = await classifier.classify([SHORT, LONG], ["mixed"], timeout=2.0)
    assert (short[0].completeness, short[0].partial_reason, short[0].answered_by) == (PARTIAL, DEADLINE, "a")
    assert (long_[0].completeness, long_[0].partial_reason, long_[0].answered_by) == (FULL, "", "a")
    assert short[0].uncertain_from == pytest.approx(MIXED_BAND[0]) and long_[0].uncertain_from == 0.0


async def test_a_second_stage_too_slow_to_answer_in_time_answers_partial_before_the_deadline(env) -> None:
    classifier, repo, registry = env
    gate = Gate(repo, "b")
    try:
        # The call itself must come back before the caller's deadline: wait_for would raise.
        ((m,),) = await asyncio.wait_for(classifier.classify([SHORT], ["guard"], timeout=0.3), 0.3)
    finally:
        gate.open.set()
    assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, DEADLINE, "a")
    assert gate.started.is_set(), "it was admitted and ran, but too late"


async def test_an_overloaded_second_stage_answers_partial_overloaded(env) -> None:
    classifier, repo, registry = env
    gate = Gate(repo, "b")
    gate.batcher.policy = dataclasses.replace(gate.batcher.policy, capacity=1)
    try:
        running = asyncio.ensure_future(classifier.classify([SHORT], ["guard"]))
        await asyncio.to_thread(gate.started.wait, 5)
        queued = asyncio.ensure_future(classifier.classify([SHORT], ["guard"]))
        while gate.batcher.queued == 0:
            await asyncio.sleep(0.001)
        ((m,),) = await classifier.classify([SHORT], ["guard"], timeout=5.0)
    finally:
        gate.open.set()
    assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, OVERLOADED, "a")
    for done in await asyncio.gather(running, queued):
        assert done[0][0].completeness == FULL
    assert sample(registry, "classifier_partial_answers_total", model="guard", reason=OVERLOADED) == 1


async def test_a_second_stage_with_no_ready_version_answers_partial_unavailable(env) -> None:
    classifier, _, registry = env
    ((m,),) = await classifier.classify([SHORT], ["guard_c"], timeout=5.0)
    assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, UNAVAILABLE, "a")
    assert sample(registry, "classifier_partial_answers_total", model="guard_c", reason=UNAVAILABLE) == 1


async def test_a_first_stage_that_cannot_answer_in_time_is_deadline_exceeded_not_a_verdict(env) -> None:
    classifier, repo, _ = env
    make_slow(repo, "a")
    with pytest.raises(WouldMissDeadline, match="model a would answer in about"):
        await classifier.classify([SHORT], ["guard"], timeout=2.0)


async def test_a_plain_model_that_cannot_answer_in_time_is_deadline_exceeded(env) -> None:
    classifier, repo, _ = env
    make_slow(repo, "b")
    with pytest.raises(DeadlineExceeded) as err:
        await classifier.classify([SHORT], ["b"], timeout=2.0)
    assert err.value.code == "DEADLINE_EXCEEDED"


async def test_a_deadline_shorter_than_the_reply_margin_is_deadline_exceeded(env) -> None:
    classifier, _, _ = env
    with pytest.raises(DeadlineExceeded, match="deadline too short"):
        await classifier.classify([SHORT], ["guard"], timeout=0.005)  # the margin is 10 ms


async def test_a_first_stage_with_no_time_for_every_window_scores_head_and_tail_partial(env) -> None:
    """A burst of long texts ahead: the whole text would miss the deadline in the cheap
    stage, its head and tail still fit, and answer PARTIAL (no time to escalate)."""
    classifier, repo, registry = env
    batcher = repo.serving("a").batcher
    batcher.cost.observe(1000, 1.0)  # 1 ms a token: a text of 64 windows costs ~4 s, two windows ~0.1 s
    batcher.policy = dataclasses.replace(batcher.policy, probe_interval_s=math.inf)
    long_text = "benign words " * 400  # 5,200 characters: ~160 windows of 64
    ((m,),) = await classifier.classify([long_text], ["guard"], timeout=1.0)
    assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, DEADLINE, "a")
    assert m.windows < 10
    assert sample(registry, "classifier_partial_answers_total", model="guard", reason=DEADLINE) == 1
    # A first stage that cannot score even that in time (10 s a token): the refusal stands.
    make_slow(repo, "a")
    with pytest.raises(WouldMissDeadline):
        await classifier.classify([SHORT], ["guard"], timeout=1.0)


async def test_a_tenants_own_backlog_does_not_cost_its_next_texts_a_verdict(env) -> None:
    """Fair queueing puts a tenant behind its own queued rows: after a burst of its long
    texts, its next text (long or short) would miss the deadline behind them. The first
    stage's fallback rows go ahead of that backlog, so it still gets a PARTIAL verdict,
    not DEADLINE_EXCEEDED (once ~20% of a flooding tenant's long prompts at 100 req/s)."""
    classifier, repo, registry = env
    batcher = repo.serving("a").batcher
    batcher.cost.observe(1000, 1.0)  # 1 ms a token: one long text costs ~10 s, two windows ~0.1 s
    batcher.policy = dataclasses.replace(batcher.policy, probe_interval_s=math.inf, max_batch_size=2)
    gate = Gate(repo, "a")
    long_text = "benign words " * 400
    backlog = [asyncio.ensure_future(classifier.classify([long_text], ["a"], tenant="flood")) for _ in range(3)]
    await asyncio.to_thread(gate.started.wait, 5)  # one batch running (held), the rest queued
    late = [
        asyncio.ensure_future(classifier.classify([text], ["guard"], timeout=2.0, tenant="flood"))
        for text in (long_text, SHORT)
    ]
    await asyncio.sleep(0.05)
    gate.open.set()
    ((m_long,),), ((m_short,),) = await asyncio.gather(*late)
    for m in (m_long, m_short):
        assert (m.completeness, m.partial_reason, m.answered_by) == (PARTIAL, DEADLINE, "a")
    assert m_long.windows < 10
    await asyncio.gather(*backlog)
