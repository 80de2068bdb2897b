"""Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`):
one Check per HTTP request, answered with the screener's decision, so any Envoy-based
gateway screens prompts with configuration only (example: deploy/envoy/envoy.yaml).

What Envoy must send: the buffered request body (`with_request_body`, with
`pack_as_bytes: true` so the body arrives as bytes in `raw_body` — as a string field
a non-UTF-8 body would fail the whole Check — and `allow_partial_message: false`, so
Envoy itself answers 413 for bodies over `max_request_bytes`; set that no larger
than --authz-max-body-bytes). A body Envoy still marks partial
(`x-envoy-auth-partial-body: true`) is refused with 413: a truncated prompt cannot
be screened.

Identity comes from HTTP headers: tenant (required), account, project (names set by
--tenant-header / --account-header / --project-header), request id from
`x-request-id` (else Envoy's request id); the region is this enforcer's own.

Answers (`CheckResponse`):
- ALLOW / FLAG → OK; upstream gets `x-safeguards-decision-id` and
  `x-safeguards-action` (client-sent copies are overwritten).
- REDACT → OK with the same headers plus `x-safeguards-redact: 1`. ext_authz cannot
  rewrite a body: a gateway that must forward the masked prompt uses ext_proc
  (services/enforcer/edges/extproc.py) for that route; with ext_authz alone the header
  tells the upstream the request holds PII the policy wants masked.
- BLOCK → denied, HTTP 403; THROTTLE → denied, HTTP 429 with `Retry-After`.
- Client mistakes (no tenant header, malformed / oversize / non-UTF-8 body, a body
  that is not a chat request) → denied, HTTP 400 (413 for a partial body), never a
  gRPC error: a gRPC error would be Envoy's `failure_mode_allow` decision to make,
  and a refusal must never turn into an allow.
Every denial carries a JSON error body shaped like the provider's own error for the
request's flavor (`bodies.error_body`), `content-type: application/json` and, when
a decision was made, the decision id header. Decisions also go back as dynamic
metadata (namespace `envoy.filters.http.ext_authz`) for access logs.

Requests without a prompt — any method but POST (GET /v1/models, HEAD, OPTIONS,
DELETE …) — are allowed without screening or signal (`x-safeguards-action:
UNSCREENED`): there is no content to judge, and rate limits for them belong to the
rate-limit filter. POST routes that carry no chat body (file uploads, batches) should
disable ext_authz per route (`ExtAuthzPerRoute.disabled`) or they get 400.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from safeguards.v1 import signals_pb2

from services.common.errors import ServiceError
from services.common.tls import CallerIdentity, caller_identity
from services.enforcer.edges.bodies import (
    HTTP_STATUS_OF,
    ChatBody,
    IdentityHeaders,
    error_body,
    estimated_tokens,
    flavor_from_path,
    loggable,
    parse_chat_body,
    refusal,
)
from services.enforcer.policy import Action
from services.enforcer.requests import Identity, PromptRequest, ScreenResult
from services.enforcer.screening import Screener

log = logging.getLogger("safeguards.enforcer.authz")

DECISION_HEADER = "x-safeguards-decision-id"
ACTION_HEADER = "x-safeguards-action"
REDACT_HEADER = "x-safeguards-redact"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
UNSCREENED = "UNSCREENED"
OUR_HEADERS = (DECISION_HEADER, ACTION_HEADER, REDACT_HEADER)


@dataclass(frozen=True)
class AuthzConfig:
    headers: IdentityHeaders = IdentityHeaders()
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class HttpView:
    """The parts of Envoy's AttributeContext.HttpRequest the decision reads."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    envoy_id: str = ""


def http_view(req: ea.CheckRequest) -> HttpView:
    http = req.attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    for h in http.header_map.headers:  # Envoy's encode_raw_headers form
        headers[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    body = http.raw_body if http.raw_body else http.body.encode("utf-8")
    return HttpView(http.method.upper(), http.path, headers, body, http.id)


# ---- CheckResponse builders ------------------------------------------------------------
def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _metadata(decision_id: str, action: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"decision_id": decision_id, "action": action} if decision_id else {"action": action})
    return s


def ok_response(decision_id: str, action: str, *, redact: bool = False) -> ea.CheckResponse:
    headers = [_header(ACTION_HEADER, action)]
    if decision_id:
        headers.insert(0, _header(DECISION_HEADER, decision_id))
    if redact:
        headers.append(_header(REDACT_HEADER, "1"))
    # A client must not be able to forge our verdict to the upstream.
    remove = [h for h in OUR_HEADERS if h not in {x.header.key for x in headers}]
    return ea.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=ea.OkHttpResponse(headers=headers, headers_to_remove=remove),
        dynamic_metadata=_metadata(decision_id, action),
    )


