"""gRPC surface of the classifier: converts ClassifierService messages to the data
plane's calls (``pipeline.Classifier``) and its results back.  Nothing else lives here."""

from __future__ import annotations

import grpc
from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

from services.classifier.pipeline import FULL, PARTIAL, Classifier, Limits, ModelResult
from services.classifier.repository import FAILED, LOADING, READY, UNLOADED, ModelRepository, ModelStatus
from services.common.server import ServiceBinding

SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name
_STATES = {
    LOADING: classifier_pb2.MODEL_STATE_LOADING,
    READY: classifier_pb2.MODEL_STATE_READY,
    FAILED: classifier_pb2.MODEL_STATE_FAILED,
    UNLOADED: classifier_pb2.MODEL_STATE_UNLOADED,
}
_COMPLETENESS = {
    FULL: classifier_pb2.VERDICT_COMPLETENESS_FULL,
    PARTIAL: classifier_pb2.VERDICT_COMPLETENESS_PARTIAL,
}


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name that reports one model's readiness."""
    return f"{SERVICE}/{model}"


def _model_scores(r: ModelResult) -> classifier_pb2.ModelScores:
    return classifier_pb2.ModelScores(
        model=r.model,
        version=r.version,
        scores=[classifier_pb2.LabelScore(label=s.label, score=s.score, threshold=s.threshold) for s in r.scores],
        flagged_labels=r.flagged,
        answered_by=r.answered_by,
        windows=r.windows,
        completeness=_COMPLETENESS[r.completeness],
        partial_reason=r.partial_reason,
        uncertain_from=r.uncertain_from,
    )


def _limits(lim: Limits) -> classifier_pb2.ClassifierLimits:
    return classifier_pb2.ClassifierLimits(
        max_text_bytes=lim.max_text_bytes, max_batch_texts=lim.max_batch_texts, max_models=lim.max_models
    )


def _model_info(m: ModelStatus) -> classifier_pb2.ModelInfo:
    return classifier_pb2.ModelInfo(
        name=m.name,
        versions=[
            classifier_pb2.ModelVersionInfo(
                version=v.version, state=_STATES[v.state], error=v.error, execution_provider=v.provider
            )
            for v in m.versions
        ],
        serving_version=m.serving_version,
        labels=m.labels,
        platform=m.platform,
        shadow_models=m.shadow_models,
        max_batch_size=m.max_batch_size,
        max_sequence_length=m.max_sequence_length,
    )


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, classifier: Classifier, repository: ModelRepository, execution_provider: str) -> None:
        self._classifier = classifier
        self._repository = repository
        self._provider = execution_provider

    async def Classify(self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext):
        results = await self._classifier.classify(
            request.texts,
            request.models,
            context.time_remaining(),
            tenant=request.tenant,
            background=request.background,
        )
        return classifier_pb2.ClassifyResponse(
            results=[classifier_pb2.TextScores(models=[_model_scores(r) for r in per_text]) for per_text in results]
        )

    async def ListModels(self, request: classifier_pb2.ListModelsRequest, context: grpc.aio.ServicerContext):
        return classifier_pb2.ListModelsResponse(
            models=[_model_info(m) for m in self._repository.status()],
            execution_provider=self._provider,
            default_model=self._classifier.default_model,
            limits=_limits(self._classifier.limits),
        )


def bindings(classifier: Classifier, repository: ModelRepository, execution_provider: str) -> list[ServiceBinding]:
    return [
        ServiceBinding(
            SERVICE,
            classifier_pb2_grpc.add_ClassifierServiceServicer_to_server,
            ClassifierServicer(classifier, repository, execution_provider),
        )
    ]
