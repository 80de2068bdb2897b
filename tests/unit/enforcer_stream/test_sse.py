"""The incremental SSE decoder (same events however the bytes are split, and the
held-back byte count always ends the released bytes between events) and both
providers' streaming formats: text extraction and well-formed terminal events."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.enforcer.edges.sse import AnthropicStream, OpenAIStream, SSEDecoder, SSEError, SSEEvent, stream_format


def anthropic_stream(texts: list[str], eol: str = "\n") -> bytes:
    def ev(name: str, obj: dict) -> str:
        return f"event: {name}{eol}data: {json.dumps(obj, ensure_ascii=False)}{eol}{eol}"

    out = [
        ev("message_start", {"type": "message_start", "message": {"id": "msg_1", "content": []}}),
        ev(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        f": ping{eol}",
    ]
    for t in texts:
        out.append(
            ev(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
            )
        )
    out += [
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ev("message_stop", {"type": "message_stop"}),
    ]
    return "".join(out).encode()


def openai_stream(texts: list[str], eol: str = "\n") -> bytes:
    out = []
    for t in texts:
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": "gpt",
            "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}],
        }
        out.append(f"data: {json.dumps(chunk, ensure_ascii=False)}{eol}{eol}")
    out.append(f"data: [DONE]{eol}{eol}")
    return "".join(out).encode()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


def decode_all(pieces: list[bytes]) -> tuple[list[SSEEvent], list[bytes]]:
    """Events, and the bytes a pass-through proxy would release per piece."""
    d = SSEDecoder()
    events, released, held = [], [], b""
    for piece in pieces:
        events += d.feed(piece)
        buf = held + piece
        keep = d.pending_bytes
        released.append(buf[: len(buf) - keep])
        held = buf[len(buf) - keep :]
    released.append(held)
    return events, released


TEXTS = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12), max_size=6)


@given(
    texts=TEXTS,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    flavor=st.sampled_from(["anthropic", "openai"]),
)
def test_events_and_text_are_the_same_however_the_bytes_are_split(texts, cuts, eol, flavor) -> None:
    data = (anthropic_stream if flavor == "anthropic" else openai_stream)(texts, eol)
    whole, _ = decode_all([data])
    events, released = decode_all(split(data, cuts))
    assert events == whole
    assert b"".join(released) == data
    fmt = stream_format(flavor)
    assert "".join(fmt.text_of(e) for e in events) == "".join(texts)
    assert fmt.done
    # every released prefix ends between events: decoding it alone loses no event
    prefix = b""
    for r in released:
        prefix += r
        alone, _ = decode_all([prefix])
        assert SSEDecoder().feed(prefix) == alone
        assert alone == events[: len(alone)]
        assert not _has_partial_event(prefix, eol)


def _has_partial_event(prefix: bytes, eol: str) -> bool:
    d = SSEDecoder()
    d.feed(prefix)
    return d.pending_bytes > 0


def test_multiline_data_comments_ids_and_a_bom() -> None:
    d = SSEDecoder()
    evs = d.feed(b"\xef\xbb\xbf: hello\nid: 7\nevent: x\ndata: a\ndata:b\n\ndata: c")
    assert evs == [SSEEvent("x", "a\nb", "7")]
    assert d.pending_bytes == len(b"data: c")
    assert d.feed(b"\r\n\r\n") == [SSEEvent("", "c", "7")] and d.pending_bytes == 0


def test_an_event_over_the_limit_is_an_error() -> None:
    d = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEError):
        d.feed(b"data: " + b"x" * 200)


def parse_sse(data: bytes) -> list[tuple[str, object]]:
    out = []
    for ev in SSEDecoder().feed(data):
        out.append((ev.event, ev.data if ev.data == "[DONE]" else json.loads(ev.data)))
    return out


def test_anthropic_terminal_continues_the_open_text_block_and_stops_with_a_refusal() -> None:
    fmt = AnthropicStream()
    for e in SSEDecoder().feed(anthropic_stream(["hello "])[:-200]):
        fmt.text_of(e)
    events = parse_sse(fmt.terminal("I can't continue."))
    assert [name for name, _ in events] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "I can't continue."},
    }
    assert events[2][1]["delta"]["stop_reason"] == "refusal"
    assert all(obj["type"] == name for name, obj in events)


def test_anthropic_terminal_opens_a_text_block_after_a_tool_use_block() -> None:
    fmt = AnthropicStream()
    raw = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
        b'"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}\n\n'
    )
    for e in SSEDecoder().feed(raw):
        fmt.text_of(e)
    names = [(n, o.get("index")) for n, o in parse_sse(fmt.terminal("no"))]
    assert names == [
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]


def test_openai_terminal_is_a_content_filter_chunk_then_done() -> None:
    fmt = OpenAIStream()
    for e in SSEDecoder().feed(openai_stream(["hi", " there"])[: -len("data: [DONE]\n\n")]):
        fmt.text_of(e)
    assert not fmt.done
    events = parse_sse(fmt.terminal("I can't continue."))
    assert events[-1] == ("", "[DONE]")
    chunk = events[0][1]
    assert chunk["id"] == "c1" and chunk["model"] == "gpt" and chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": "I can't continue."}, "finish_reason": "content_filter"}
    ]


def _texts(fmt, raw: bytes) -> str:
    return "".join(fmt.text_of(e) for e in SSEDecoder().feed(raw))


def _sse(events: list[tuple[str, dict]]) -> bytes:
    return "".join(f"event: {n}\ndata: {json.dumps(o)}\n\n" for n, o in events).encode()


def test_anthropic_tool_call_arguments_and_thinking_are_completion_text() -> None:
    """A model can carry what its text would not say in a tool call's arguments or in its
    thinking: both are screened like text deltas (signatures are not text)."""
    raw = _sse(
        [
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "thinking", "thinking": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "thinking_delta", "thinking": "plan: "}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("content_block_start", {"type": "content_block_start", "index": 1,
                                     "content_block": {"type": "tool_use", "id": "t", "name": "sh", "input": {}}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                     "delta": {"type": "input_json_delta", "partial_json": '{"cmd": "rm -'}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                     "delta": {"type": "input_json_delta", "partial_json": 'rf /"}'}}),
        ]
    )  # fmt: skip
    assert _texts(AnthropicStream(), raw) == 'plan: {"cmd": "rm -rf /"}'


def test_openai_tool_call_arguments_and_reasoning_are_completion_text() -> None:
    def chunk(delta: dict) -> str:
        return "data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": delta}]}) + "\n\n"

    raw = (
        chunk({"role": "assistant", "reasoning_content": "thinking it over. "})
        + chunk({"content": "Calling the tool."})
        + chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "send", "arguments": ""}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"to": "a@b.co",'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "body": "x"}'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": None}, "junk"]})
        + "data: [DONE]\n\n"
    ).encode()  # fmt: skip
    fmt = OpenAIStream()
    assert _texts(fmt, raw) == 'thinking it over. Calling the tool.{"to": "a@b.co", "body": "x"}'
    assert fmt.done
