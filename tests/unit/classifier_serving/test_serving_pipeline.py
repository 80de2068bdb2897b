"""The protocol-free data plane in-process on tiny real ONNX models: validation messages,
windows and max-over-windows, thresholds to flags, cascade routing by band, and a cascade
whose stage is missing answering UNAVAILABLE instead of half an answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.classifier.pipeline import Classifier, Limits
from services.classifier.repository import ModelRepository
from services.classifier.runtime import RuntimeOptions
from services.classifier.stats import ClassifierStats
from services.common.errors import InvalidArgument, NotFound, Unavailable
from tests.unit.classifier_serving.tinymodel import write_model


def cascade(root: Path, name: str, stages: list[str], band: list[float], **extra) -> None:
    (root / name).mkdir()
    (root / name / "manifest.yaml").write_text(
        yaml.safe_dump({"name": name, "platform": "cascade", "stages": stages, "band": band, **extra})
    )


SEGMENTS = {"min_chars": 4, "min_words": 1, "top_k": 1}


@pytest.fixture
async def classifier(tmp_path: Path):
    write_model(tmp_path, "a", thresholds={"jailbreak": 0.0001})
    write_model(tmp_path, "b", versions=(1, 2))
    cascade(tmp_path, "all_escalate", ["a", "b"], [0.0, 1.0])
    cascade(tmp_path, "none_escalate", ["a", "b"], [0.99, 1.0])
    cascade(tmp_path, "broken_cascade", ["a", "missing"], [0.0, 1.0])
    cascade(tmp_path, "seg_first", ["a", "b"], [0.99, 1.0], segments=SEGMENTS)
    cascade(tmp_path, "seg_escalate", ["a", "b"], [0.0, 1.0], segments=SEGMENTS)
    registry = CollectorRegistry()
    stats = ClassifierStats(registry)
    repo = ModelRepository(tmp_path, RuntimeOptions(), stats, poll_seconds=0)
    await repo.start()
    c = Classifier(repo, stats, "a", Limits(max_text_bytes=100, max_batch_texts=3, max_models=2))
    yield c
    await c.stop()
    await repo.stop()


@pytest.mark.parametrize(
    ("texts", "models", "error", "message"),
    [
        ([], [], InvalidArgument, "texts is empty: send at least one text to classify"),
        (["a"] * 4, [], InvalidArgument, "4 texts in one request; the limit is 3 (--max-batch-texts)"),
        (["ok", "€" * 34], [], InvalidArgument, "texts[1] is 102 bytes; the limit is 100 bytes (--max-text-bytes)"),
        (["a"], ["a", "b", "a"], InvalidArgument, "3 models in one request; the limit is 2 (--max-models-per-request)"),
        (["a"], ["zzz"], NotFound, "unknown model 'zzz'; available models: a, all_escalate, b, broken_cascade"),
        (["a"], ["all_escalate:2"], InvalidArgument, "model 'all_escalate:2': 'all_escalate' is a cascade"),
    ],
)
async def test_invalid_requests_are_refused_with_a_clear_message(classifier, texts, models, error, message) -> None:
    with pytest.raises(error) as err:
        await classifier.classify(texts, models)
    assert err.value.message.startswith(message), err.value.message


async def test_scores_windows_thresholds_and_the_default_model(classifier) -> None:
    (short,), (long_,) = await classifier.classify(["hi"], []), await classifier.classify(["x" * 100], ["b:2"])
    assert short[0].model == "a" and short[0].version == 1 and short[0].windows == 1
    assert [s.label for s in short[0].scores] == ["benign", "jailbreak"]
    assert short[0].flagged == ["jailbreak"]  # a's jailbreak threshold is tiny
    assert long_[0].model == "b" and long_[0].version == 2
    assert long_[0].windows == 3  # 100 characters, windows of 64 with stride 32
    assert long_[0].flagged == []


async def test_a_cascade_routes_by_band_and_says_which_stage_answered(classifier) -> None:
    (esc,), (kept,) = (
        await classifier.classify(["hello"], ["all_escalate"]),
        await classifier.classify(["hello"], ["none_escalate"]),
    )
    assert esc[0].model == "all_escalate" and esc[0].answered_by == "b" and esc[0].version == 2
    assert kept[0].model == "none_escalate" and kept[0].answered_by == "a" and kept[0].version == 1
    assert kept[0].flagged == ["jailbreak"] and esc[0].flagged == []  # each stage's own thresholds


async def test_a_cascade_with_a_missing_stage_is_unavailable(classifier) -> None:
    with pytest.raises(Unavailable, match=r"model 'broken_cascade' is not ready \(FAILED: stage 'missing' is not in"):
        await classifier.classify(["hello"], ["broken_cascade"])


def _by_label(result) -> dict[str, float]:
    return {s.label: s.score for s in result.scores}


async def test_a_segmenting_cascade_scores_each_text_as_its_worst_window_or_segment(classifier) -> None:
    text = "zz zz zz. aa aa aa"  # two sentences: two segments
    parts = ["zz zz zz.", "aa aa aa"]
    (whole,), (seg_first,) = await classifier.classify([text], ["a"]), await classifier.classify([text], ["seg_first"])
    alone = [(await classifier.classify([p], ["a"]))[0][0] for p in parts]
    got = _by_label(seg_first[0])
    assert seg_first[0].answered_by == "a"
    assert seg_first[0].windows == whole[0].windows + 2  # the text's window, and one row per segment
    candidates = [_by_label(r) for r in (whole[0], *alone)]
    assert got["jailbreak"] == pytest.approx(max(c["jailbreak"] for c in candidates))
    assert got["benign"] == pytest.approx(min(c["benign"] for c in candidates))


async def test_an_escalated_text_gets_its_windows_and_top_k_segments_scored_by_the_second_stage(classifier) -> None:
    text = "zz zz zz. aa aa aa"
    (esc,), (plain,) = await classifier.classify([text], ["seg_escalate"]), await classifier.classify([text], ["b"])
    assert esc[0].answered_by == "b"
    assert esc[0].windows == plain[0].windows + 1  # top_k = 1 segment, one row
    assert _by_label(esc[0])["jailbreak"] >= _by_label(plain[0])["jailbreak"]


async def test_a_text_of_one_segment_costs_no_extra_row(classifier) -> None:
    (seg,), (plain,) = (
        await classifier.classify(["hello there"], ["seg_first"]),
        await classifier.classify(["hello there"], ["a"]),
    )
    assert seg[0].windows == plain[0].windows
    assert _by_label(seg[0]) == pytest.approx(_by_label(plain[0]))
