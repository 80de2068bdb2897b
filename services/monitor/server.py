"""gRPC surface of the monitor: MonitorService, converting messages to the
query layer's canonical types and back."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from safeguards.v1 import monitor_pb2, monitor_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.server import ServiceBinding
from services.monitor.queries import AggregateQuery, Queries
from services.monitor.store import CaseFilter, CaseRow


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


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
        decided_at=_ts(c.decided_at),
        created_at=_ts(c.created_at),
        expires_at=_ts(c.expires_at),
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


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, queries: Queries) -> None:
        self._queries = queries

    async def QueryAggregates(self, request: monitor_pb2.QueryAggregatesRequest, context: grpc.aio.ServicerContext):
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
        resp = monitor_pb2.QueryAggregatesResponse(window_start=_ts(start), window_end=_ts(stop))
        for r in rows:
            resp.rows.add(tenant=r.tenant, category=r.category, action=r.action, model=r.model, count=r.count)
        return resp

    async def ListCases(self, request: monitor_pb2.ListCasesRequest, context: grpc.aio.ServicerContext):
        cases, token = await self._queries.list_cases(
            CaseFilter(tenant=request.tenant, category=request.category, action=request.action, status=request.status),
            request.page_size,
            request.page_token,
        )
        return monitor_pb2.ListCasesResponse(cases=[case_to_pb(c) for c in cases], next_page_token=token)

    async def GetCase(self, request: monitor_pb2.GetCaseRequest, context: grpc.aio.ServicerContext):
        return monitor_pb2.GetCaseResponse(review_case=case_to_pb(await self._queries.get_case(request.case_id)))


def bindings(queries: Queries) -> list[ServiceBinding]:
    return [
        ServiceBinding(
            monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
            monitor_pb2_grpc.add_MonitorServiceServicer_to_server,
            MonitorServicer(queries),
        )
    ]
