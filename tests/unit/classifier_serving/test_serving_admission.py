"""The batcher's deadline-aware admission and fair queueing, on a real (tiny) ONNX Runtime
session whose cost is made predictable: each batch also sleeps in proportion to its
padded tokens, as an encoder on a CPU costs.

What it proves: a request predicted to finish after its deadline is refused at once
(before any work) and one that fits is admitted; the cost model learns from measured
batches and can be seeded from warm-up; a row that cannot finish even alone is dropped
before inference; one tenant's flood of long rows does not keep another tenant's short
row out of the next batch; a batch does not grow past a member's deadline; background
rows wait while live rows exist and never make the queue look full to live callers."""

from __future__ import annotations

import asyncio
import math
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry

from services.classifier.batcher import Batcher, BatchPolicy, CostModel
from services.classifier.stats import ClassifierStats
from services.common.errors import DeadlineExceeded, ResourceExhausted, WouldMissDeadline
from tests.unit.classifier_serving.tinymodel import build_sum_model, rows

SECONDS_PER_TOKEN = 0.0005  # a 100-token row costs 50 ms, as a long encoder window does


class CostlyModel:
    """The tiny sum model, plus a sleep proportional to the batch's padded tokens; can be
    held shut (the batch it is running then waits at the gate)."""

    def __init__(self, path: Path, seconds_per_token: float = SECONDS_PER_TOKEN) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.seconds_per_token = seconds_per_token
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
        threading.Event().wait(feeds["x"].size * self.seconds_per_token)
        return self.session.run(["y"], feeds)[0]

    def batch_values(self) -> list[set[int]]:
        """The first value of every row, per batch (tests tag rows by their values)."""
        return [{int(r[0]) for r in b} for b in self.batches]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return build_sum_model(tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture
def model(model_path: Path) -> CostlyModel:
    return CostlyModel(model_path)


def row(tag: int, tokens: int) -> list[int]:
    """A row of ``tokens`` tokens whose first value identifies it."""
    return [tag] + [1] * (tokens - 1)


def make(model: CostlyModel, stats: ClassifierStats | None = None, seed=(), **policy) -> Batcher:
    args = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "capacity": 1000, "probe_interval_s": math.inf} | policy
    b = Batcher("tiny", model.infer, {"x": 0}, BatchPolicy(**args), stats, seed=seed)
    b.start()
    return b


# A cost model that knows 1 ms per padded token and no per-batch cost.
SEED = [(100, 0.1), (200, 0.2)]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_the_cost_model_fits_intercept_and_slope_and_keeps_its_slope_on_one_size() -> None:
    cost = CostModel()
    assert not cost.known
    for tokens in (10, 100, 50, 400, 200, 25):
        cost.observe(tokens, 0.004 + 0.0002 * tokens)
    assert cost.a == pytest.approx(0.004, rel=1e-6) and cost.b == pytest.approx(0.0002, rel=1e-6)
    assert cost.seconds(1000, batches=2) == pytest.approx(0.008 + 0.2)
    for _ in range(50):  # then only one size, a little slower: the slope stays, the intercept moves
        cost.observe(100, 0.030)
    assert cost.b == pytest.approx(0.0002, rel=0.1)
    assert cost.seconds(100) == pytest.approx(0.030, rel=1e-3)


def test_a_first_cost_estimate_without_size_variety_is_proportional_to_tokens() -> None:
    cost = CostModel()
    cost.observe(200, 0.05)
    assert (cost.a, cost.b) == (0.0, pytest.approx(0.05 / 200))


async def test_a_request_predicted_to_miss_its_deadline_is_refused_at_once(model) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry))
    # Nothing measured yet: nothing is refused on prediction.
    assert batcher.predict(100, 1) is None
    for tokens in (20, 100, 60):  # the cost model learns from these batches
        await batcher.submit(*rows(row(1, tokens)))
    assert batcher.cost.known and batcher.cost.b > 0
    ran = len(model.batches)
    with pytest.raises(WouldMissDeadline) as err:
        batcher.submit(*rows(row(2, 200), row(3, 200)), timeout=0.02)  # ~200 ms of work, 20 ms left
    assert isinstance(err.value, DeadlineExceeded) and err.value.code == "DEADLINE_EXCEEDED"
    assert "would answer in about" in err.value.message and "the deadline is in 20.0 ms" in err.value.message
    assert len(model.batches) == ran, "a refused request is never computed"
    assert batcher.queued == 0
    assert sample(registry, "classifier_requests_rejected_total", model="tiny", reason="deadline") == 1
    # One that fits is admitted and answered, and how far the prediction was off is measured.
    out = await batcher.submit(*rows(row(4, 5)), timeout=5.0)
    assert out[0][0] == 4 + 4
    assert sample(registry, "classifier_admission_prediction_error_seconds_count", model="tiny") >= 1
    assert sample(registry, "classifier_cost_model_seconds", model="tiny", term="per_token") > 0
    await batcher.close()


