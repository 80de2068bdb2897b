"""The one server interceptor every service runs: request id, RED metrics,
caller authorisation by certificate SAN, and domain exceptions -> gRPC status.

Wrapping each handler (instead of stacking several interceptors) keeps the
per-call overhead to one extra coroutine frame.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from services.common.errors import InvalidArgument, ServiceError
from services.common.logs import request_id_var
from services.common.metrics import RpcMetrics
from services.common.tls import caller_identity

log = logging.getLogger("safeguards.rpc")

REQUEST_ID_HEADER = "x-request-id"


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)[:128]
    return uuid.uuid4().hex


class _Undecodable:
    """Stands in for a request that failed to parse, so the handler wrapper can
    answer INVALID_ARGUMENT with the reason instead of gRPC's opaque INTERNAL."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as exc:  # e.g. "String field had bad UTF-8"
            return _Undecodable(str(exc))

    return parse


def _reject_undecodable(request) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"malformed request: {request.reason}")


def _checked_stream(inner: Callable) -> Callable:
    """Wrap a request-streaming handler so a malformed message mid-stream is rejected."""

    def call(request_iterator, context):
        async def checked():
            async for item in request_iterator:
                _reject_undecodable(item)
                yield item

        return inner(checked(), context)

    return call


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics, allowed_sans: frozenset[str] = frozenset()) -> None:
        self._metrics = metrics
        self._allowed = allowed_sans

    async def intercept_service(self, continuation, details):  # noqa: ANN001 (grpc API)
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        rid = _request_id(details)
        inner = handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
        if handler.request_streaming:
            inner = _checked_stream(inner)
        if handler.unary_unary or handler.stream_unary:
            factory = (
                grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            )
            wrapped = self._wrap_unary(inner, service, method, rid)
        else:
            factory = (
                grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            )
            wrapped = self._wrap_stream(inner, service, method, rid)
        return factory(
            wrapped,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _begin(self, context: grpc.aio.ServicerContext, service: str, method: str, rid: str) -> float:
        request_id_var.set(rid)
        self._metrics.method(service, method).started.inc()
        return time.perf_counter()

    async def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        if self._allowed:
            ident = caller_identity(context)
            if not self._allowed.intersection(ident.sans):
                log.warning("caller not allowed", extra={"caller_sans": list(ident.sans)})
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller certificate SAN is not allowed")

    def _finish(self, context, service: str, method: str, start: float, code: grpc.StatusCode | None) -> None:
        code = code or context.code() or grpc.StatusCode.OK
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        m = self._metrics.method(service, method)
        m.handled(code.name).inc()
        m.latency.observe(time.perf_counter() - start)

    async def _map_error(self, context, exc: BaseException) -> None:
        if isinstance(exc, ServiceError):
            # Messages are written for callers and hold no request content (a rule of
            # every ServiceError raised), so they are safe to log.
            log.info("rpc rejected", extra={"grpc_code": exc.code, "error": exc.message})
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        log.exception("unhandled error in RPC handler")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")

    def _wrap_unary(self, inner: Callable, service: str, method: str, rid: str) -> Callable:
        async def call(request_or_iterator, context):
            start = self._begin(context, service, method, rid)
            code = None
            try:
                await self._authorise(context)
                _reject_undecodable(request_or_iterator)
                return await inner(request_or_iterator, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # mapped to a status; never crashes the server
                await self._map_error(context, exc)
            finally:
                self._finish(context, service, method, start, code)

        return call

    def _wrap_stream(self, inner: Callable, service: str, method: str, rid: str) -> Callable:
        async def call(request_or_iterator, context):
            start = self._begin(context, service, method, rid)
            try:
                await self._authorise(context)
                _reject_undecodable(request_or_iterator)
                result = inner(request_or_iterator, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._map_error(context, exc)
            finally:
                self._finish(context, service, method, start, None)

        return call
