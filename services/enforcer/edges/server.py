"""gRPC surface of the enforcer: our SafeguardsService and Envoy's ext_proc and ext_authz,
converting messages to the screener's canonical types and back."""

from __future__ import annotations

import asyncio

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from safeguards.v1 import safeguards_pb2, safeguards_pb2_grpc, signals_pb2

from services.common.errors import InvalidArgument
from services.common.pbtime import duration
from services.common.server import Draining, ServiceBinding
from services.common.tls import caller_identity
from services.enforcer.edges.authz import AuthzConfig, AuthzServicer, authz_binding_parts
from services.enforcer.edges.bodies import IdentityHeaders
from services.enforcer.edges.extproc import ExtProcConfig, ExtProcServicer, drain_due
from services.enforcer.requests import Identity, PromptRequest, ScreenResult
from services.enforcer.screening import Screener
from services.enforcer.settings import EnforcerSettings
from services.enforcer.signals import ACTION_TO_PB, VERDICT_TO_PB
from services.enforcer.streaming import DRAINED, ChunkVerdict

END_GRACE_S = 0.01


def identity_from_pb(ctx: safeguards_pb2.RequestContext) -> Identity:
    return Identity(ctx.tenant, ctx.account, ctx.project, ctx.model, ctx.region, ctx.request_id)


def decision_to_pb(result: ScreenResult) -> safeguards_pb2.Decision:
    o = result.outcome
    d = safeguards_pb2.Decision(
        action=ACTION_TO_PB[int(o.action)],
        decision_id=result.decision_id,
        policy_version=result.policy_version,
        latency=duration(result.latency_s),
        degraded=o.degraded,
        verdict=VERDICT_TO_PB[o.verdict],
        verdict_reason=o.verdict_reason,
        answered_by=o.answered_by,
    )
    for r in o.reasons:
        d.reasons.add(code=r.code, detail=r.detail)
    for c in o.scores:
        d.scores.add(category=c.category, score=c.score, threshold=c.threshold, action=ACTION_TO_PB[int(c.action)])
    for role, content in result.redacted_messages:
        d.redacted_messages.add(role=role, content=content)
    if o.retry_after_s:
        d.retry_after.CopyFrom(duration(o.retry_after_s))
    return d


def verdict_to_pb(v: ChunkVerdict) -> safeguards_pb2.ScreenCompletionResponse:
    out = safeguards_pb2.ScreenCompletionResponse(
        chunk_index=v.chunk_index, action=ACTION_TO_PB[int(v.action)], cut=v.cut, replacement=v.replacement
    )
    if v.result is not None:
        out.decision.CopyFrom(decision_to_pb(v.result))
    return out


class SafeguardsServicer(safeguards_pb2_grpc.SafeguardsServiceServicer):
    def __init__(
        self, screener: Screener, max_completion_bytes: int = 1024 * 1024, streams: ExtProcConfig | None = None
    ) -> None:
        self._screener = screener
        self._max_completion_bytes = max_completion_bytes
        self._streams = streams or ExtProcConfig()  # the drain settings long streams share

    async def ScreenPrompt(self, request: safeguards_pb2.ScreenPromptRequest, context: grpc.aio.ServicerContext):
        result = await self._screener.screen_prompt(
            PromptRequest(
                identity=identity_from_pb(request.context),
                messages=tuple((m.role, m.content) for m in request.messages),
                estimated_tokens=request.estimated_tokens,
                surface=signals_pb2.SURFACE_SCREEN_PROMPT,
                caller=caller_identity(context),
            ),
            context.time_remaining(),
        )
        return safeguards_pb2.ScreenPromptResponse(decision=decision_to_pb(result))

    async def ScreenCompletion(self, request_iterator, context: grpc.aio.ServicerContext):
        """One verdict per chunk; after the client half-closes, one more: the tail
        screened, with the stream's decision. A cut ends the stream at once."""
        session = None
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("payload")
                if session is None:
                    if kind != "start":
                        raise InvalidArgument("the first ScreenCompletion message must be start")
                    session = self._screener.open_completion(
                        identity_from_pb(request.start.context),
                        surface=signals_pb2.SURFACE_SCREEN_COMPLETION,
                        prompt_decision_id=request.start.prompt_decision_id,
                        max_bytes=self._max_completion_bytes,
                        caller_remaining=context.time_remaining,
                        caller=caller_identity(context),
                    )
                    continue
                if kind != "chunk":
                    raise InvalidArgument("start may only be the first message; then only chunks")
                verdict = await session.feed(request.chunk)
                yield verdict_to_pb(verdict)
                if verdict.cut:
                    return
                if drain_due(self._streams):
                    # Shutting down: the stream's decision now, with what was screened,
                    # before the server cancels the call; the client resumes elsewhere.
                    yield verdict_to_pb(
                        ChunkVerdict(verdict.chunk_index, verdict.action, result=session.end_early(DRAINED))
                    )
                    return
            if session is None:
                raise InvalidArgument("the first ScreenCompletion message must be start")
            # A cancelled call can look like a half-close (the request stream just ends)
            # with the cancellation landing a moment later: give it that moment, so a
            # client that went away is recorded as abandoned, not as finished.
            await asyncio.sleep(END_GRACE_S)
            if context.cancelled() or context.done():
                return
            yield verdict_to_pb(await session.finish())
        finally:
            if session is not None:
                session.abandon()  # a no-op unless the client went away mid-stream


def bindings(
    screener: Screener, settings: EnforcerSettings | None = None, draining: Draining | None = None
) -> list[ServiceBinding]:
    extproc = ExtProcConfig(draining=draining)
    authz = AuthzConfig()
    if settings is not None:
        headers = IdentityHeaders(
            tenant=settings.tenant_header.lower(),
            account=settings.account_header.lower(),
            project=settings.project_header.lower(),
        )
        authz = AuthzConfig(headers=headers, max_body_bytes=settings.authz_max_body_bytes)
        extproc = ExtProcConfig(
            headers=headers,
            max_body_bytes=settings.extproc_max_body_bytes,
            max_completion_bytes=settings.max_completion_bytes,
            after_authz=settings.extproc_after_authz,
            draining=draining,
        )
    return [
        ServiceBinding(
            safeguards_pb2.DESCRIPTOR.services_by_name["SafeguardsService"].full_name,
            safeguards_pb2_grpc.add_SafeguardsServiceServicer_to_server,
            SafeguardsServicer(screener, extproc.max_completion_bytes, extproc),
        ),
        ServiceBinding(
            external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name,
            external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server,
            ExtProcServicer(screener, extproc),
        ),
        ServiceBinding(*authz_binding_parts(), AuthzServicer(screener, authz)),
    ]