async def test_the_learned_cost_grows_with_tokens_as_the_model_does(model) -> None:
    batcher = make(model)
    for tokens in (10, 80, 40, 120, 20, 100):
        await batcher.submit(*rows(row(1, tokens)))
    short, long_ = batcher.predict(10, 1), batcher.predict(1000, 1)
    assert short is not None and long_ is not None
    assert long_ > 5 * short, "ten times the tokens must cost several times more"
    await batcher.close()


async def test_a_warm_up_seed_lets_admission_refuse_before_any_batch_ran(model) -> None:
    batcher = make(model, seed=SEED)
    with pytest.raises(WouldMissDeadline, match=r"would answer in about 100\.0 ms but the deadline is in 10\.0 ms"):
        batcher.submit(*rows(row(1, 100)), timeout=0.01)
    assert model.batches == []
    await batcher.close()


async def backlogged(model: CostlyModel) -> tuple[Batcher, asyncio.Future, asyncio.Future]:
    """A batcher running one held batch, with ~800 ms of tenant a's rows queued behind it:
    a 100-token row of tenant a (~100 ms alone, ~900 ms behind that) is refused."""
    batcher = make(model, seed=SEED)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 10)))
    await asyncio.to_thread(model.started.wait, 5)
    backlog = batcher.submit(*rows(*(row(10 + k, 100) for k in range(8))), tenant="a")
    with pytest.raises(WouldMissDeadline):
        batcher.submit(*rows(row(2, 100)), timeout=0.5, tenant="a")
    return batcher, running, backlog


async def test_queued_work_ahead_counts_but_only_the_fair_share_of_other_tenants(model) -> None:
    batcher, running, backlog = await backlogged(model)
    # Tenant b's short row only waits for a's share of the next rounds: admitted.
    fair = batcher.submit(*rows(row(3, 10)), timeout=0.5, tenant="b")
    model.gate.set()
    await asyncio.gather(running, backlog, fair)
    assert 3 in model.batch_values()[1], "tenant b's row runs in the very next batch"
    await batcher.close()


async def test_an_urgent_request_waits_only_for_itself_in_its_tenants_queue(model) -> None:
    """A cascade's fallback (a few rows standing for a text refused in full) is queued
    ahead of its own tenant's backlog: admitted where the same rows at the back are
    refused, and run in the very next batch; other tenants' shares are unchanged."""
    batcher, running, backlog = await backlogged(model)
    other = batcher.submit(*rows(*(row(30 + k, 100) for k in range(2))), tenant="b")
    # Ahead of it: a's own urgent row only, and b's share up to that many tokens (~200 ms).
    assert batcher.predict(100, 1, "a", urgent=True) == pytest.approx(0.21, abs=0.02)
    urgent = batcher.submit(*rows(row(2, 100)), timeout=0.5, tenant="a", urgent=True)
    model.gate.set()
    await asyncio.gather(running, backlog, other, urgent)
    a_rows = [v for b in model.batch_values() for v in sorted(b) if v < 30]
    assert a_rows[:2] == [1, 2], f"the urgent row runs before tenant a's backlog: {model.batch_values()}"
    assert sorted(a_rows[2:]) == a_rows[2:], "the backlog keeps its order behind it"
    await batcher.close()


async def test_a_flood_of_long_rows_from_one_tenant_does_not_take_every_slot(model) -> None:
    batcher = make(model)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 10)))
    await asyncio.to_thread(model.started.wait, 5)
    flood = [batcher.submit(*rows(*(row(100 + 4 * r + k, 100) for k in range(4))), tenant="a") for r in range(5)]
    short = batcher.submit(*rows(row(7, 5)), tenant="b")
    model.gate.set()
    await asyncio.gather(running, short, *flood)
    batches = model.batch_values()
    assert 7 in batches[1], f"tenant b's short row must run in the next batch, ran in {batches}"
    assert sum(len(b) for b in batches) == 1 + 20 + 1
    # Within tenant a, the oldest row always leads: a's rows run in its own order.
    a_rows = [v for b in batches for v in sorted(b) if v >= 100]
    assert a_rows == sorted(a_rows)
    await batcher.close()


