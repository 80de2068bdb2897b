"""Server-sent events, decoded incrementally, and the two streaming formats the
enforcer screens in Envoy's ext_proc response path:

- Anthropic Messages: `content_block_delta` events whose delta is a `text_delta`, a
  `thinking_delta` or a tool call's `input_json_delta` carry the text (a block's start
  may carry some too);
- OpenAI Chat Completions: `data:` chunks whose `choices[].delta` carry the text in
  `content`, in reasoning fields (`reasoning_content`, `reasoning`) and in tool calls'
  `function.arguments`, ended by `data: [DONE]`.

Everything the model writes is screened, not only its visible text: a tool call's
arguments (a shell command, a message to send) and its reasoning are completion text
too.

The decoder takes bytes split anywhere (inside a line, a UTF-8 sequence or a CRLF)
and says how many trailing bytes belong to an event that is not complete yet, so
the caller can hold them back: bytes reach the client only once the text they carry
has been seen. On a cut, each format writes its own well-formed ending: the
replacement text, a stop reason that says the content was filtered, the end marker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 1 << 20


class SSEError(ValueError):
    """The stream cannot be decoded (an event over the size limit)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # the `event:` field; "" means the default type, "message"
    data: str
    id: str | None = None


class SSEDecoder:
    """The WHATWG event-stream parsing rules, fed bytes as they arrive."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._line = bytearray()
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._first = True
        self._data: list[str] = []
        # Characters in `_data`, kept as lines arrive: summing the list at every line made
        # an event of k `data:` lines cost k² (a stream of one-byte lines with no
        # blank line between them).
        self._data_bytes = 0
        self._event = ""
        self._id: str | None = None
        self._dirty = False  # the current event has fields
        self._pending = 0  # bytes since the last point between events

    @property
    def pending_bytes(self) -> int:
        """Trailing bytes fed so far that belong to an unfinished line or event."""
        return self._pending

    def feed(self, data: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        i, n = 0, len(data)
        if self._skip_lf and i < n:
            self._skip_lf = False
            if data[i] == 0x0A:
                i += 1
                if not self._dirty and not self._line:
                    self._pending = 0
                else:
                    self._pending += 1
        while i < n:
            m = _EOL.search(data, i)
            if m is None:
                self._line += data[i:]
                self._pending += n - i
                if len(self._line) > self._max:
                    raise SSEError(f"server-sent event line over {self._max} bytes")
                break
            j = m.start()
            end = j + 1
            if data[j] == 0x0D:
                if end < n:
                    if data[end] == 0x0A:
                        end += 1
                else:
                    self._skip_lf = True
            self._line += data[i:j]
            self._pending += end - i
            ev = self._process(bytes(self._line))
            self._line.clear()
            if ev is not None:
                events.append(ev)
            if not self._dirty:
                self._pending = 0
            i = end
        return events

    def _process(self, line: bytes) -> SSEEvent | None:
        if self._first:
            self._first = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line:
            self._dirty = False
            if not self._data:
                self._event = ""
                return None
            ev = SSEEvent(self._event, "\n".join(self._data), self._id)
            self._data = []
            self._data_bytes = 0
            self._event = ""
            return ev
        if line[0] == 0x3A:  # ":" comment
            return None
        if self._data_bytes > self._max:
            raise SSEError(f"server-sent event over {self._max} bytes")
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        self._dirty = True
        field = name.decode("utf-8", "replace")
        text = value.decode("utf-8", "replace")
        if field == "data":
            self._data.append(text)
            self._data_bytes += len(text)
        elif field == "event":
            self._event = text
        elif field == "id" and "\0" not in text:
            self._id = text
        return None


def _json(data: str) -> Any:
    if not data.startswith("{"):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class StreamFormat(Protocol):
    flavor: str
    done: bool

    def text_of(self, ev: SSEEvent) -> str:
        """The completion text `ev` carries ("" if none); also tracks stream state."""
        ...

    def terminal(self, replacement: str) -> bytes:
        """Well-formed events that end the stream with `replacement` as its last text."""
        ...

    def truncated(self) -> bytes:
        """Well-formed events that end the stream here, as a completion cut short by its
        length limit ends (the server is shutting down: no refusal, no text added)."""
        ...


#: Anthropic delta type -> the field holding its text (signatures, citations: none).
_ANTHROPIC_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
#: OpenAI-compatible delta fields holding text (reasoning: the field names that
#: OpenAI-compatible servers stream a model's reasoning in).
_OPENAI_DELTA_TEXT = ("content", "reasoning_content", "reasoning", "refusal")


class AnthropicStream:
    flavor = "anthropic"

    def __init__(self) -> None:
        self.done = False
        self._open: int | None = None  # index of the open content block
        self._open_type = ""
        self._next = 0

    def text_of(self, ev: SSEEvent) -> str:
        obj = _json(ev.data)
        if not isinstance(obj, dict):
            return ""
        kind = obj.get("type") or ev.event
        if kind == "content_block_delta":
            idx = obj.get("index")
            if isinstance(idx, int):
                self._open = idx
                self._next = max(self._next, idx + 1)
            delta = obj.get("delta")
            if isinstance(delta, dict):
                field = _ANTHROPIC_DELTA_TEXT.get(delta.get("type"))
                if field == "text":
                    self._open_type = "text"
                if field:
                    return _str(delta.get(field))
            return ""
        if kind == "content_block_start":
            idx = obj.get("index")
            block = obj.get("content_block")
            if isinstance(idx, int):
                self._open = idx
                self._next = max(self._next, idx + 1)
            self._open_type = block.get("type", "") if isinstance(block, dict) else ""
            if not isinstance(block, dict):
                return ""
            if block.get("type") in ("text", "thinking"):
                return _str(block.get(block["type"]))
            if block.get("type") == "tool_use" and block.get("input"):
                return _dumps(block["input"])  # usually {} (arguments stream as deltas)
            return ""
        if kind == "content_block_stop":
            self._open = None
            self._open_type = ""
        elif kind == "message_stop":
            self.done = True
        return ""

    def terminal(self, replacement: str) -> bytes:
        out: list[tuple[str, dict]] = []
        if self._open is not None and self._open_type == "text":
            idx = self._open
        else:
            if self._open is not None:
                out.append(("content_block_stop", {"type": "content_block_stop", "index": self._open}))
            idx = self._next
            out.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}},
                )
            )
        out += [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": replacement}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": idx}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "refusal", "stop_sequence": None},
                    "usage": {"output_tokens": 0},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.done = True
        return "".join(f"event: {name}\ndata: {_dumps(obj)}\n\n" for name, obj in out).encode()

    def truncated(self) -> bytes:
        out: list[tuple[str, dict]] = []
        if self._open is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self._open}))
        out += [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                    "usage": {"output_tokens": 0},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.done = True
        return "".join(f"event: {name}\ndata: {_dumps(obj)}\n\n" for name, obj in out).encode()


class OpenAIStream:
    flavor = "openai"

    def __init__(self) -> None:
        self.done = False
        self._id = ""
        self._model = ""
        self._created = 0

    def text_of(self, ev: SSEEvent) -> str:
        if ev.data.strip() == "[DONE]":
            self.done = True
            return ""
        obj = _json(ev.data)
        if not isinstance(obj, dict):
            return ""
        self._id = _str(obj.get("id")) or self._id
        self._model = _str(obj.get("model")) or self._model
        if isinstance(obj.get("created"), int):
            self._created = obj["created"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return ""
        parts = []
        for c in choices:
            delta = c.get("delta") if isinstance(c, dict) else None
            if not isinstance(delta, dict):
                continue
            parts.extend(_str(delta.get(field)) for field in _OPENAI_DELTA_TEXT)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    parts.append(_str(fn.get("arguments")))
        return "".join(parts)

    def terminal(self, replacement: str) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": {"content": replacement}, "finish_reason": "content_filter"}],
        }
        self.done = True
        return f"data: {_dumps(chunk)}\n\ndata: [DONE]\n\n".encode()

    def truncated(self) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        }
        self.done = True
        return f"data: {_dumps(chunk)}\n\ndata: [DONE]\n\n".encode()


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def stream_format(flavor: str) -> StreamFormat:
    if flavor == "anthropic":
        return AnthropicStream()
    if flavor == "openai":
        return OpenAIStream()
    raise ValueError(f"unknown stream flavor {flavor!r}")
