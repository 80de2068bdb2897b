"""gRPC surface of the enforcer: our SafeguardsService, converting messages to the
screener's canonical types and back."""

from __future__ import annotations

import grpc
from safeguards.v1 import safeguards_pb2, safeguards_pb2_grpc, signals_pb2

from services.common.server import ServiceBinding
from services.enforcer.screening import Identity, PromptRequest, Screener, ScreenResult
from services.enforcer.signals import ACTION_TO_PB, duration


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


class SafeguardsServicer(safeguards_pb2_grpc.SafeguardsServiceServicer):
    def __init__(self, screener: Screener) -> None:
        self._screener = screener

    async def ScreenPrompt(self, request: safeguards_pb2.ScreenPromptRequest, context: grpc.aio.ServicerContext):
        result = await self._screener.screen_prompt(
            PromptRequest(
                identity=identity_from_pb(request.context),
                messages=tuple((m.role, m.content) for m in request.messages),
                estimated_tokens=request.estimated_tokens,
                surface=signals_pb2.SURFACE_SCREEN_PROMPT,
            ),
            context.time_remaining(),
        )
        return safeguards_pb2.ScreenPromptResponse(decision=decision_to_pb(result))


def bindings(screener: Screener) -> list[ServiceBinding]:
    return [
        ServiceBinding(
            safeguards_pb2.DESCRIPTOR.services_by_name["SafeguardsService"].full_name,
            safeguards_pb2_grpc.add_SafeguardsServiceServicer_to_server,
            SafeguardsServicer(screener),
        )
    ]
