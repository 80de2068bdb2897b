"""Settings of the classifier service (flags and CLASSIFIER_* env vars).

Batching policy (max batch, max queue delay) is per model and lives in each model's
manifest, as in Triton's model config; what is here is process-wide: where the model
repository is, how requests are bounded, and how ONNX Runtime uses the machine.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

DEFAULT_PORT = 50052


class ClassifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_")
    service_name: ClassVar[str] = "classifier"

    listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}", description="gRPC listen address HOST:PORT (port 0 picks a free port)"
    )
    metrics_listen: str = Field(
        f"127.0.0.1:{DEFAULT_PORT + 1000}",
        description="Prometheus /metrics HTTP listen address HOST:PORT; empty disables metrics over HTTP",
    )
    models: str = Field(
        "build/models",
        description="model repository: DIR/<model>/manifest.yaml and DIR/<model>/<version>/model.onnx",
    )
    default_model: str = Field("prompt_guard", description="model answered when a request names none")
    max_text_bytes: int = Field(
        32 * 1024, ge=1, description="longest text accepted, in UTF-8 bytes; longer texts are INVALID_ARGUMENT"
    )
    max_batch_texts: int = Field(64, ge=1, description="most texts in one Classify request")
    max_models_per_request: int = Field(8, ge=1, description="most models one Classify request may name")
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per inference (0: one per physical core, ORT's default)"
    )
    first_stage_intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime threads per inference for models that are a cascade's first stage (the "
        "cheap tier), so encoder batches cannot stall it on a small CPU (0: as --intra-op-threads)",
    )
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="auto (CUDA when onnxruntime offers it, else CPU), cuda (fail at start without it) or cpu",
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU ordinal the CUDA execution provider uses")
    ort_allow_spinning: bool = Field(
        False,
        description="let idle ONNX Runtime threads spin (lower latency back-to-back, but steals CPU from "
        "the event loop on small machines)",
    )
    reload_poll_seconds: float = Field(
        2.0,
        ge=0,
        description="how often the model repository is rescanned for new, changed or removed versions "
        "(0 disables reloading)",
    )
    queue_capacity: int = Field(
        1024,
        ge=1,
        description="rows (text windows) that may wait per model version; requests beyond are RESOURCE_EXHAUSTED",
    )
    max_batch_ms: float = Field(
        150.0,
        ge=0,
        description="a batch stops growing once its predicted inference time reaches this (it always takes "
        "one row): a running batch cannot be interrupted, so this bounds how long a newly arrived text waits "
        "for the batch ahead of it (0: no bound)",
    )
    batch_wait: Literal["auto", "manifest", "eager"] = Field(
        "auto",
        description="manifest: a lone row waits up to the model's max_queue_delay_ms for companions (Triton); "
        "eager: an idle model runs what is queued at once and batches form while it is busy (TEI); "
        "auto: manifest on CUDA, where a batch costs about what one row does, eager on CPU",
    )
    reply_margin_ms: float = Field(
        5.0,
        ge=0,
        description="time kept back from each caller's deadline to send the answer: work predicted to end "
        "later is refused at admission, and a cascade answers with its first stage (PARTIAL) when its "
        "second has not answered this long before the deadline",
    )
    max_shadow_inflight: int = Field(
        16, ge=0, description="shadow-model runs in flight at once; beyond it shadow runs are skipped (counted)"
    )
    tokenize_inline_chars: int = Field(
        4096,
        ge=0,
        description="requests with at most this many characters of text are tokenised on the event loop; "
        "larger ones in a worker thread",
    )
