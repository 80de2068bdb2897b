"""Request bodies (`bodies.parse_chat_body`) and the completion stream's SSE decoder
on hostile shapes: time grows linearly, results do not depend on how input is split
or nested."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.enforcer.edges.bodies import parse_chat_body
from services.enforcer.edges.sse import SSEDecoder, SSEEvent
from tests.unit.linear_time.growth import assert_linear


def _parse(body: bytes) -> object:
    try:
        return parse_chat_body(body, max_bytes=1 << 24)
    except InvalidArgument as e:
        return e


def _nested_tool_results(depth: int, leaf: str) -> bytes:
    s = leaf
    for _ in range(depth):
        s = '[{"type":"tool_result","content":' + s + "}]"
    return ('{"max_tokens":5,"messages":[{"role":"user","content":' + s + "}]}").encode()


def _small_blocks(n: int) -> str:
    return "[" + ",".join(['{"type":"text","text":"hi"}'] * max(1, n // 28)) + "]"


BODIES = {
    "many messages": lambda n: json.dumps({"messages": [{"role": "user", "content": "hi"}] * (n // 33)}).encode(),
    "many text parts": lambda n: ('{"messages":[{"role":"user","content":' + _small_blocks(n) + "}]}").encode(),
    "many blocks deep in tool results": lambda n: _nested_tool_results(400, _small_blocks(n)),
    # Depth grows with the body too (up to JSON's nesting limit): per-block work that
    # costs the depth made this one quadratic.
    "blocks under tool results as deep as the body is long": lambda n: _nested_tool_results(
        min(n // 330, 450), _small_blocks(n)
    ),
    "long text deep in tool results": lambda n: _nested_tool_results(400, json.dumps("x" * n)),
    "one string of \\u escapes": lambda n: json.dumps(
        {"messages": [{"role": "user", "content": "é" * (n // 6)}]}
    ).encode(),
    "deep arrays (rejected)": lambda n: b'{"messages":' + b"[" * n + b"]" * n + b"}",
    "many ignored blocks": lambda n: json.dumps(
        {"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image"}] * (n // 18)}]}
    ).encode(),
}


@pytest.mark.parametrize("shape", list(BODIES))
def test_body_parsing_time_grows_linearly(shape: str) -> None:
    assert_linear(_parse, BODIES[shape])


def _feed(chunks: list[bytes]) -> int:
    decoder = SSEDecoder(max_event_bytes=1 << 30)
    return sum(len(decoder.feed(c)) for c in chunks)


STREAMS = {
    "one event of many data lines": lambda n: [b"data: x\n" * (n // 8)],
    "many tiny events": lambda n: [b"data: x\n\n" * (n // 9)],
    "one huge line, a byte at a time": lambda n: [b"d"] * n,
    "CRLF split across chunks": lambda n: [b"data: x\r", b"\n\r\n"] * (n // 11),
    "comments only": lambda n: [b":\n" * (n // 2)],
}


@pytest.mark.parametrize("shape", list(STREAMS))
def test_sse_decoding_time_grows_linearly(shape: str) -> None:
    assert_linear(_feed, STREAMS[shape])


# ----------------------------------------------------------------- correctness


def _reference_text(content: object) -> str:
    """What the parser's text of nested Anthropic content is by definition: each
    level's texts joined by newlines, a nested tool result counting as one text."""
    if isinstance(content, str):
        return content
    texts = []
    for block in content:  # type: ignore[union-attr]
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_result" and block.get("content") is not None:
            texts.append(_reference_text(block["content"]))
    return "\n".join(texts)


_BLOCK = st.deferred(
    lambda: st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, st.text("ab \n", max_size=4)),
        st.just({"type": "image"}),
        st.just({"type": "tool_result"}),
        st.builds(
            lambda c: {"type": "tool_result", "content": c}, st.text("xy", max_size=3) | st.lists(_BLOCK, max_size=3)
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(content=st.lists(_BLOCK, max_size=4))
def test_nested_tool_result_text_is_each_level_joined_by_newlines(content: list) -> None:
    body = json.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": content}]}).encode()
    parsed = parse_chat_body(body, max_bytes=1 << 20)
    assert parsed.messages == (("user", _reference_text(content)),)


def test_errors_deep_in_tool_results_still_name_the_block() -> None:
    body = _nested_tool_results(3, '[{"type":"text","text":7}]')
    with pytest.raises(InvalidArgument) as err:
        parse_chat_body(body, max_bytes=1 << 20)
    assert err.value.message == (
        "messages[0].content[0].content[0].content[0].content[0].text must be a string, not a number"
    )


_EVENTS = st.lists(
    st.tuples(st.sampled_from(["", "delta"]), st.lists(st.text("ab:é \r", max_size=5), min_size=1, max_size=4)),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts=st.lists(st.integers(0, 400)))
def test_sse_events_do_not_depend_on_where_the_stream_is_split(events, line_end: bytes, cuts: list[int]) -> None:
    lines: list[bytes] = []
    for name, data in events:
        if name:
            lines.append(b"event: " + name.encode())
        lines += [b"data: " + d.replace("\r", "").encode() for d in data]
        lines.append(b"")
    raw = b"".join(line + line_end for line in lines)
    whole = SSEDecoder().feed(raw)
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    decoder = SSEDecoder()
    split = [ev for p in pieces for ev in decoder.feed(p)]
    assert split == whole
    assert whole == [SSEEvent(name, "\n".join(d.replace("\r", "") for d in data)) for name, data in events]


def test_an_event_over_the_size_limit_is_refused_however_many_lines_it_has() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(ValueError, match="over 1000"):
        decoder.feed(b"data: xxxxxxxxxx\n" * 200)
