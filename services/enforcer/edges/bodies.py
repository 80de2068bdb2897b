"""Provider request bodies → the screener's canonical messages.

Envoy's ext_authz and ext_proc hand the enforcer the raw HTTP body a client sent to
the model API; this module is the one place that reads it, so both surfaces agree on
what "the prompt" of a request is. Protocol-free and pure: bytes in, a `ChatBody`
or an `InvalidArgument` with a message a client can act on out — nothing else
escapes, whatever the bytes (a hypothesis test holds it to that).

Two request styles are understood:

* Anthropic Messages (`POST /v1/messages`): top-level `system` (a string or a list
  of text blocks), `messages[].content` a string or a list of blocks. Text comes from
  `text` blocks and from `tool_result` blocks (their string content or their text
  blocks); images, documents, `tool_use`, thinking and other blocks carry no text we
  screen and are counted in `ChatBody.ignored_blocks`.
* OpenAI Chat Completions (`POST /v1/chat/completions`): `messages[].content` a
  string, null (an assistant turn that only calls tools), or a list of parts whose
  `text` parts (and `refusal` parts) are read; roles system, developer, user,
  assistant, tool and (legacy) function.

Which style a body is (`flavor`) decides both which roles are valid and how a refusal
is shaped for the client, so the rule is explicit and in this order:

1. the request path when the caller knows it: `…/messages` → anthropic,
   `…/chat/completions` (or `…/completions`) → openai;
2. a top-level `system` field → anthropic (OpenAI puts the system prompt in messages);
3. any message with role system, developer, tool or function → openai;
4. `max_completion_tokens` present → openai;
5. `max_tokens` present → anthropic (it is required there, optional in OpenAI);
6. otherwise openai.

The model is optional (Bedrock and Vertex carry it in the URL, not the body) but a
string when present; `stream` a boolean; the token limit a non-negative integer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.enforcer.policy import Action

ANTHROPIC = "anthropic"
OPENAI = "openai"

CHARS_PER_TOKEN = 4  # same estimate as the screener's when the gateway sends none
TOKENS_PER_IGNORED_BLOCK = 85  # an image or document counts at least this much (OpenAI's low-detail image)

ANTHROPIC_ROLES = frozenset({"user", "assistant"})
OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OPENAI_ONLY_ROLES = frozenset({"system", "developer", "tool", "function"})
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class ChatBody:
    flavor: str  # "anthropic" | "openai"
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text) incl. the system prompt as role "system"
    stream: bool
    max_tokens: int
    ignored_blocks: int = 0  # content blocks with no screenable text (images, documents, tool calls)


def estimated_tokens(body: ChatBody) -> int:
    """Prompt tokens for the rate limiter's token limits, from text length: ~4
    characters a token, plus a floor per image/document block. An estimate, not a
    tokenizer: the gateway's own count (when it has one) is better."""
    chars = sum(len(text) for _role, text in body.messages)
    return max(1, -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_IGNORED_BLOCK * body.ignored_blocks)


def flavor_from_path(path: str | None) -> str | None:
    """The API style a request path names, or None when it names none."""
    if not path:
        return None
    p = path.split("?", 1)[0].split("#", 1)[0].rstrip("/").lower()
    if p.endswith("/chat/completions") or p.endswith("/completions"):
        return OPENAI
    if p.endswith("/messages"):
        return ANTHROPIC
    return None


def _json_content_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise InvalidArgument(f"request body is not valid JSON: {name} is not a JSON number")


