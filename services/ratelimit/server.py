"""gRPC surface of the rate-limit service: Envoy's RateLimitService and our
ConcurrencyLimitService, converting messages to the limiter's canonical types."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from safeguards.v1 import concurrency_pb2, concurrency_pb2_grpc

from services.common.callers import ANY_CALLER, CallerTenants
from services.common.pbtime import timestamp
from services.common.server import ServiceBinding
from services.common.tls import caller_identity
from services.common.wire import RLS_DEGRADED_KEY
from services.ratelimit.config import RateLimit, Unit
from services.ratelimit.limiter import Code, Decision, Descriptor, RateLimiter

_RLS = rls_pb2.RateLimitResponse
_UNIT_TO_PB = {
    Unit.SECOND: _RLS.RateLimit.SECOND,
    Unit.MINUTE: _RLS.RateLimit.MINUTE,
    Unit.HOUR: _RLS.RateLimit.HOUR,
    Unit.DAY: _RLS.RateLimit.DAY,
    Unit.WEEK: _RLS.RateLimit.WEEK,
    Unit.MONTH: _RLS.RateLimit.MONTH,
    Unit.YEAR: _RLS.RateLimit.YEAR,
}
_PB_TO_UNIT = {v: k for k, v in _UNIT_TO_PB.items()}
_CODE_TO_PB = {Code.OK: _RLS.OK, Code.OVER_LIMIT: _RLS.OVER_LIMIT}


def descriptor_from_pb(d: ratelimit_pb2.RateLimitDescriptor) -> Descriptor:
    override = None
    if d.HasField("limit"):
        unit = _PB_TO_UNIT.get(d.limit.unit)
        if unit is not None and d.limit.requests_per_unit > 0:
            override = RateLimit(requests_per_unit=d.limit.requests_per_unit, unit=unit, name="override")
    return Descriptor(
        entries=tuple((e.key, e.value) for e in d.entries),
        hits_addend=d.hits_addend.value if d.HasField("hits_addend") else None,
        limit_override=override,
    )


def decision_to_pb(decision: Decision) -> rls_pb2.RateLimitResponse:
    resp = _RLS(overall_code=_CODE_TO_PB[decision.code])
    for s in decision.statuses:
        st = resp.statuses.add(code=_CODE_TO_PB[s.code], limit_remaining=max(0, s.remaining))
        if s.limit is not None and not s.limit.unlimited:
            st.current_limit.CopyFrom(
                _RLS.RateLimit(
                    name=s.limit.name, requests_per_unit=s.limit.requests_per_unit, unit=_UNIT_TO_PB[s.limit.unit]
                )
            )
            st.duration_until_reset.FromNanoseconds(round(s.reset_after_s * 1e9))
    for key, value in decision.response_headers():
        resp.response_headers_to_add.append(base_pb2.HeaderValue(key=key, value=value))
    if decision.degraded:
        # Decided without Redis (--fail-mode): say so, so a caller that has a fail mode
        # of its own (the enforcer's tenant policy) applies it and records why.
        resp.dynamic_metadata.update({RLS_DEGRADED_KEY: True})
    return resp


class TenantGuard:
    """Descriptor entries naming a tenant (keys in `tenant_keys`) are claims of the
    caller: each must be a tenant the caller's certificate is bound to (callers.py)."""

    def __init__(self, callers: Callable[[], CallerTenants], tenant_keys: Iterable[str]) -> None:
        self._callers = callers
        self._keys = frozenset(tenant_keys)

    def check(self, context: grpc.aio.ServicerContext, entries: Iterable[tuple[str, str]]) -> None:
        binding = self._callers()
        if not binding.enforced:
            return
        caller = caller_identity(context)
        for key, value in entries:
            if key in self._keys:
                binding.check(caller, value)


ANY_TENANT_GUARD = TenantGuard(lambda: ANY_CALLER, ())


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: RateLimiter, guard: TenantGuard = ANY_TENANT_GUARD) -> None:
        self._limiter = limiter
        self._guard = guard

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext):
        for d in request.descriptors:
            self._guard.check(context, ((e.key, e.value) for e in d.entries))
        decision = await self._limiter.should_rate_limit(
            request.domain, [descriptor_from_pb(d) for d in request.descriptors], request.hits_addend
        )
        return decision_to_pb(decision)


def _entries(msg) -> tuple[tuple[str, str], ...]:
    return tuple((e.key, e.value) for e in msg.entries)


class ConcurrencyServicer(concurrency_pb2_grpc.ConcurrencyLimitServiceServicer):
    def __init__(self, limiter: RateLimiter, guard: TenantGuard = ANY_TENANT_GUARD) -> None:
        self._limiter = limiter
        self._guard = guard

    async def AcquireLease(self, request, context):
        self._guard.check(context, _entries(request))
        lease = await self._limiter.acquire(
            request.domain, _entries(request), request.lease_ttl.ToTimedelta().total_seconds()
        )
        return concurrency_pb2.AcquireLeaseResponse(
            granted=lease.granted,
            lease_id=lease.lease_id,
            active=lease.active,
            max_concurrent=lease.max_concurrent,
            expires_at=timestamp(lease.expires_at),
            rule=lease.rule,
            shadow_over_limit=lease.shadow_over_limit,
            degraded=lease.degraded,
        )

    async def RenewLease(self, request, context):
        self._guard.check(context, _entries(request))
        renewed, expires = await self._limiter.renew(
            request.domain, _entries(request), request.lease_id, request.lease_ttl.ToTimedelta().total_seconds()
        )
        return concurrency_pb2.RenewLeaseResponse(renewed=renewed, expires_at=timestamp(expires))

    async def ReleaseLease(self, request, context):
        self._guard.check(context, _entries(request))
        released, active = await self._limiter.release(request.domain, _entries(request), request.lease_id)
        return concurrency_pb2.ReleaseLeaseResponse(released=released, active=active)


def bindings(limiter: RateLimiter, guard: TenantGuard = ANY_TENANT_GUARD) -> list[ServiceBinding]:
    return [
        ServiceBinding(
            rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
            rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
            RateLimitServicer(limiter, guard),
        ),
        ServiceBinding(
            concurrency_pb2.DESCRIPTOR.services_by_name["ConcurrencyLimitService"].full_name,
            concurrency_pb2_grpc.add_ConcurrencyLimitServiceServicer_to_server,
            ConcurrencyServicer(limiter, guard),
        ),
    ]