async def test_tenants_share_tokens_not_rows(model) -> None:
    """Tenant a's rows are 8 times longer than tenant b's: per round a gets one long
    row and b gets about eight short ones, so both get through about the same tokens."""
    model.seconds_per_token = 0.0
    batcher = make(model, max_batch_size=9)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 80)))
    await asyncio.to_thread(model.started.wait, 5)
    a = batcher.submit(*rows(*(row(200 + k, 80) for k in range(20))), tenant="a")
    b = batcher.submit(*rows(*(row(500 + k, 10) for k in range(40))), tenant="b")
    model.gate.set()
    await asyncio.gather(running, a, b)
    second = model.batch_values()[1]
    a_rows, b_rows = sum(1 for v in second if 200 <= v < 500), sum(1 for v in second if v >= 500)
    assert a_rows == 1 and b_rows == 8, f"expected one long and eight short rows, got {a_rows} and {b_rows}"
    await batcher.close()


async def test_a_batch_does_not_grow_past_a_members_deadline(model) -> None:
    batcher = make(model, seed=SEED)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 1)))
    await asyncio.to_thread(model.started.wait, 5)
    slow = batcher.submit(*rows(*(row(10 + k, 100) for k in range(4))), tenant="a")  # no deadline
    urgent = batcher.submit(*rows(row(7, 5)), timeout=0.15, tenant="b")  # fits alone, not beside a 100-token row
    model.gate.set()
    out = await urgent
    assert out[0][0] == 7 + 4
    assert model.batch_values()[1] == {7}, "the urgent row runs alone rather than padded to a long row"
    await asyncio.gather(running, slow)
    await batcher.close()


async def test_a_row_that_cannot_finish_even_alone_is_dropped_before_inference(model) -> None:
    registry = CollectorRegistry()
    batcher = make(model, ClassifierStats(registry), seed=SEED)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 1)))
    await asyncio.to_thread(model.started.wait, 5)
    doomed = batcher.submit(*rows(row(9, 400)), timeout=1.0)  # ~400 ms of work, admitted with 1 s left
    await asyncio.sleep(0.7)  # the running batch overruns: less than 400 ms will be left
    model.gate.set()
    await running
    with pytest.raises(WouldMissDeadline, match="dropped before inference"):
        await doomed
    assert all(9 not in b for b in model.batch_values())
    assert sample(registry, "classifier_rows_dropped_total", model="tiny", reason="deadline") == 1
    await batcher.close()


async def test_background_rows_wait_while_live_rows_exist(model) -> None:
    batcher = make(model)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 5)))
    await asyncio.to_thread(model.started.wait, 5)
    retro = batcher.submit(*rows(row(9, 5)), tenant="a", background=True)  # queued first
    live = [batcher.submit(*rows(row(20 + k, 5)), tenant=f"t{k % 3}") for k in range(6)]
    model.gate.set()
    await asyncio.gather(running, retro, *live)
    batches = model.batch_values()
    assert batches[-1] == {9}, f"the background row runs after every live row, alone: {batches}"
    assert all(9 not in b for b in batches[:-1])
    await batcher.close()


async def test_background_work_is_never_admitted_ahead_of_live_work(model) -> None:
    batcher = make(model, seed=SEED, capacity=4)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 1)))
    await asyncio.to_thread(model.started.wait, 5)
    live = batcher.submit(*rows(*(row(10 + k, 100) for k in range(3))), tenant="a")  # ~300 ms queued
    # The same work a live caller of another tenant would be admitted for (~100 ms ahead
    # under fairness) is refused as background: it would run after all live work.
    with pytest.raises(WouldMissDeadline):
        batcher.submit(*rows(row(2, 100)), timeout=0.35, tenant="b", background=True)
    assert batcher.predict(100, 1, "b") < 0.35
    # Background rows only take free room; they never make the queue full for live callers.
    model.gate.set()
    await asyncio.gather(running, live)
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 1)))
    await asyncio.to_thread(model.started.wait, 5)
    retro = batcher.submit(*rows(*(row(30 + k, 2) for k in range(3))), background=True)
    with pytest.raises(ResourceExhausted):
        batcher.submit(*rows(row(40, 2), row(41, 2)), background=True)
    admitted = batcher.submit(*rows(*(row(50 + k, 2) for k in range(3))), tenant="c")
    model.gate.set()
    await asyncio.gather(running, retro, admitted)
    await batcher.close()


