"""Classifier metrics, named in the spirit of Triton's (``nv_inference_queue_duration_us``,
``nv_inference_exec_count``) and text-embeddings-inference's (``te_queue_size``,
``te_batch_next_size``, ``te_batch_inference_duration``).

All metrics live on the registry the server object hands in (never the global one).
Labels are bounded: model names come from the repository directory and pass through
``BoundedLabels``; versions are not a label (a long-lived server reloads many), the
serving version is a gauge's value instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from services.common.metrics import LATENCY_BUCKETS, BoundedLabels

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ERROR_BUCKETS = (-0.5, -0.1, -0.05, -0.02, -0.01, -0.005, -0.002, 0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ClassifierStats:
    def __init__(self, registry: CollectorRegistry, max_models: int = 100) -> None:
        self.model_label = BoundedLabels(max_models)
        m = ["model"]
        # -- batcher (one loop per model version; labelled by model) --
        self.queue_depth = Gauge(
            "classifier_queue_depth", "Rows (text windows) waiting to be batched.", m, registry=registry
        )
        self.queue_duration = Histogram(
            "classifier_queue_duration_seconds",
            "Time a request's rows waited in the queue before their batch started.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "classifier_batch_size", "Rows per inference batch.", m, buckets=BATCH_BUCKETS, registry=registry
        )
        self.inference_duration = Histogram(
            "classifier_inference_duration_seconds",
            "Wall time of one batch inference in ONNX Runtime.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Counter(
            "classifier_batch_tokens_total",
            "Sequence positions sent to the model: real ones and padding (length grouping keeps padding low).",
            ["model", "kind"],
            registry=registry,
        )
        self.rows_dropped = Counter(
            "classifier_rows_dropped_total",
            "Queued rows dropped before inference, by reason (deadline, cancelled).",
            ["model", "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "classifier_requests_rejected_total",
            "Requests refused admission to a model's queue, by reason (queue_full, closed, deadline: "
            "predicted to finish after the caller's deadline).",
            ["model", "reason"],
            registry=registry,
        )
        self.admission_error = Histogram(
            "classifier_admission_prediction_error_seconds",
            "Answer time minus the time admission predicted, per request (positive: later than predicted).",
            m,
            buckets=ERROR_BUCKETS,
            registry=registry,
        )
        self.cost_model = Gauge(
            "classifier_cost_model_seconds",
            "The learned cost of a batch, seconds = per_batch + per_token * rows * width (admission's model).",
            ["model", "term"],
            registry=registry,
        )
        self.inference_failures = Counter(
            "classifier_inference_failures_total", "Batches whose inference raised.", m, registry=registry
        )
        # -- repository --
        self.model_loads = Counter(
            "classifier_model_loads_total",
            "Model version loads, by result (ok, failed).",
            ["model", "result"],
            registry=registry,
        )
        self.load_duration = Histogram(
            "classifier_model_load_seconds",
            "Time to create, check and warm up a model version.",
            m,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.model_ready = Gauge(
            "classifier_model_ready", "1 while the model has a version serving, else 0.", m, registry=registry
        )
        self.serving_version = Gauge(
            "classifier_model_serving_version", "Version the model's policy serves (0: none).", m, registry=registry
        )
        self.model_failed = Gauge(
            "classifier_model_failed_versions", "Versions of the model whose last load failed.", m, registry=registry
        )
        self.provider = Info(
            "classifier_execution_provider", "ONNX Runtime execution provider chosen at start.", registry=registry
        )
        # -- answers --
        self.texts = Counter(
            "classifier_texts_total",
            "Texts answered, by model and the stage that answered (a cascade's escalation rate).",
            ["model", "answered_by"],
            registry=registry,
        )
        self.partial = Counter(
            "classifier_partial_answers_total",
            "Texts a cascade answered with an earlier stage's scores (completeness PARTIAL), by reason "
            "(deadline, overloaded, unavailable).",
            ["model", "reason"],
            registry=registry,
        )
        self.flagged = Counter(
            "classifier_flagged_texts_total",
            "Texts flagged, by model and label.",
            ["model", "label"],
            registry=registry,
        )
        self.shadow_runs = Counter(
            "classifier_shadow_runs_total",
            "Shadow-model runs, by result (ok, failed, skipped).",
            ["model", "shadow", "result"],
            registry=registry,
        )
        self.shadow_disagreements = Counter(
            "classifier_shadow_disagreements_total",
            "Texts where a shadow model's flag decision differs from the serving model's.",
            ["model", "shadow"],
            registry=registry,
        )
        self.shadow_unsafe_score = Histogram(
            "classifier_shadow_unsafe_score",
            "A shadow model's unsafe score (max non-benign probability) per text.",
            ["model", "shadow"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )

    def model(self, name: str) -> str:
        return self.model_label(name)