def parse_chat_body(
    body: bytes,
    content_type: str = "application/json",
    *,
    max_bytes: int,
    path: str | None = None,
) -> ChatBody:
    """Parse a chat request body; raise InvalidArgument (and only that) when it is
    too large, not UTF-8, not JSON, not an object, has no messages, or has a field
    of the wrong type. `path`, when given, decides the flavor (see the module doc)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidArgument("request body must be bytes")
    body = bytes(body)
    if len(body) > max_bytes:
        raise InvalidArgument(f"request body is {len(body)} bytes (max {max_bytes})")
    if not _json_content_type(content_type or ""):
        raise InvalidArgument(f"content-type must be application/json, not {content_type[:80]!r}")
    if not body.strip():
        raise InvalidArgument("request body is empty; expected a JSON object with messages")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InvalidArgument("request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise InvalidArgument(f"request body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"request body must be a JSON object, not {_kind(doc)}")
    return _parse_doc(doc, path)


def _parse_doc(doc: dict[str, Any], path: str | None) -> ChatBody:
    raw_messages = doc.get("messages")
    if raw_messages is None:
        raise InvalidArgument("request body has no messages")
    if not isinstance(raw_messages, list):
        raise InvalidArgument(f"messages must be an array, not {_kind(raw_messages)}")
    if not raw_messages:
        raise InvalidArgument("messages must not be empty")
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict):
            raise InvalidArgument(f"messages[{i}] must be an object, not {_kind(m)}")
        if not isinstance(m.get("role"), str):
            raise InvalidArgument(f"messages[{i}].role must be a string")

    flavor = flavor_from_path(path) or _detect_flavor(doc, raw_messages)
    model = doc.get("model", "")
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise InvalidArgument(f"model must be a string, not {_kind(model)}")
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidArgument(f"stream must be a boolean, not {_kind(stream)}")
    limit_field = "max_tokens"
    if flavor == OPENAI and doc.get("max_completion_tokens") is not None:
        limit_field = "max_completion_tokens"
    max_tokens = doc.get(limit_field)
    if max_tokens is None:
        max_tokens = 0
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidArgument(f"{limit_field} must be a non-negative integer")

    counter = _Counter()
    messages: list[tuple[str, str]] = []
    if flavor == ANTHROPIC:
        if "system" in doc and doc["system"] is not None:
            system = _anthropic_system(doc["system"], counter)
            if system:
                messages.append(("system", system))
        for i, m in enumerate(raw_messages):
            role = m["role"]
            if role not in ANTHROPIC_ROLES:
                hint = "; put the system prompt in the top-level system field" if role == "system" else ""
                raise InvalidArgument(f"messages[{i}].role {role[:40]!r} is not user or assistant{hint}")
            messages.append((role, _anthropic_content(m.get("content"), f"messages[{i}].content", counter)))
    else:
        for i, m in enumerate(raw_messages):
            role = m["role"]
            if role not in OPENAI_ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role {role[:40]!r} is not one of {', '.join(sorted(OPENAI_ROLES))}"
                )
            messages.append((role, _openai_content(m.get("content"), f"messages[{i}].content", counter)))
    _check_unicode(model, "model")
    for role, content in messages:
        _check_unicode(content, f"{role} message")
    return ChatBody(flavor, model, tuple(messages), stream, max_tokens, counter.n)


def _detect_flavor(doc: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    if "system" in doc:
        return ANTHROPIC
    if any(m["role"] in OPENAI_ONLY_ROLES for m in messages):
        return OPENAI
    if "max_completion_tokens" in doc:
        return OPENAI
    if "max_tokens" in doc:
        return ANTHROPIC
    return OPENAI


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def _anthropic_system(value: Any, counter: _Counter) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidArgument(f"system must be a string or an array of text blocks, not {_kind(value)}")
    parts = []
    for i, block in enumerate(value):
        where = f"system[{i}]"
        btype = _block_type(block, where)
        if btype != "text":
            raise InvalidArgument(f"{where} must be a text block, not {btype[:40]!r}")
        parts.append(_string_field(block, "text", where))
    return "\n".join(parts)


class _Path:
    """Where a block sits in the body ("messages[0].content[2].content[1]"), spelled
    out only when an error message needs it.

    Why not an f-string per block: tool_result blocks nest up to JSON's depth limit,
    and a path string built for every block costs its depth, so a body of many small
    blocks deep down cost blocks x depth. A link to the parent costs the same at
    every depth."""

    __slots__ = ("_parent", "_step")

    def __init__(self, parent: _Path | str, step: int | str) -> None:
        self._parent = parent
        self._step = step

    def __str__(self) -> str:
        steps: list[str] = []
        node: _Path | str = self
        while isinstance(node, _Path):
            steps.append(f"[{node._step}]" if isinstance(node._step, int) else node._step)
            node = node._parent
        return node + "".join(reversed(steps))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


_Where = _Path | str
# Appends the text segments of one block to `out`.
_BlockReader = Callable[[dict[str, Any], str, _Where, _Counter, list[str]], None]


def _anthropic_content(value: Any, where: _Where, counter: _Counter) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise InvalidArgument(f"{where} is required")
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a string or an array of content blocks, not {_kind(value)}")
    return _joined_blocks(value, where, counter, _anthropic_block)


def _anthropic_block(block: dict[str, Any], btype: str, where: _Where, counter: _Counter, out: list[str]) -> None:
    if btype == "text":
        out.append(_string_field(block, "text", where))
        return
    if btype == "tool_result":
        content = block.get("content")
        if content is None:
            return
        if isinstance(content, str):
            out.append(content)
            return
        if not isinstance(content, list):
            raise InvalidArgument(f"{where}.content must be a string or an array of blocks, not {_kind(content)}")
        _blocks(content, _Path(where, ".content"), counter, _anthropic_block, out)
        return
    counter.n += 1  # image, document, tool_use, thinking, …: nothing we screen as text


def _openai_content(value: Any, where: _Where, counter: _Counter) -> str:
    if value is None:  # an assistant message that only calls tools
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a string, null or an array of parts, not {_kind(value)}")
    return _joined_blocks(value, where, counter, _openai_part)


def _openai_part(part: dict[str, Any], ptype: str, where: _Where, counter: _Counter, out: list[str]) -> None:
    if ptype == "text":
        out.append(_string_field(part, "text", where))
    elif ptype == "refusal":
        out.append(_string_field(part, "refusal", where))
    else:
        counter.n += 1  # image_url, input_audio, file, …


def _joined_blocks(blocks: list[Any], where: _Where, counter: _Counter, one: _BlockReader) -> str:
    """The blocks' texts joined by newlines, nested tool results included."""
    out: list[str] = []
    _blocks(blocks, where, counter, one, out)
    return "\n".join(out)


