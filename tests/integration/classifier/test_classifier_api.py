"""The ClassifierService API on a real process with real models: per text, per model, per
label scores in request order with thresholds, flags and window counts; ListModels; the
execution provider reported everywhere; per-model health; and no text in logs or metrics."""

from __future__ import annotations

import json
import math
import time

import pytest
from grpc_health.v1 import health_pb2
from safeguards.v1 import classifier_pb2

from tests.integration.classifier.conftest import CASCADE, INJECTION, MINILM, NGRAM, SERVICE, SHADOWED, Client

LABELS = ["benign", "jailbreak", "prompt_injection", "harmful"]


def test_scores_come_per_text_per_model_in_request_order(client: Client) -> None:
    texts = ["Explain the difference between TCP and UDP in simple terms.", INJECTION, "x" * 3000]
    resp = client.classify(texts, [NGRAM, f"{MINILM}:1"])
    assert len(resp.results) == 3
    for per_text in resp.results:
        assert [m.model for m in per_text.models] == [NGRAM, MINILM]
        for m in per_text.models:
            assert m.version == 1 and m.answered_by == ""
            assert [s.label for s in m.scores] == LABELS
            assert all(0.0 <= s.score <= 1.0 and not math.isnan(s.score) for s in m.scores)
            flagged = [s.label for s in m.scores if s.label != "benign" and s.score >= s.threshold > 0]
            assert list(m.flagged_labels) == flagged
    injection = {m.model: m for m in resp.results[1].models}
    assert "prompt_injection" in injection[MINILM].flagged_labels
    assert resp.results[0].models[0].windows == 1
    assert resp.results[2].models[0].windows == 5  # 3000 chars: windows of 1024, stride 512
    thresholds = {s.label: s.threshold for s in resp.results[0].models[1].scores}
    assert thresholds["benign"] == 0.0 and 0 < thresholds["jailbreak"] < 1


def test_a_request_naming_no_model_gets_the_default_model(client: Client) -> None:
    resp = client.classify([INJECTION])
    (m,) = resp.results[0].models
    assert m.model == CASCADE and m.answered_by in (NGRAM, MINILM)


def test_the_same_text_scores_the_same_alone_or_in_a_batch(client: Client) -> None:
    texts = [f"Message number {i}: please translate 'good morning' into French." for i in range(10)]
    batch = client.classify(texts, [NGRAM])
    for text, res in zip(texts, batch.results, strict=True):
        alone = client.classify([text], [NGRAM]).results[0].models[0]
        # Equal up to float summation order (the batch pads rows to a different width).
        assert [s.score for s in alone.scores] == pytest.approx([s.score for s in res.models[0].scores], abs=1e-5)


def test_list_models_describes_every_model_its_versions_and_the_provider(client: Client) -> None:
    resp = client.list_models()
    assert resp.default_model == CASCADE
    assert resp.execution_provider == "CPUExecutionProvider"
    models = {m.name: m for m in resp.models}
    assert set(models) == {NGRAM, MINILM, CASCADE, SHADOWED}
    ngram = models[NGRAM]
    assert ngram.platform == "onnxruntime" and ngram.serving_version == 1
    assert list(ngram.labels) == LABELS
    assert ngram.max_batch_size == 32 and ngram.max_sequence_length == 1024
    assert [(v.version, v.state, v.execution_provider) for v in ngram.versions] == [
        (1, classifier_pb2.MODEL_STATE_READY, "CPUExecutionProvider")
    ]
    assert models[MINILM].max_sequence_length == 256
    assert models[CASCADE].platform == "cascade"
    assert models[CASCADE].versions[0].state == classifier_pb2.MODEL_STATE_READY
    assert list(models[SHADOWED].shadow_models) == [MINILM]


def test_health_is_reported_per_model(client: Client) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert client.health() == serving
    assert client.health(SERVICE) == serving
    for model in (NGRAM, MINILM, CASCADE):
        assert client.health(f"{SERVICE}/{model}") == serving


def test_execution_provider_and_batching_show_in_metrics(client: Client) -> None:
    client.classify(["hello there"], [NGRAM])
    assert client.metric("classifier_execution_provider_info", provider="CPUExecutionProvider") == 1
    assert client.metric("classifier_model_ready", model=NGRAM) == 1
    assert client.metric("classifier_model_serving_version", model=NGRAM) == 1
    assert client.metric("classifier_batch_size_count", model=NGRAM) >= 1
    assert client.metric("classifier_inference_duration_seconds_count", model=NGRAM) >= 1
    assert client.metric("classifier_queue_duration_seconds_count", model=NGRAM) >= 1
    assert client.metric("classifier_batch_tokens_total", model=NGRAM, kind="real") > 0


def test_shadow_models_run_on_the_same_texts_and_stay_out_of_the_answer(client: Client) -> None:
    before = client.metric("classifier_shadow_runs_total", model=SHADOWED, shadow=MINILM, result="ok")
    resp = client.classify([INJECTION, "What a lovely day for a picnic."], [SHADOWED])
    for per_text in resp.results:
        assert [m.model for m in per_text.models] == [SHADOWED]
    ngram = client.classify([INJECTION], [NGRAM]).results[0].models[0]
    assert [s.score for s in resp.results[0].models[0].scores] == pytest.approx(
        [s.score for s in ngram.scores], abs=1e-5
    )
    deadline = time.monotonic() + 20
    while client.metric("classifier_shadow_runs_total", model=SHADOWED, shadow=MINILM, result="ok") <= before:
        assert time.monotonic() < deadline, "the shadow model never ran"
        time.sleep(0.1)
    assert client.metric("classifier_shadow_unsafe_score_count", model=SHADOWED, shadow=MINILM) >= 2


def test_logs_and_metrics_never_carry_the_text(shared) -> None:
    proc, client = shared
    secret = "zebra-quartz-7781 my account password is hunter2"
    client.classify([secret, secret + " " + INJECTION], [NGRAM, CASCADE, SHADOWED], metadata=[("x-request-id", "r-77")])
    try:
        client.classify([secret * 2000], [NGRAM])  # oversize: rejected, logged
    except Exception:
        pass
    time.sleep(0.5)
    logs = proc.logs()
    assert "zebra-quartz" not in logs and "hunter2" not in logs
    assert "zebra-quartz" not in client.metrics_text()
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(r.get("msg") == "classified" and r.get("request_id") == "r-77" for r in records)
    assert any(r.get("msg") == "rpc rejected" and "--max-text-bytes" in r.get("error", "") for r in records)