def denied_response(
    http_status: int,
    flavor: str | None,
    message: str,
    *,
    decision_id: str = "",
    action: str = "",
    retry_after_s: int = 0,
    code: str = "",
) -> ea.CheckResponse:
    headers = [_header("content-type", "application/json")]
    if decision_id:
        headers.append(_header(DECISION_HEADER, decision_id))
    if action:
        headers.append(_header(ACTION_HEADER, action))
    if retry_after_s:
        headers.append(_header("retry-after", str(retry_after_s)))
    rpc_code = {403: code_pb2.PERMISSION_DENIED, 429: code_pb2.RESOURCE_EXHAUSTED}.get(
        http_status, code_pb2.INVALID_ARGUMENT
    )
    return ea.CheckResponse(
        status=status_pb2.Status(code=rpc_code, message=message[:200]),
        denied_response=ea.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status),
            headers=headers,
            body=error_body(flavor, http_status, message, code).decode("utf-8"),
        ),
        dynamic_metadata=_metadata(decision_id, action or f"HTTP_{http_status}"),
    )


def decision_response(flavor: str, result: ScreenResult) -> ea.CheckResponse:
    action = result.outcome.action
    refused = refusal(action, result.decision_id, result.outcome.retry_after_s)
    if refused is not None:
        return denied_response(
            refused.status,
            flavor,
            refused.message,
            decision_id=result.decision_id,
            action=action.name,
            retry_after_s=refused.retry_after_s,
            code=refused.code,
        )
    return ok_response(result.decision_id, action.name, redact=action is Action.REDACT)


# ---- the servicer ----------------------------------------------------------------------
class AuthzServicer(ea_grpc.AuthorizationServicer):
    def __init__(self, screener: Screener, config: AuthzConfig | None = None) -> None:
        self._screener = screener
        self._config = config or AuthzConfig()

    async def Check(self, request: ea.CheckRequest, context: grpc.aio.ServicerContext) -> ea.CheckResponse:
        return await self.check(http_view(request), context.time_remaining(), caller_identity(context))

    async def check(
        self, http: HttpView, caller_remaining_s: float | None, caller: CallerIdentity | None = None
    ) -> ea.CheckResponse:
        cfg = self._config
        path_flavor = flavor_from_path(http.path)
        if http.method != "POST":
            return ok_response("", UNSCREENED)
        tenant = http.headers.get(cfg.headers.tenant, "").strip()
        if not tenant:
            return self._bad_request(400, path_flavor, f"missing {cfg.headers.tenant} header")
        if http.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
            return self._bad_request(
                413, path_flavor, f"request body is larger than the gateway buffers (max {cfg.max_body_bytes} bytes)"
            )
        try:
            chat: ChatBody = parse_chat_body(
                http.body, http.headers.get("content-type", ""), max_bytes=cfg.max_body_bytes, path=http.path
            )
        except ServiceError as e:
            return self._bad_request(400, path_flavor, e.message)
        identity = Identity(
            tenant=tenant,
            account=http.headers.get(cfg.headers.account, ""),
            project=http.headers.get(cfg.headers.project, ""),
            model=chat.model,
            region=self._screener.region,
            request_id=http.headers.get(cfg.headers.request_id, "") or http.envoy_id,
        )
        try:
            result = await self._screener.screen_prompt(
                PromptRequest(
                    identity=identity,
                    messages=chat.messages,
                    estimated_tokens=estimated_tokens(chat),
                    surface=signals_pb2.SURFACE_EXT_AUTHZ,
                    caller=caller or CallerIdentity(),
                ),
                caller_remaining_s,
            )
        except ServiceError as e:
            status = HTTP_STATUS_OF.get(e.code)
            if status is None:  # not the client's fault: Envoy answers its status_on_error
                raise
            return self._bad_request(status, chat.flavor, e.message)
        return decision_response(chat.flavor, result)

    @staticmethod
    def _bad_request(status: int, flavor: str | None, message: str) -> ea.CheckResponse:
        # The message names a field or a limit; the only client-supplied bits in it are
        # quoted (a role, a content-type), and those stay out of the log.
        log.info("authz refused a malformed request", extra={"http_status": status, "error": loggable(message)})
        return denied_response(status, flavor, message)


def authz_binding_parts() -> tuple[str, object]:
    """The service's full name and its add_*_to_server function, for server.bindings()."""
    return (
        ea.DESCRIPTOR.services_by_name["Authorization"].full_name,
        ea_grpc.add_AuthorizationServicer_to_server,
    )
