"""Envoy's external processing API (`envoy.service.ext_proc.v3.ExternalProcessor`):
one bidirectional stream per HTTP request, screening the prompt on the way in and
the completion on the way out, with the same screener as the native API.

Expected filter config: request headers SEND, request body BUFFERED (STREAMED
works too: chunks are held back and released, possibly redacted, at the end),
response headers SEND, response body STREAMED (BUFFERED works too).

- request headers: tenant / account / project / request id come from headers
  (the names ext_authz uses); always CONTINUE.
- request body: parsed by `bodies.parse_chat_body`, screened by `screen_prompt`:
  BLOCK → 403, THROTTLE → 429 + Retry-After (both an ImmediateResponse with a JSON
  error in the provider's own shape), REDACT → the same JSON with each message text
  masked, ALLOW/FLAG → CONTINUE with x-safeguards-decision-id / -action headers.
  A malformed, oversize or non-UTF-8 body → 400, never a broken stream.
- response body: server-sent events decoded incrementally; text deltas go to a
  `CompletionSession`. Bytes pass unchanged while allowed (an event split across
  chunks is held back until it is complete, so no byte leaves before its text was
  seen); on a cut the rest of the stream is replaced by a well-formed ending in the
  stream's own format and every later chunk is dropped. A non-streamed JSON
  completion is screened once and, on a cut, replaced by a provider-shaped one.
- a compressed response (`content-encoding`; screened routes strip the request's
  accept-encoding, but an upstream may compress anyway): gzip and deflate are
  decoded as they stream (bounded: `INFLATE_FACTOR` x --max-completion-bytes of
  output at most), screened, and passed on decoded with content-encoding removed;
  any other encoding is refused: the body is replaced by the safe ending, never
  passed unscreened.
- with --extproc-after-authz, a request ext_authz decided REDACT
  (`x-safeguards-redact: 1`, which only ext_authz can set) is masked here: ext_authz
  cannot rewrite a body.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from safeguards.v1 import signals_pb2

from services.common.errors import InvalidArgument, ServiceError
from services.common.server import Draining
from services.common.tls import CallerIdentity, caller_identity
from services.enforcer.edges.authz import ACTION_HEADER, DECISION_HEADER, REDACT_HEADER
from services.enforcer.edges.bodies import (
    HTTP_STATUS_OF,
    ChatBody,
    IdentityHeaders,
    completion_text,
    error_body,
    estimated_tokens,
    flavor_from_path,
    loggable,
    map_texts,
    parse_chat_body,
    refusal,
    replaced_completion,
)
from services.enforcer.edges.sse import SSEDecoder, SSEError, SSEEvent, StreamFormat, stream_format
from services.enforcer.policy import Action
from services.enforcer.requests import Identity, PromptRequest, ScreenResult
from services.enforcer.screening import Screener
from services.enforcer.streaming import DRAINED, CompletionSession

log = logging.getLogger("safeguards.enforcer.extproc")

#: A compressed completion is decoded to at most this many times --max-completion-bytes
#: (room for the SSE framing around the text; beyond it the stream is cut: a bomb).
INFLATE_FACTOR = 32
#: Content-encodings decoded here (zlib's automatic header detection: gzip or zlib).
INFLATABLE = frozenset({"gzip", "x-gzip", "deflate"})
#: Bodies longer than this (bytes) are masked and re-serialised on a worker thread.
MASK_INLINE_CHARS = 8192


@dataclass(frozen=True)
class ExtProcConfig:
    headers: IdentityHeaders = IdentityHeaders()
    max_body_bytes: int = 1024 * 1024
    max_completion_bytes: int = 1024 * 1024
    #: ext_authz runs before ext_proc in the same filter chain and screens the prompt.
    after_authz: bool = False
    #: On SIGTERM, a streamed completion still running this close to the end of the
    #: drain's grace is ended with its format's well-formed ending (services.common.server.Draining).
    draining: Draining | None = None
    drain_end_margin_s: float = 1.0


def drain_due(config: ExtProcConfig) -> bool:
    """Whether a long stream must end now: the process is draining and its grace is
    nearly over."""
    left = config.draining.time_left() if config.draining is not None else None
    return left is not None and left <= config.drain_end_margin_s


# ---- message builders ---------------------------------------------------------------
def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _mutation(headers: dict[str, str] | None = None, remove: tuple[str, ...] = ()) -> ep.HeaderMutation:
    return ep.HeaderMutation(set_headers=[_header(k, v) for k, v in (headers or {}).items()], remove_headers=remove)


def immediate(
    status: int, body: bytes, headers: dict[str, str] | None = None, details: str = ""
) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_mutation({"content-type": "application/json", **(headers or {})}),
            body=body,
            details=details,
        )
    )


def _common(
    headers: dict[str, str] | None = None, body: bytes | None = None, remove: tuple[str, ...] = ()
) -> ep.CommonResponse:
    common = ep.CommonResponse()
    if headers or remove:
        common.header_mutation.CopyFrom(_mutation(headers, remove))
    if body is not None:
        common.body_mutation.body = body
    return common


def _decision_headers(result: ScreenResult) -> dict[str, str]:
    return {DECISION_HEADER: result.decision_id, ACTION_HEADER: result.outcome.action.name}


def headers_of(msg: ep.HttpHeaders) -> dict[str, str]:
    """Lower-cased names; Envoy sends values in `raw_value` (older ones in `value`)."""
    out: dict[str, str] = {}
    for h in msg.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out[h.key.lower()] = value
    return out


def sse_bytes(events: list[SSEEvent]) -> bytes:
    """`events` written back as server-sent events."""
    out = []
    for ev in events:
        lines = [f"event: {ev.event}"] if ev.event else []
        if ev.id is not None:
            lines.append(f"id: {ev.id}")
        lines += [f"data: {line}" for line in ev.data.split("\n")]
        out.append("\n".join(lines) + "\n\n")
    return "".join(out).encode()


# ---- one HTTP request ----------------------------------------------------------------
class HttpExchange:
    """The state of one ext_proc stream: what the request said, and the completion
    session of its response. `handle` answers each ProcessingRequest exactly once."""

    def __init__(
        self, screener: Screener, config: ExtProcConfig, caller_remaining=None, caller: CallerIdentity | None = None
    ) -> None:
        self._caller = caller or CallerIdentity()
        #: Set when Envoy runs this processor in observability mode (decided, not enforced).
        self.observe_only = False
        self._screener = screener
        self._config = config
        self._remaining = caller_remaining
        self._headers: dict[str, str] = {}
        self._req_body = bytearray()
        self._req_streamed = False
        self.chat: ChatBody | None = None
        self.prompt: ScreenResult | None = None
        self._prompt_id: str | None = None  # set once the prompt was screened (here or by ext_authz)
        self.session: CompletionSession | None = None
        self._sse = False
        self._format: StreamFormat | None = None
        self._decoder: SSEDecoder | None = None
        self._held = b""
        self._resp_body = bytearray()
        self._resp_streamed = False
        self._dropping = False  # cut: every later response chunk is dropped
        self._inflater: Any = None  # zlib decompressobj of a gzip/deflate response
        self._inflate_left = 0
        self._undecodable = ""  # the content-encoding of a response that cannot be decoded
        self._identity = Identity(tenant="")

    @property
    def flavor(self) -> str | None:
        return self.chat.flavor if self.chat else flavor_from_path(self._headers.get(":path"))

    def close(self) -> None:
        """The stream ended: a completion still open was abandoned by someone."""
        if self.session is not None:
            self.session.abandon()

    def _error(self, status: int, message: str) -> ep.ProcessingResponse:
        log.info("ext_proc refused", extra={"http_status": status, "error": loggable(message)})
        return immediate(status, error_body(self.flavor, status, message), details=message[:200])

    async def handle(self, req: ep.ProcessingRequest) -> ep.ProcessingResponse:
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            self._headers = headers_of(req.request_headers)
            return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=ep.CommonResponse()))
        if kind == "request_body":
            return await self._request_body(req.request_body)
        if kind == "response_headers":
            return self._response_headers(req.response_headers)
        if kind == "response_body":
            return await self._response_body(req.response_body)
        if kind == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        if kind == "response_trailers":
            if self.session is not None and not self.session.closed:
                await self.session.finish()
            return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
        raise InvalidArgument("ProcessingRequest carries no request, headers, body or trailers")

    # ---- request ---------------------------------------------------------------------
    async def _request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        if self.chat is not None or self._prompt_id is not None:
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse()))
        self._req_body += body.body
        limit = self._config.max_body_bytes
        if len(self._req_body) > limit:
            return self._error(400, f"request body is over {limit} bytes")
        if not body.end_of_stream:
            # STREAMED request body: hold every chunk back until the whole prompt is screened.
            self._req_streamed = True
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_common(body=b"")))
        raw = bytes(self._req_body)
        self._req_body = bytearray()
        try:
            chat = parse_chat_body(
                raw, self._headers.get("content-type", ""), max_bytes=limit, path=self._headers.get(":path")
            )
        except InvalidArgument as exc:
            return self._error(400, exc.message)
        h = self._headers
        identity = Identity(
            tenant=h.get(self._config.headers.tenant, ""),
            account=h.get(self._config.headers.account, ""),
            project=h.get(self._config.headers.project, ""),
            model=chat.model,
            request_id=h.get(self._config.headers.request_id, "")[:128],
        )
        if self._config.after_authz and not self.observe_only:
            # ext_authz earlier in the chain screened (and counted) this prompt and set
            # its decision id on the request; screen only the completion here. (An
            # observe-only route runs without ext_authz: its processor screens both.)
            try:
                self._screener.admit(identity, self._caller)
            except ServiceError as exc:
                return self._error(HTTP_STATUS_OF.get(exc.code, 500), exc.message)
            self.chat = chat
            self._identity = identity
            self._prompt_id = h.get(DECISION_HEADER, "")[:64]
            if h.get(REDACT_HEADER) == "1":
                new = await self._masked_after_authz(raw, chat, identity.tenant)
                return ep.ProcessingResponse(
                    request_body=ep.BodyResponse(response=_common({"content-length": str(len(new))}, new))
                )
            body_out = raw if self._req_streamed else None
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_common(body=body_out)))
        self.chat = chat
        try:
            result = await self._screener.screen_prompt(
                PromptRequest(
                    identity=identity,
                    messages=chat.messages,
                    estimated_tokens=estimated_tokens(chat),
                    surface=signals_pb2.SURFACE_EXT_PROC_REQUEST,
                    caller=self._caller,
                    observe_only=self.observe_only,
                ),
                self._remaining() if self._remaining else None,
            )
        except ServiceError as exc:
            self.chat = None
            return self._error(HTTP_STATUS_OF.get(exc.code, 500), exc.message)
        self.prompt = result
        self._prompt_id = result.decision_id
        self._identity = identity
        action = result.outcome.action
        headers = _decision_headers(result)
        refused = refusal(action, result.decision_id, result.outcome.retry_after_s)
        if refused is not None:
            if refused.retry_after_s:
                headers["retry-after"] = str(refused.retry_after_s)
            return immediate(refused.status, refused.body(chat.flavor), headers)
        if action is Action.REDACT:
            doc = json.loads(raw)
            if result.redactor is not None:
                map_texts(doc, chat.flavor, result.redactor)
            new = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            headers["content-length"] = str(len(new))
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_common(headers, new)))
        body_out = raw if self._req_streamed else None
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_common(headers, body_out)))

    async def _masked_after_authz(self, raw: bytes, chat: ChatBody, tenant: str) -> bytes:
        """The request body ext_authz decided REDACT, with the PII the tenant's policy
        screens masked in every text (what the screener masks on its own REDACT)."""
        redactor = await self._screener.redactor(tenant, chat.messages)

        def mask() -> bytes:
            doc = json.loads(raw)
            map_texts(doc, chat.flavor, redactor)
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

        return await asyncio.to_thread(mask) if len(raw) > MASK_INLINE_CHARS else mask()

    # ---- response --------------------------------------------------------------------
    def _response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        h = headers_of(msg)
        status = h.get(":status", "200")
        remove: tuple[str, ...] = ()
        if self.chat is not None and self._prompt_id is not None and status.startswith("2") and self.session is None:
            self._sse = "text/event-stream" in h.get("content-type", "").lower()
            self.session = self._screener.open_completion(
                self._identity,
                surface=signals_pb2.SURFACE_EXT_PROC_RESPONSE,
                prompt_decision_id=self._prompt_id,
                max_bytes=self._config.max_completion_bytes,
                caller_remaining=self._remaining,
                caller=self._caller,
                observe_only=self.observe_only,
            )
            if self._sse:
                self._format = stream_format(self.chat.flavor)
                self._decoder = SSEDecoder()
            # The body may change length; Envoy must not forward a stale content-length.
            remove = ("content-length",)
            encoding = h.get("content-encoding", "").strip().lower()
            if encoding and encoding != "identity":
                # Passed on decoded (or refused): the client must not decode it again.
                remove = ("content-length", "content-encoding")
                if encoding in INFLATABLE:
                    self._inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)
                    self._inflate_left = INFLATE_FACTOR * self._config.max_completion_bytes
                else:
                    self._undecodable = encoding[:40]
        return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=_common(remove=remove)))

    def _body(self, data: bytes | None) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=_common(body=data)))

    async def _response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        session = self.session
        if session is None:
            return self._body(None)
        if self._dropping:
            return self._body(b"")
        if self._undecodable or self._inflater is not None:
            return await self._encoded_chunk(session, body)
        if self._sse:
            return await self._sse_chunk(session, body)
        return await self._json_chunk(session, body)

    async def _encoded_chunk(self, session: CompletionSession, body: ep.HttpBody) -> ep.ProcessingResponse:
        """A chunk of a compressed response: decoded (bounded), screened like a plain one,
        and passed on decoded; an encoding we cannot decode, or a bomb, is cut."""
        try:
            if self._inflater is None:
                raise InvalidArgument(f"completion has content-encoding {self._undecodable!r}, which is not decoded")
            plain = self._inflater.decompress(body.body, self._inflate_left + 1)
            if body.end_of_stream:
                plain += self._inflater.flush()
            self._inflate_left -= len(plain)
            if self._inflate_left < 0 or self._inflater.unconsumed_tail:
                raise InvalidArgument("decoded completion is over the size limit")
        except (zlib.error, InvalidArgument) as exc:
            log.warning("compressed completion cut unscreened", extra={"error": str(exc)[:200]})
            session.abandon()
            if self._sse:
                return self._cut(session.replacement)
            self._dropping = True
            flavor = self.chat.flavor if self.chat else "openai"
            return self._body(replaced_completion(flavor, None, session.replacement))
        chunk = ep.HttpBody(body=plain, end_of_stream=body.end_of_stream)
        resp = await (self._sse_chunk(session, chunk) if self._sse else self._json_chunk(session, chunk))
        common = resp.response_body.response
        if not common.HasField("body_mutation"):  # "pass unchanged" means the decoded bytes here
            common.body_mutation.body = plain
        return resp

    def _cut(
        self, replacement: str, prelude: list[SSEEvent] | None = None, before: StreamFormat | None = None
    ) -> ep.ProcessingResponse:
        """End the stream with `replacement`. `prelude`: events of the cut chunk that go
        out first (no text in them), with `before` the format's state ahead of that chunk,
        so the ending continues from exactly what the client was sent. The state is
        `before` plus the prelude even when the prelude is empty: the rest of the chunk is
        withheld, so a block it opened or closed (Anthropic: a thinking or tool_use block
        ending and a text block starting) never reached the client, and an ending that
        named it would break the client's parser."""
        assert self._format is not None
        self._dropping = True
        self._held = b""
        if before is not None:
            for ev in prelude or ():
                before.text_of(ev)
            self._format = before
        return self._body(sse_bytes(prelude or []) + self._format.terminal(replacement))

    async def _sse_chunk(self, session: CompletionSession, body: ep.HttpBody) -> ep.ProcessingResponse:
        assert self._decoder is not None and self._format is not None
        data = body.body
        buf = self._held + data
        if session.closed:  # finished (the format's end marker came): the rest passes
            self._held = b""
            return self._body(None if buf == data else buf)
        replacement = session.replacement
        try:
            events = self._decoder.feed(data)
            before = copy.copy(self._format)
            texts = [self._format.text_of(ev) for ev in events]
            text = "".join(texts)
            # On a cut, the events of this chunk before its first text (Anthropic's
            # message_start, content_block_start) still go out: an SDK cannot parse a
            # stream that ends without having started.
            prelude = events[: next((i for i, t in enumerate(texts) if t), len(events))]
            verdict = await session.feed(text) if text else None
            if verdict is not None and verdict.cut:
                return self._cut(replacement, prelude, before)
            if body.end_of_stream or self._format.done:
                if not session.closed:
                    verdict = await session.finish()
                    if verdict.cut:
                        return self._cut(replacement, prelude, before)
        except (SSEError, InvalidArgument) as exc:
            # Undecodable or over the size limit: what follows cannot be screened.
            log.warning("completion stream cut unscreened", extra={"error": str(exc)})
            session.abandon()
            return self._cut(replacement)
        keep = 0 if body.end_of_stream else self._decoder.pending_bytes
        out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        if not session.closed and drain_due(self._config):
            # Shutting down: what was screened goes out, then the stream ends as a
            # completion cut at its length limit ends, before the server cancels it.
            session.end_early(DRAINED)
            self._dropping = True
            self._held = b""
            return self._body(out + self._format.truncated())
        return self._body(None if out == data else out)

    async def _json_chunk(self, session: CompletionSession, body: ep.HttpBody) -> ep.ProcessingResponse:
        self._resp_body += body.body
        limit = 2 * self._config.max_completion_bytes + 64 * 1024
        if not body.end_of_stream and len(self._resp_body) <= limit:
            self._resp_streamed = True
            return self._body(b"")  # hold back until the whole completion is screened
        raw = bytes(self._resp_body)
        self._resp_body = bytearray()
        flavor = self.chat.flavor if self.chat else "openai"
        replacement = session.replacement
        doc: Any = None
        try:
            if len(raw) > limit:
                raise InvalidArgument(f"completion body is over {limit} bytes")
            if raw.strip():
                doc = json.loads(raw)
            text = completion_text(flavor, doc)
            verdict = await session.feed(text) if text else None
            if verdict is None or not verdict.cut:
                verdict = await session.finish()
        except (ValueError, ServiceError) as exc:
            # Not JSON, or too large: a completion that cannot be screened is not served.
            log.warning("completion body replaced unscreened", extra={"error": str(exc)[:200]})
            session.abandon()
            self._dropping = True
            return self._body(replaced_completion(flavor, doc, replacement))
        if verdict.cut:
            self._dropping = True
            return self._body(replaced_completion(flavor, doc, replacement))
        return self._body(raw if self._resp_streamed else None)


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):
    def __init__(self, screener: Screener, config: ExtProcConfig) -> None:
        self._screener = screener
        self._config = config

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext):
        exchange = HttpExchange(self._screener, self._config, context.time_remaining, caller_identity(context))
        try:
            async for req in request_iterator:
                if req.observability_mode:
                    # Envoy's observability mode: it sends copies and waits for nothing;
                    # decide and record as usual, answer nothing.
                    exchange.observe_only = True
                    await exchange.handle(req)
                    continue
                yield await exchange.handle(req)
        finally:
            exchange.close()
