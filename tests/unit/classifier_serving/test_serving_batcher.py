"""The dynamic batcher on a real (tiny) ONNX Runtime session: batches form under
concurrent load, every caller gets exactly its own rows back, rows are grouped by length,
expired or abandoned rows are dropped before inference, a full queue refuses at the door,
and the Triton/TEI-style metrics tell the story."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry

from services.classifier.batcher import Batcher, BatchPolicy, InferenceFailed
from services.classifier.stats import ClassifierStats
from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tests.unit.classifier_serving.tinymodel import build_sum_model, rows


class RecordingModel:
    """The tiny model behind a recorder of every batch it ran; can be held shut."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        with self._lock:
            self.batches.append(feeds["x"].copy())
        if (feeds["x"] == 666).any():
            raise RuntimeError("poisoned row")
        return self.session.run(["y"], feeds)[0]

    @property
    def rows_run(self) -> int:
        return sum(b.shape[0] for b in self.batches)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return build_sum_model(tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture
def model(model_path: Path) -> RecordingModel:
    return RecordingModel(model_path)


def expected(*lists: list[int]) -> np.ndarray:
    return np.array([[sum(r), sum(1 for v in r if v)] for r in lists], dtype=np.float32)


def make(model: RecordingModel, stats: ClassifierStats | None = None, **policy) -> Batcher:
    args = {"max_batch_size": 8, "max_queue_delay_s": 0.002, "capacity": 1000} | policy
    b = Batcher("tiny", model.infer, {"x": 0}, BatchPolicy(**args), stats)
    b.start()
    return b


def sample(value: str, stats_registry: CollectorRegistry, labels: dict[str, str]) -> float:
    return stats_registry.get_sample_value(value, labels) or 0.0


async def test_concurrent_callers_each_get_exactly_their_own_rows(model: RecordingModel) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry), max_batch_size=16)
    rng = np.random.default_rng(7)
    requests = []
    for _ in range(60):
        n = int(rng.integers(1, 5))
        requests.append([list(rng.integers(1, 600, size=int(rng.integers(1, 40)))) for _ in range(n)])

    async def call(req):
        await asyncio.sleep(float(rng.random()) * 0.005)
        arrays, lengths = rows(*req)
        return await batcher.submit(arrays, lengths)

    results = await asyncio.gather(*(call(r) for r in requests))
    for req, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, expected(*req))
    total_rows = sum(len(r) for r in requests)
    assert model.rows_run == total_rows
    assert len(model.batches) < len(requests), "concurrent requests should share batches"
    assert max(b.shape[0] for b in model.batches) <= 16
    assert max(b.shape[0] for b in model.batches) > 1
    assert sample("classifier_batch_size_sum", registry, {"model": "tiny"}) == total_rows
    assert sample("classifier_batch_size_count", registry, {"model": "tiny"}) == len(model.batches)
    assert sample("classifier_queue_depth", registry, {"model": "tiny"}) == 0
    assert sample("classifier_queue_duration_seconds_count", registry, {"model": "tiny"}) >= len(requests)
    await batcher.close()


async def test_lone_row_waits_at_most_the_queue_delay_and_a_full_batch_goes_at_once(model) -> None:
    batcher = make(model, max_batch_size=4, max_queue_delay_s=0.2)
    start = time.monotonic()
    out = await batcher.submit(*rows([1, 2]))
    waited = time.monotonic() - start
    assert 0.15 <= waited < 2.0
    np.testing.assert_array_equal(out, expected([1, 2]))
    start = time.monotonic()
    await batcher.submit(*rows([1], [2], [3], [4]))
    assert time.monotonic() - start < 0.15, "a full batch must not wait for the delay"
    await batcher.close()


async def test_rows_of_one_request_span_several_batches_and_come_back_in_order(model) -> None:
    batcher = make(model, max_batch_size=4)
    req = [[i, i + 1] for i in range(1, 11)]
    out = await batcher.submit(*rows(*req))
    np.testing.assert_array_equal(out, expected(*req))
    assert [b.shape[0] for b in model.batches] == [4, 4, 2]
    await batcher.close()


async def test_rows_are_grouped_by_length_so_batches_carry_little_padding(model_path) -> None:
    async def widths(lookahead: int) -> tuple[list[int], int]:
        m = RecordingModel(model_path)
        batcher = make(m, max_batch_size=4, lookahead=lookahead)
        short, long_ = [1] * 2, [1] * 100
        # Queued in one go (no await between submits), alternating short and long rows.
        futures = [batcher.submit(*rows(short if i % 2 == 0 else long_)) for i in range(16)]
        await asyncio.gather(*futures)
        await batcher.close()
        padding = sum(int(b.size - np.count_nonzero(b)) for b in m.batches)
        return [b.shape[1] for b in m.batches], padding

    grouped, grouped_padding = await widths(lookahead=4)
    fifo, fifo_padding = await widths(lookahead=1)
    assert sorted(grouped) == [2, 2, 100, 100]
    assert grouped_padding == 0
    assert fifo == [100, 100, 100, 100] and fifo_padding == 8 * 98