async def test_an_idle_model_probes_a_refused_request_so_a_pessimistic_cost_model_recovers(model) -> None:
    """Refused work is never measured: a cost model made too pessimistic (a warm-up timed
    on a busy machine) must not keep refusing every tight-deadline caller for ever."""
    model.seconds_per_token = 0.0
    batcher = make(model, seed=[(10, 1.0), (20, 2.0)], probe_interval_s=0.0)  # believes 100 ms a token
    assert batcher.predict(10, 1) == pytest.approx(1.0)
    out = await batcher.submit(*rows(row(3, 10)), timeout=0.5)  # predicted 1 s: admitted as a probe
    assert out[0][0] == 3 + 9 and batcher.probes == 1
    assert batcher.predict(10, 1) < 1.0, "the probe's measurement moved the model"
    # A busy model does not probe: the refusal stands.
    model.gate.clear()
    running = batcher.submit(*rows(row(1, 1)))
    await asyncio.to_thread(model.started.wait, 5)
    batcher.cost.observe(10, 100.0)
    with pytest.raises(WouldMissDeadline):
        batcher.submit(*rows(row(4, 10)), timeout=0.5)
    model.gate.set()
    await running
    await batcher.close()


async def test_a_retro_screening_backlog_does_not_stop_live_probes(model_path) -> None:
    """After a burst of long prompts their background re-screens queue for seconds. They
    run on their own thread, so the live side is idle: a cost model made pessimistic by
    the burst must still be probed and corrected, not refuse every short live text until
    the backlog drains (seen as a flake: short harmful prompts FLAGged, not BLOCKed, right
    after a burst)."""
    live = CostlyModel(model_path, seconds_per_token=0.0)
    slow = CostlyModel(model_path, seconds_per_token=0.0)
    slow.gate.clear()  # the background batch holds its thread: the backlog stays queued
    b = Batcher(
        "tiny",
        live.infer,
        {"x": 0},
        BatchPolicy(max_batch_size=1, max_queue_delay_s=0.0, capacity=1000, probe_interval_s=0.0),
        seed=[(10, 1.0), (20, 2.0)],  # believes 100 ms a token
        background_infer=slow.infer,
    )
    b.start()
    try:
        backlog = [b.submit(*rows(row(1, 50)), timeout=30, tenant="retro", background=True) for _ in range(4)]
        assert await asyncio.to_thread(slow.started.wait, 5)
        assert b.queued >= 3  # background rows still wait behind the running one
        out = await asyncio.wait_for(b.submit(*rows(row(2, 10)), timeout=0.5, tenant="victim"), 5)
        assert out[0][0] == 2 + 9 and b.probes == 1
        assert b.predict(10, 1) < 1.0, "the probe's measurement moved the model"
        slow.gate.set()
        await asyncio.wait_for(asyncio.gather(*backlog), 5)
    finally:
        slow.gate.set()
        await b.close()


async def test_a_live_row_never_waits_behind_a_background_batch_on_its_own_low_priority_thread(model_path) -> None:
    """Retro-screening's long batches run beside live ones, on a thread at nice 19: a live
    row that arrives while one runs is answered without waiting for it (a 500 ms
    background batch here; the live row's deadline is 200 ms)."""
    live = CostlyModel(model_path, seconds_per_token=0.0)
    slow = CostlyModel(model_path, seconds_per_token=0.0)
    slow.gate.clear()  # the background batch holds its thread until released
    niceness: list[int] = []

    def background_infer(feeds):
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return slow.infer(feeds)

    b = Batcher(
        "tiny",
        live.infer,
        {"x": 0},
        BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, capacity=1000, probe_interval_s=math.inf),
        seed=SEED,
        background_infer=background_infer,
    )
    b.start()
    try:
        bg = b.submit(*rows(row(1, 50)), timeout=30, tenant="retro", background=True)
        assert await asyncio.to_thread(slow.started.wait, 5)
        out = await asyncio.wait_for(b.submit(*rows(row(2, 5)), timeout=0.2, tenant="acme"), 5)
        assert len(out) == 1 and not bg.done()  # answered while the background batch still runs
        slow.gate.set()
        assert len(await asyncio.wait_for(bg, 5)) == 1
    finally:
        await b.close()
    assert live.batch_values() == [{2}] and slow.batch_values() == [{1}]
    assert niceness and niceness[0] == 19
