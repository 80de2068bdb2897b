"""A verdict within the budget, over real gRPC with the real built models: a long text
under the enforcer's 50 ms budget gets a PARTIAL answer from the n-gram stage (not an
error) before its deadline; ListModels reports the limits the server enforces; a flood
of long texts from one tenant does not stop another tenant's short texts from getting
answers; a deadline too short even for the first stage is DEADLINE_EXCEEDED."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from safeguards.v1 import classifier_pb2

from tests.integration.classifier.conftest import (
    CASCADE,
    INJECTION,
    MINILM,
    NGRAM,
    Client,
    make_repository,
    write_yaml,
)
from tests.integration.classifier.test_classifier_cascade import long_benign_document
from tests.support import ServiceProcess, free_port

# The real stages with a band that escalates every text, so each text needs the encoder.
ESCALATE_ALL = "prompt_guard_escalate_all"
BUDGET = 0.05  # the enforcer's default budget
FULL = classifier_pb2.VERDICT_COMPLETENESS_FULL
PARTIAL = classifier_pb2.VERDICT_COMPLETENESS_PARTIAL


@pytest.fixture(scope="module")
def server(built_models, tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("models"), built_models)
    (repo / ESCALATE_ALL).mkdir()
    write_yaml(
        repo / ESCALATE_ALL / "manifest.yaml",
        {"name": ESCALATE_ALL, "platform": "cascade", "stages": [NGRAM, MINILM], "band": [0.0, 1.0]},
    )
    port = free_port()
    args = ["--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}", "--models", str(repo)]
    proc = ServiceProcess("services.classifier", args).start(timeout=60)
    client = Client(proc.address, port)
    yield client
    client.close()
    proc.stop()


def classify(client: Client, texts, model: str, timeout: float, tenant: str = "", background: bool = False):
    request = classifier_pb2.ClassifyRequest(texts=list(texts), models=[model], tenant=tenant, background=background)
    return client.stub.Classify(request, timeout=timeout)


def test_a_long_text_under_a_50ms_budget_gets_a_partial_answer_in_time(server: Client) -> None:
    text = long_benign_document()[:4000] + "\n\n" + INJECTION  # ~1,000 word pieces: several encoder windows
    before = server.metric("classifier_partial_answers_total", model=ESCALATE_ALL, reason="deadline")
    # The call's own deadline is the proof of "in time": a late answer is DEADLINE_EXCEEDED.
    m = classify(server, [text], ESCALATE_ALL, timeout=BUDGET).results[0].models[0]
    assert m.completeness == PARTIAL and m.partial_reason == "deadline"
    assert m.answered_by == NGRAM and m.model == ESCALATE_ALL
    ngram = {s.label: s.score for s in classify(server, [text], NGRAM, timeout=30).results[0].models[0].scores}
    assert {s.label: s.score for s in m.scores} == pytest.approx(ngram, abs=1e-5)
    assert server.metric("classifier_partial_answers_total", model=ESCALATE_ALL, reason="deadline") == before + 1
    # The default cascade never errors on it either, and with time to spare the answer is FULL.
    m = classify(server, [text], CASCADE, timeout=BUDGET).results[0].models[0]
    assert m.completeness in (FULL, PARTIAL)
    m = classify(server, [text], ESCALATE_ALL, timeout=60).results[0].models[0]
    assert (m.completeness, m.partial_reason, m.answered_by) == (FULL, "", MINILM)


def test_list_models_reports_the_limits_the_server_enforces(server: Client) -> None:
    limits = server.list_models().limits
    assert (limits.max_text_bytes, limits.max_batch_texts, limits.max_models) == (32 * 1024, 64, 8)
    with pytest.raises(grpc.RpcError) as err:
        server.classify(["x"] * (limits.max_batch_texts + 1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_deadline_too_short_for_the_first_stage_is_deadline_exceeded(server: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        classify(server, ["a short question"], CASCADE, timeout=0.003)  # less than the reply margin
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("flood_timeout", [BUDGET, 5.0], ids=["flood-under-budget", "flood-admitted"])
def test_a_flood_of_long_texts_from_one_tenant_does_not_stop_anothers_short_texts(
    server: Client, flood_timeout: float
) -> None:
    """Tenant a floods long texts (under the 50 ms budget, refused by the encoder; or with
    time enough that the encoder queue fills with them); tenant b's short texts, which
    all need the encoder, are every one answered, FULL or PARTIAL, never an error."""
    long_text = long_benign_document()[:4000]
    stop = threading.Event()
    flood_errors: list[grpc.StatusCode] = []

    def flood() -> None:
        while not stop.is_set():
            try:
                classify(server, [long_text], ESCALATE_ALL, timeout=flood_timeout, tenant="tenant-a")
            except grpc.RpcError as e:  # counted, not raised: the flood is not under test
                flood_errors.append(e.code())

    shorts = [f"Question {i}: what is the capital of France?" for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        floods = [pool.submit(flood) for _ in range(3)]
        try:
            answers = []
            for text in shorts:
                m = classify(server, [text], ESCALATE_ALL, timeout=0.5, tenant="tenant-b").results[0].models[0]
                answers.append(m)
        finally:
            stop.set()
            for f in floods:
                f.result()
    assert len(answers) == len(shorts)
    for m in answers:
        assert m.completeness in (FULL, PARTIAL)
        assert m.answered_by in (NGRAM, MINILM) and len(m.scores) == 4
        if m.completeness == PARTIAL:
            assert m.partial_reason in ("deadline", "overloaded") and m.answered_by == NGRAM