async def test_expired_deadline_is_dropped_before_inference_not_run(model) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry), max_batch_size=2, max_queue_delay_s=0.0)
    model.gate.clear()  # hold the first batch inside ONNX Runtime
    first = batcher.submit(*rows([1], [2]))
    await asyncio.to_thread(model.started.wait, 5)
    late = batcher.submit(*rows([7, 7, 7], [8]), timeout=0.05)
    await asyncio.sleep(0.15)  # its deadline passes while it waits behind the busy model
    model.gate.set()
    np.testing.assert_array_equal(await first, expected([1], [2]))
    with pytest.raises(DeadlineExceeded, match="deadline passed while queued"):
        await late
    assert model.rows_run == 2, "the expired request's rows must never reach the model"
    assert batcher.rows_dropped == 2
    assert sample("classifier_rows_dropped_total", registry, {"model": "tiny", "reason": "deadline"}) == 2
    await batcher.close()


async def test_a_caller_that_goes_away_has_its_rows_dropped(model) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry), max_batch_size=2, max_queue_delay_s=0.0)
    model.gate.clear()
    first = batcher.submit(*rows([1]))
    await asyncio.to_thread(model.started.wait, 5)
    gone = batcher.submit(*rows([5], [6], [7]))
    assert batcher.queued == 3
    gone.cancel()  # what a cancelled gRPC call does to the handler awaiting it
    await asyncio.sleep(0)
    assert batcher.queued == 0
    model.gate.set()
    await first
    assert model.rows_run == 1
    assert sample("classifier_rows_dropped_total", registry, {"model": "tiny", "reason": "cancelled"}) == 3
    await batcher.close()


async def test_full_queue_refuses_at_the_door_with_resource_exhausted(model) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry), max_batch_size=2, max_queue_delay_s=0.0, capacity=4)
    model.gate.clear()
    running = batcher.submit(*rows([1], [2]))
    await asyncio.to_thread(model.started.wait, 5)
    waiting = batcher.submit(*rows([3], [4], [5]))  # 3 of 4 places taken
    with pytest.raises(ResourceExhausted, match=r"model tiny queue is full \(3 rows waiting, capacity 4\)"):
        batcher.submit(*rows([6], [7]))
    assert sample("classifier_requests_rejected_total", registry, {"model": "tiny", "reason": "queue_full"}) == 1
    model.gate.set()
    await asyncio.gather(running, waiting)
    # An empty queue admits even a request larger than the capacity: it can always run alone.
    big = [[i] for i in range(1, 11)]
    np.testing.assert_array_equal(await batcher.submit(*rows(*big)), expected(*big))
    await batcher.close()


async def test_a_failing_batch_fails_its_callers_and_the_loop_carries_on(model) -> None:
    batcher = make(model, max_batch_size=1)
    with pytest.raises(InferenceFailed, match="inference failed in model tiny"):
        await batcher.submit(*rows([666]))
    np.testing.assert_array_equal(await batcher.submit(*rows([4])), expected([4]))
    await batcher.close()


async def test_close_finishes_queued_rows_then_refuses_new_ones(model) -> None:
    batcher = make(model, max_batch_size=2, max_queue_delay_s=0.05)
    pending = [batcher.submit(*rows([i])) for i in range(1, 6)]
    await batcher.close()
    for i, fut in enumerate(pending, start=1):
        np.testing.assert_array_equal(fut.result(), expected([i]))
    with pytest.raises(Unavailable, match="unloading"):
        batcher.submit(*rows([1]))


async def test_callers_cancelled_while_their_batch_runs_never_stop_the_loop(model) -> None:
    """A caller that goes away (deadline, cancel) just as its batch's answer arrives: the
    future is already cancelled when the loop hands back the rows. That must not crash
    the loop (it once did: every later call of the model failed)."""
    batcher = make(model, max_batch_size=4, max_queue_delay_s=0.0)
    loop = asyncio.get_running_loop()
    for round_ in range(60):
        futures = [batcher.submit(*rows([round_ + k])) for k in range(8)]
        await asyncio.to_thread(model.started.wait, 5)
        # Cancel from the loop at staggered moments around the answer's arrival.
        for k, f in enumerate(futures):
            loop.call_later(k * 0.00005, f.cancel)
        await asyncio.gather(*futures, return_exceptions=True)
    assert batcher.alive
    got = await batcher.submit(*rows([1, 2]))
    np.testing.assert_array_equal(got, expected([1, 2]))
    await batcher.close()
