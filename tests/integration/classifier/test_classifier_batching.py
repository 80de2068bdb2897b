"""Dynamic batching seen from outside the process: concurrent callers share batches and
each gets exactly its own scores; a request that cannot finish before its deadline is
refused (or dropped), not run; a full queue answers RESOURCE_EXHAUSTED at once."""

from __future__ import annotations

import time

import grpc
import pytest
from safeguards.v1 import classifier_pb2

from tests.integration.classifier.conftest import MINILM, NGRAM, Client, make_repository

# One full 256-token encoder window per text (254 word pieces + [CLS] + [SEP]).
FULL_WINDOW = "hello " * 254


def batches(client: Client, model: str) -> tuple[float, float, float]:
    """(batches run, rows run, batches of exactly one row) so far."""
    return (
        client.metric("classifier_batch_size_count", model=model),
        client.metric("classifier_batch_size_sum", model=model),
        client.metric("classifier_batch_size_bucket", model=model, le="1.0"),
    )


@pytest.mark.parametrize(("model", "n"), [(NGRAM, 64), (MINILM, 12)])
def test_concurrent_callers_share_batches_and_each_gets_its_own_scores(client: Client, model: str, n: int) -> None:
    texts = [f"Request {i}: " + ("please review my essay about rivers. " * (1 + i % 7)) for i in range(n)]
    singles = [client.scores(t, model) for t in texts]
    count0, rows0, ones0 = batches(client, model)
    futures = [client.stub.Classify.future(_request(t, model), timeout=60) for t in texts]
    answers = [f.result() for f in futures]
    for text, single, answer in zip(texts, singles, answers, strict=True):
        got = {s.label: s.score for s in answer.results[0].models[0].scores}
        assert got == pytest.approx(single, abs=1e-5), text[:12]
    # Distinct texts really are distinguishable, so a mix-up could not pass unnoticed.
    assert len({tuple(round(v, 6) for v in s.values()) for s in singles}) > n // 2
    count1, rows1, ones1 = batches(client, model)
    assert rows1 - rows0 == n
    assert count1 - count0 < n, "concurrent requests should have shared batches"
    assert (count1 - count0) - (ones1 - ones0) >= 1, "at least one batch should hold several rows"


def _request(text: str, model: str):
    return classifier_pb2.ClassifyRequest(texts=[text], models=[model])


@pytest.fixture
def small_queue(start_classifier, built_models, tmp_path) -> Client:
    repo = make_repository(tmp_path / "models", built_models, models=(NGRAM, MINILM))
    # One batch takes the whole busy request (no time cap), so the queue is empty behind it.
    _, client = start_classifier(repo, "--queue-capacity", "8", "--max-batch-ms", "0")
    return client


def test_a_request_that_cannot_finish_in_time_is_refused_not_run(small_queue: Client) -> None:
    client = small_queue
    _, rows0, _ = batches(client, MINILM)
    dropped0 = client.metric("classifier_rows_dropped_total", model=MINILM)
    refused0 = client.metric("classifier_requests_rejected_total", model=MINILM, reason="deadline")
    # ~24 full windows keep the encoder busy for well over a second on two cores.
    started = client.metric("classifier_queue_duration_seconds_count", model=MINILM)
    busy = client.stub.Classify.future(_request_many([FULL_WINDOW] * 24, MINILM), timeout=60)
    _wait_until_running(client, started)
    with pytest.raises(grpc.RpcError) as err:
        client.classify(["a quick question"], [MINILM], timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(busy.result().results) == 24
    _, rows1, _ = batches(client, MINILM)
    assert rows1 - rows0 == 24, "only the busy request's rows ran; the late one never reached the model"
    # Refused at admission (predicted to finish after its deadline), or dropped when its
    # deadline passed in the queue: either way counted, and never computed.
    refused = client.metric("classifier_requests_rejected_total", model=MINILM, reason="deadline") - refused0
    assert refused + client.metric("classifier_rows_dropped_total", model=MINILM) - dropped0 == 1


def test_full_queue_is_rejected_with_resource_exhausted(small_queue: Client) -> None:
    client = small_queue
    started = client.metric("classifier_queue_duration_seconds_count", model=MINILM)
    busy = client.stub.Classify.future(_request_many([FULL_WINDOW] * 24, MINILM), timeout=60)
    _wait_until_running(client, started)
    three = ["first short text", "second short text", "third short text"]
    futures = [client.stub.Classify.future(_request_many(three, MINILM), timeout=60) for _ in range(6)]
    codes = []
    for f in futures:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            assert "queue is full" in e.details() and "capacity 8" in e.details()
    busy.result()
    assert codes.count(grpc.StatusCode.OK) == 2  # 2 x 3 rows fit in 8 places; the third would not
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4
    assert client.metric("classifier_requests_rejected_total", model=MINILM, reason="queue_full") == 4
    # Once the queue drains, the same requests are served.
    assert len(client.classify(three, [MINILM]).results) == 3


def _request_many(texts, model: str):
    return classifier_pb2.ClassifyRequest(texts=list(texts), models=[model])


def _wait_until_running(client: Client, before: float, timeout: float = 10.0) -> None:
    """Until the busy request's batch is inside ONNX Runtime (its queue time recorded)."""
    deadline = time.monotonic() + timeout
    while client.metric("classifier_queue_duration_seconds_count", model=MINILM) <= before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
