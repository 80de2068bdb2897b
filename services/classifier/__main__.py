"""`python -m services.classifier`: wiring only.

Chooses the execution provider (once, at start), builds the model repository, the data
plane and the gRPC servicer, and hands them to the shared bootstrap; per-model health
is published on the bootstrap's health servicer through `App.on_server`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from services.classifier.pipeline import Classifier, Limits
from services.classifier.repository import ModelRepository
from services.classifier.runtime import CUDA, RuntimeOptions, choose_provider
from services.classifier.server import bindings, model_health_name
from services.classifier.settings import ClassifierSettings
from services.classifier.stats import ClassifierStats
from services.common.server import App, GrpcServer, run

log = logging.getLogger("safeguards.classifier")


class ModelHealth:
    """Per-model grpc.health.v1 statuses: remembered until a health servicer is attached,
    then forwarded (the repository publishes before the server exists)."""

    def __init__(self) -> None:
        self._servicer = None
        self._status: dict[str, bool] = {}

    async def set(self, model: str, serving: bool) -> None:
        self._status[model] = serving
        if self._servicer is not None:
            await self._push(model, serving)

    async def attach(self, servicer) -> None:
        self._servicer = servicer
        for model, serving in self._status.items():
            await self._push(model, serving)

    async def _push(self, model: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._servicer.set(model_health_name(model), status)


def wait_for_batch(batch_wait: str, provider: str) -> bool:
    """Whether a lone row waits max_queue_delay_ms for companions (see --batch-wait).

    On a GPU a batch of 32 costs about what one row does, so waiting buys throughput; on
    CPU the cost grows with the rows, so waiting only adds latency, and under load batches
    form anyway from the rows that arrive while the previous batch runs.
    """
    if batch_wait == "auto":
        return provider == CUDA
    return batch_wait == "manifest"


async def build(settings: ClassifierSettings, registry: CollectorRegistry) -> App:
    stats = ClassifierStats(registry)
    model_health = ModelHealth()
    provider = choose_provider(settings.execution_provider)
    stats.provider.info({"provider": provider})
    log.info(
        "execution provider chosen",
        extra={
            "execution_provider": provider,
            "requested": settings.execution_provider,
            "batch_wait": "manifest" if wait_for_batch(settings.batch_wait, provider) else "eager",
        },
    )
    repository = ModelRepository(
        Path(settings.models),
        RuntimeOptions(
            provider=provider,
            intra_op_threads=settings.intra_op_threads,
            cuda_device_id=settings.cuda_device_id,
            allow_spinning=settings.ort_allow_spinning,
        ),
        stats,
        queue_capacity=settings.queue_capacity,
        max_batch_s=settings.max_batch_ms / 1000.0 or None,
        first_stage_intra_op_threads=settings.first_stage_intra_op_threads,
        poll_seconds=settings.reload_poll_seconds,
        wait_for_batch=wait_for_batch(settings.batch_wait, provider),
        health=model_health.set,
    )
    classifier = Classifier(
        repository,
        stats,
        settings.default_model,
        Limits(
            max_text_bytes=settings.max_text_bytes,
            max_batch_texts=settings.max_batch_texts,
            max_models=settings.max_models_per_request,
            tokenize_inline_chars=settings.tokenize_inline_chars,
        ),
        max_shadow_inflight=settings.max_shadow_inflight,
        reply_margin_s=settings.reply_margin_ms / 1000.0,
    )

    async def check_default() -> None:
        if settings.default_model not in repository.names():
            log.warning(
                "default model is not in the repository; requests that name no model will be NOT_FOUND",
                extra={"default_model": settings.default_model, "models": repository.names()},
            )

    async def attach_health(server: GrpcServer) -> None:
        await model_health.attach(server.health)

    return App(
        bindings=bindings(classifier, repository, provider),
        on_start=[repository.start, check_default],
        on_stop=[classifier.stop, repository.stop],
        on_server=[attach_health],
    )


def main(argv: list[str] | None = None) -> int:
    return run("classifier", ClassifierSettings.parse(argv), build)


if __name__ == "__main__":
    sys.exit(main())
