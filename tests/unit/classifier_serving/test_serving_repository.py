"""The model repository in-process, on real ONNX Runtime sessions of a tiny model: version
policies, the atomic swap that lets the old version finish what it holds, failed loads
that leave everything else serving, per-model health, and cascade readiness."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.classifier.repository import FAILED, READY, UNLOADED, ModelRepository
from services.classifier.runtime import RuntimeOptions
from services.classifier.stats import ClassifierStats
from services.common.errors import NotFound, Unavailable
from tests.unit.classifier_serving.tinymodel import MANIFEST, write_model


class Health:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    async def __call__(self, name: str, serving: bool) -> None:
        self.events.append((name, serving))


async def started(root: Path, health: Health | None = None) -> ModelRepository:
    repo = ModelRepository(root, RuntimeOptions(), ClassifierStats(CollectorRegistry()), poll_seconds=0, health=health)
    await repo.start()
    return repo


async def rescan(repo: ModelRepository) -> None:
    """Two scans: a changed version loads only once its files look the same twice."""
    await repo.reconcile()
    await repo.reconcile()
    await repo.settle()


def versions(repo: ModelRepository, name: str) -> dict[int, tuple[str, str]]:
    status = {m.name: m for m in repo.status()}[name]
    return {v.version: (v.state, v.error) for v in status.versions}


async def infer(lv, text: str = "hello") -> np.ndarray:
    w = lv.featurizer.windows([text])
    return await lv.batcher.submit(w.arrays, lv.featurizer.lengths(w))


async def test_new_version_swaps_in_and_the_old_one_finishes_what_it_holds(tmp_path: Path) -> None:
    d = write_model(tmp_path)
    repo = await started(tmp_path)
    held = repo.acquire("tiny")  # a request in flight on version 1
    assert held.version == 1
    shutil.copytree(d / "1", d / "2")
    await rescan(repo)
    assert repo.serving("tiny").version == 2
    assert versions(repo, "tiny") == {1: (UNLOADED, ""), 2: (READY, "")}
    # The request that held version 1 still gets answered by it...
    assert (await infer(held)).shape == (1, 2)
    held.release()
    await repo.settle(unloads=True)
    # ...and only then is version 1 unloaded.
    with pytest.raises(Unavailable, match="unloading"):
        await infer(held)
    with repo.acquire("tiny") as lv:
        assert lv.version == 2
    await repo.stop()


async def test_a_specific_version_policy_pins_and_latest_n_serves_several(tmp_path: Path) -> None:
    write_model(tmp_path, "pinned", versions=(1, 2), version_policy={"specific": [1]})
    write_model(tmp_path, "two", versions=(1, 2, 3), version_policy={"latest": 2})
    repo = await started(tmp_path)
    assert versions(repo, "pinned") == {1: (READY, ""), 2: (UNLOADED, "")}
    assert repo.serving("pinned").version == 1
    assert versions(repo, "two") == {1: (UNLOADED, ""), 2: (READY, ""), 3: (READY, "")}
    with repo.acquire("two", 2) as lv:
        assert lv.version == 2
    with pytest.raises(NotFound, match=r"model 'two' version 1 is not loaded; loaded versions: \[2, 3\]"):
        repo.acquire("two", 1)
    await repo.stop()


async def test_a_broken_new_version_fails_alone_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    d = write_model(tmp_path)
    write_model(tmp_path, "other")
    repo = await started(tmp_path)
    (d / "2").mkdir()
    (d / "2" / "model.onnx").write_bytes(b"\x00garbage, not a protobuf\xff" * 100)
    await rescan(repo)
    state = versions(repo, "tiny")
    assert state[1] == (READY, "")
    assert state[2][0] == FAILED and state[2][1].startswith("cannot load 2/model.onnx: ")
    assert repo.serving("tiny").version == 1
    assert repo.serving("other").version == 1
    await repo.stop()


async def test_a_broken_manifest_reports_why_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    d = write_model(tmp_path)
    repo = await started(tmp_path)
    (d / "manifest.yaml").write_text(yaml.safe_dump({**MANIFEST, "thresholds": {"nope": 0.5}}))
    await rescan(repo)
    state, error = versions(repo, "tiny")[1]
    assert state == FAILED
    assert error.startswith("tiny/manifest.yaml: thresholds: 'nope' is not one of the labels")
    assert repo.serving("tiny").version == 1  # last good keeps answering
    await repo.stop()


async def test_a_model_that_never_loaded_is_failed_with_its_reason_and_unavailable(tmp_path: Path) -> None:
    d = tmp_path / "junk"
    (d / "1").mkdir(parents=True)
    (d / "manifest.yaml").write_text(yaml.safe_dump(MANIFEST | {"name": "junk"}))
    (d / "1" / "model.onnx").write_bytes(b"not onnx")
    write_model(tmp_path)
    health = Health()
    repo = await started(tmp_path, health)
    assert versions(repo, "junk")[1][0] == FAILED
    with pytest.raises(Unavailable, match=r"model 'junk' has no ready version \(1: FAILED cannot load"):
        repo.acquire("junk")
    assert ("tiny", True) in health.events and ("junk", False) in health.events
    with pytest.raises(NotFound, match="unknown model 'nope'; available models: junk, tiny"):
        repo.acquire("nope")
    await repo.stop()


async def test_cascade_is_ready_only_when_both_stages_serve(tmp_path: Path) -> None:
    write_model(tmp_path, "first")
    casc = tmp_path / "casc"
    casc.mkdir()
    (casc / "manifest.yaml").write_text(
        yaml.safe_dump({"name": "casc", "platform": "cascade", "stages": ["first", "second"], "band": [0.2, 0.8]})
    )
    health = Health()
    repo = await started(tmp_path, health)
    state, error = versions(repo, "casc")[0]
    assert state == FAILED and error == "stage 'second' is not in the repository"
    assert not repo.is_serving("casc")
    write_model(tmp_path, "second")
    await rescan(repo)
    assert versions(repo, "casc")[0] == (READY, "")
    assert health.events.index(("casc", False)) < health.events.index(("casc", True))
    await repo.stop()


async def test_a_removed_model_is_unloaded_and_reported_not_serving(tmp_path: Path) -> None:
    d = write_model(tmp_path)
    health = Health()
    repo = await started(tmp_path, health)
    shutil.rmtree(d)
    await rescan(repo)
    assert repo.names() == []
    assert health.events[-1] == ("tiny", False)
    await repo.stop()


async def test_a_cascades_first_stage_runs_on_its_own_intra_op_thread_count(tmp_path: Path) -> None:
    """The cheap tier gets one ONNX Runtime thread (encoder batches cannot stall it on a
    small CPU); every other model keeps the process-wide setting; the warm-up timed both
    a short and a full-length window to seed the batcher's cost model."""
    write_model(tmp_path, "cheap")
    write_model(tmp_path, "encoder")
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "manifest.yaml").write_text(
        yaml.safe_dump({"name": "guard", "platform": "cascade", "stages": ["cheap", "encoder"], "band": [0, 1]})
    )
    repo = ModelRepository(
        tmp_path,
        RuntimeOptions(intra_op_threads=2),
        ClassifierStats(CollectorRegistry()),
        poll_seconds=0,
        first_stage_intra_op_threads=1,
    )
    await repo.start()
    threads = {
        name: repo.serving(name).model.session.get_session_options().intra_op_num_threads
        for name in ("cheap", "encoder")
    }
    assert threads == {"cheap": 1, "encoder": 2}
    timings = repo.serving("encoder").model.warmup_timings
    assert len(timings) == 3  # batch sizes 1 and 4, then one full-length row
    assert timings[-1][0] == MANIFEST["inputs"]["max_sequence_length"]
    assert repo.serving("encoder").batcher.cost.known
    await repo.stop()