def _blocks(blocks: list[Any], where: _Where, counter: _Counter, one: _BlockReader, out: list[str]) -> None:
    """Append the text segments of `blocks` to `out`, one flat list for the whole
    content however deep tool results nest, joined once at the end: joining at every
    level copied the text once per level (depth x size).

    The result is what joining each level's texts by newlines gives: a nested list
    that yields no text still stands for one empty segment, as its "" did."""
    before = len(out)
    for i, block in enumerate(blocks):
        w = _Path(where, i)
        one(block, _block_type(block, w), w, counter, out)
    if len(out) == before:
        out.append("")


def _block_type(block: Any, where: _Where) -> str:
    if not isinstance(block, dict):
        raise InvalidArgument(f"{where} must be an object, not {_kind(block)}")
    btype = block.get("type")
    if not isinstance(btype, str):
        raise InvalidArgument(f"{where}.type must be a string")
    return btype


def _string_field(block: dict[str, Any], name: str, where: _Where) -> str:
    value = block.get(name)
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}.{name} must be a string, not {_kind(value)}")
    return value


def _check_unicode(text: str, what: str) -> None:
    """JSON's \\ud800-style escapes can smuggle lone surrogates past the UTF-8
    check; they are not text, and would break every encoder downstream."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} contains an invalid \\u escape (lone surrogate)") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# Error bodies in each provider's own shape, so a client SDK raises its usual error
# type for a refusal by the gateway (shared by ext_authz and ext_proc).
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_denied",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def error_body(flavor: str | None, status: int, message: str, code: str = "") -> bytes:
    """A JSON error body shaped like `flavor`'s API (OpenAI's when unknown).
    `message` goes to the client: it must hold no screened content."""
    if flavor == ANTHROPIC:
        doc: dict[str, Any] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message},
        }
    else:
        doc = {
            "error": {
                "message": message,
                "type": _OPENAI_ERROR_TYPES.get(status, "api_error"),
                "param": None,
                "code": code or None,
            }
        }
    return json.dumps(doc, separators=(",", ":")).encode()


#: gRPC codes of the screener's refusals -> the HTTP status Envoy answers the client with.
HTTP_STATUS_OF = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "PERMISSION_DENIED": 403, "NOT_FOUND": 404}
BLOCK_MESSAGE = "request blocked by content policy"
THROTTLE_MESSAGE = "rate limited; retry after the time in the Retry-After header"


@dataclass(frozen=True)
class Refusal:
    """How a BLOCK or THROTTLE decision is answered over HTTP, the same on every Envoy API
    (ext_authz and ext_proc): status, the provider-shaped error's message and code, and
    the Retry-After seconds (THROTTLE)."""

    status: int
    message: str
    code: str
    retry_after_s: int = 0

    def body(self, flavor: str | None) -> bytes:
        return error_body(flavor, self.status, self.message, self.code)


def refusal(action: Action, decision_id: str, retry_after_s: float) -> Refusal | None:
    """The HTTP answer to a decision that refuses the request; None when it is served."""
    if action is Action.BLOCK:
        return Refusal(403, f"{BLOCK_MESSAGE} (decision {decision_id})", "content_policy_violation")
    if action is Action.THROTTLE:
        return Refusal(429, THROTTLE_MESSAGE, "rate_limit_exceeded", max(1, math.ceil(retry_after_s or 1)))
    return None


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")  # Python reprs of client strings


def loggable(message: str) -> str:
    """An error message about a client's body, fit for a log line: the client strings it
    quotes (roles, types, keys) are masked, and it is cut to 200 characters."""
    return _QUOTED.sub("'…'", message)[:200]


@dataclass(frozen=True)
class IdentityHeaders:
    """The HTTP headers (lower case) that carry who is calling, for both Envoy adapters."""

    tenant: str = "x-safeguards-tenant"
    account: str = "x-safeguards-account"
    project: str = "x-safeguards-project"
    request_id: str = "x-request-id"


# ---- provider-shaped bodies: rewriting a request, reading and replacing a completion ----
def map_texts(doc: dict[str, Any], flavor: str, fn) -> None:
    """Apply `fn` to every text field `bodies.parse_chat_body` reads, in place; no
    other field changes."""

    def blocks(items: list, tool_results: bool) -> None:
        for b in items:
            if not isinstance(b, dict):
                continue
            t = b.get("type")
            if t == "text" and isinstance(b.get("text"), str):
                b["text"] = fn(b["text"])
            elif t == "refusal" and flavor != ANTHROPIC and isinstance(b.get("refusal"), str):
                b["refusal"] = fn(b["refusal"])
            elif t == "tool_result" and tool_results:
                if isinstance(b.get("content"), str):
                    b["content"] = fn(b["content"])
                elif isinstance(b.get("content"), list):
                    blocks(b["content"], True)

    anthropic = flavor == ANTHROPIC
    if anthropic:
        if isinstance(doc.get("system"), str):
            doc["system"] = fn(doc["system"])
        elif isinstance(doc.get("system"), list):
            blocks(doc["system"], False)
    for m in doc.get("messages") or ():
        if not isinstance(m, dict):
            continue
        if isinstance(m.get("content"), str):
            m["content"] = fn(m["content"])
        elif isinstance(m.get("content"), list):
            blocks(m["content"], anthropic)


def completion_text(flavor: str, doc: Any) -> str:
    """Everything the model wrote in a non-streamed completion response: its text, its
    thinking or reasoning, and its tool calls' arguments (as the streamed formats in
    sse.py read them)."""
    if not isinstance(doc, dict):
        return ""
    parts: list[str] = []
    if flavor == ANTHROPIC:
        for b in doc.get("content") or ():
            if not isinstance(b, dict):
                continue
            if b.get("type") in ("text", "thinking") and isinstance(b.get(b["type"]), str):
                parts.append(b[b["type"]])
            elif b.get("type") == "tool_use" and b.get("input"):
                parts.append(json.dumps(b["input"], ensure_ascii=False))
        return "\n".join(parts)
    for c in doc.get("choices") or ():
        msg = c.get("message") if isinstance(c, dict) else None
        if not isinstance(msg, dict):
            continue
        parts.extend(msg[f] for f in ("reasoning_content", "reasoning", "content") if isinstance(msg.get(f), str))
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                parts.append(fn["arguments"])
    return "\n".join(parts)


def replaced_completion(flavor: str, doc: Any, replacement: str) -> bytes:
    """A well-formed completion response whose only content is `replacement`."""
    d = doc if isinstance(doc, dict) else {}
    if flavor == ANTHROPIC:
        out: dict[str, Any] = {
            "id": d.get("id", ""),
            "type": "message",
            "role": "assistant",
            "model": d.get("model", ""),
            "content": [{"type": "text", "text": replacement}],
            "stop_reason": "refusal",
            "stop_sequence": None,
        }
    else:
        out = {
            "id": d.get("id", ""),
            "object": "chat.completion",
            "created": d.get("created", 0),
            "model": d.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": replacement},
                    "finish_reason": "content_filter",
                }
            ],
        }
    if "usage" in d:
        out["usage"] = d["usage"]
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
