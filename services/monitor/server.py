"""gRPC surface of the monitor: MonitorService, converting messages to the
query layer's canonical types and back.

Every call needs `authorization: Bearer <token>`, a token of the `--api-tokens` file
(the enforcer admin API's format and the one role matrix of `services.actions.authz`):
no or an unknown token is UNAUTHENTICATED, an operator whose regions do not include
this monitor's PERMISSION_DENIED, a caller (address or token) past its failures
RESOURCE_EXHAUSTED. Every call, reads of cases included, allowed or not, is kept in
the operators' audit log (`monitor_audit`, the console's audit page). Without
`--api-tokens` every call is refused with FAILED_PRECONDITION."""

from __future__ import annotations

from datetime import UTC

import grpc
from safeguards.v1 import monitor_pb2, monitor_pb2_grpc

from services.actions.authz import FailureThrottle, Operation, Operator, TokenAuth, authorize, bearer_token
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.pbtime import timestamp
from services.common.server import ServiceBinding
from services.monitor.operations import API_PREFIX, Operations
from services.monitor.queries import AggregateQuery, Queries
from services.monitor.store import CaseFilter, CaseRow


def case_to_pb(c: CaseRow) -> monitor_pb2.ReviewCase:
    pb = monitor_pb2.ReviewCase(
        case_id=c.case_id,
        region=c.region,
        tenant=c.tenant,
        account_hmac=c.account_hmac,
        model=c.model,
        action=c.action,
        categories=list(c.categories),
        data_policy=c.data_policy,
        status=c.status,
        decided_at=timestamp(c.decided_at),
        created_at=timestamp(c.created_at),
        expires_at=timestamp(c.expires_at),
        policy_version=c.policy_version,
        surface=c.surface,
    )
    for code, detail in c.reasons:
        pb.reasons.add(code=code, detail=detail)
    for category, score, threshold, action in c.scores:
        pb.scores.add(category=category, score=score, threshold=threshold, action=action)
    pb.content.redacted_snippet = c.snippet
    pb.content.characters = c.characters
    pb.content.messages = c.messages
    pb.content.text_hmac = c.text_hmac
    return pb


def _actor(op: Operator | None) -> str:
    return op.name if op else "(no valid token)"


OFF_HINT = "MonitorService is disabled on this monitor: start it with --api-tokens FILE"


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(
        self, queries: Queries, ops: Operations, auth: TokenAuth, throttle: FailureThrottle | None = None
    ) -> None:
        self._queries = queries
        self._ops = ops
        self._auth = auth
        self._throttle = throttle or FailureThrottle()

    async def _call(self, context, method: str, target: str, run):
        """Throttle, authenticate, authorise (READ in this region), run; audit the
        call whatever its outcome, with the operator's own name."""
        token = bearer_token(context.invocation_metadata())
        keys = FailureThrottle.keys(context.peer(), token)
        self._throttle.check(keys)
        what = API_PREFIX + method
        op: Operator | None = None
        ok = False
        try:
            op = self._auth.authenticate(token)
            authorize(op, Operation.READ, self._ops.region)
            result = await run()
            ok = True
            return result
        except (Unauthenticated, PermissionDenied):
            if self._throttle.failed(keys):
                await self._ops.record(
                    op.name if op else "(no valid token)", "", what + ".throttled", target, "", False
                )
            raise
        finally:
            await self._ops.record(
                op.name if op else "(no valid token)", op.role.value if op else "", what, target, "", ok
            )

    async def QueryAggregates(self, request: monitor_pb2.QueryAggregatesRequest, context: grpc.aio.ServicerContext):
        async def run():
            end = None
            if request.HasField("end_time"):
                try:
                    end = request.end_time.ToDatetime(tzinfo=UTC)
                except (ValueError, OverflowError, OSError) as exc:
                    raise InvalidArgument("end_time is not a valid timestamp") from exc
            start, stop, rows = await self._queries.aggregates(
                AggregateQuery(
                    window=request.window,
                    end=end,
                    tenant=request.tenant,
                    category=request.category,
                    action=request.action,
                    model=request.model,
                )
            )
            resp = monitor_pb2.QueryAggregatesResponse(window_start=timestamp(start), window_end=timestamp(stop))
            for r in rows:
                resp.rows.add(tenant=r.tenant, category=r.category, action=r.action, model=r.model, count=r.count)
            return resp

        return await self._call(context, "QueryAggregates", request.tenant, run)

    async def ListCases(self, request: monitor_pb2.ListCasesRequest, context: grpc.aio.ServicerContext):
        async def run():
            cases, token = await self._queries.list_cases(
                CaseFilter(
                    tenant=request.tenant, category=request.category, action=request.action, status=request.status
                ),
                request.page_size,
                request.page_token,
            )
            return monitor_pb2.ListCasesResponse(cases=[case_to_pb(c) for c in cases], next_page_token=token)

        return await self._call(context, "ListCases", request.tenant, run)

    async def GetCase(self, request: monitor_pb2.GetCaseRequest, context: grpc.aio.ServicerContext):
        async def run():
            return monitor_pb2.GetCaseResponse(review_case=case_to_pb(await self._queries.get_case(request.case_id)))

        return await self._call(context, "GetCase", request.case_id, run)


def bindings(
    queries: Queries, ops: Operations, auth: TokenAuth, throttle: FailureThrottle | None = None
) -> list[ServiceBinding]:
    return [
        ServiceBinding(
            monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
            monitor_pb2_grpc.add_MonitorServiceServicer_to_server,
            MonitorServicer(queries, ops, auth, throttle),
        )
    ]
