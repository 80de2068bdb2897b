"""The shared request-body parser: both provider styles, the flavor rule, and
every malformed body answered with InvalidArgument (and nothing else)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.enforcer.edges.bodies import (
    ANTHROPIC,
    OPENAI,
    ChatBody,
    estimated_tokens,
    flavor_from_path,
    parse_chat_body,
)

MAX = 64 * 1024


def parse(doc, **kw) -> ChatBody:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_chat_body(raw, max_bytes=kw.pop("max_bytes", MAX), **kw)


def rejected(doc, **kw) -> str:
    with pytest.raises(InvalidArgument) as err:
        parse(doc, **kw)
    return err.value.message


def test_anthropic_messages_with_system_blocks_and_tool_results() -> None:
    body = parse(
        {
            "model": "claude-sonnet-4",
            "max_tokens": 512,
            "stream": True,
            "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": "Hi there"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Hello"},
                        {"type": "tool_use", "id": "t", "name": "x", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": "42 degrees"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "u",
                            "content": [{"type": "text", "text": "nested"}, {"type": "image", "source": {}}],
                        },
                        {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                        {"type": "text", "text": "what now?"},
                    ],
                },
            ],
        }
    )
    assert body.flavor == ANTHROPIC and body.model == "claude-sonnet-4" and body.stream and body.max_tokens == 512
    assert body.messages == (
        ("system", "You are terse.\nBe kind."),
        ("user", "Hi there"),
        ("assistant", "Hello"),
        ("user", "42 degrees\nnested\nwhat now?"),
    )
    assert body.ignored_blocks == 3  # tool_use, the nested image, the image


def test_openai_chat_with_parts_null_content_and_tools() -> None:
    body = parse(
        {
            "model": "gpt-4o",
            "max_completion_tokens": 100,
            "messages": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't"}]},
            ],
        }
    )
    assert body.flavor == OPENAI and body.max_tokens == 100 and not body.stream
    assert body.messages == (
        ("developer", "Answer in French."),
        ("user", "Describe"),
        ("assistant", ""),
        ("tool", "sunny"),
        ("assistant", "I can't"),
    )
    assert body.ignored_blocks == 1


@pytest.mark.parametrize(
    ("doc", "path", "flavor"),
    [
        ({"system": "s", "messages": [{"role": "user", "content": "x"}]}, None, ANTHROPIC),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}, None, OPENAI),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, None, ANTHROPIC),
        ({"max_completion_tokens": 5, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, None, OPENAI),
        ({"messages": [{"role": "user", "content": "x"}]}, None, OPENAI),
        # the path wins over the body
        ({"messages": [{"role": "user", "content": "x"}]}, "/v1/messages?beta=true", ANTHROPIC),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions", OPENAI),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "/somewhere/else", ANTHROPIC),
    ],
)
def test_flavor_rule(doc, path, flavor) -> None:
    assert parse(doc, path=path).flavor == flavor


def test_flavor_from_path() -> None:
    assert flavor_from_path("/v1/messages") == ANTHROPIC
    assert flavor_from_path("/v1/chat/completions/") == OPENAI
    assert flavor_from_path("/openai/deployments/x/chat/completions?api-version=1") == OPENAI
    assert flavor_from_path("/v1/models") is None and flavor_from_path(None) is None


def test_bedrock_style_body_without_model_is_accepted() -> None:
    body = parse(
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert body.model == "" and body.flavor == ANTHROPIC


@pytest.mark.parametrize(
    ("doc", "content_type", "message"),
    [
        (b"x" * (MAX + 1), "application/json", f"request body is {MAX + 1} bytes (max {MAX})"),
        (b"", "application/json", "request body is empty"),
        (b'{"messages": "\xff"}', "application/json", "not valid UTF-8 (byte 14)"),
        (b"{not json", "application/json", "not valid JSON: Expecting property name"),
        (b"[1, 2]", "application/json", "must be a JSON object, not an array"),
        (b'{"messages": [], "x": NaN}', "application/json", "NaN is not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", None),  # too large for MAX or too deep
        (b'{"messages": [{"role": "user", "content": "x"}]}', "text/plain", "content-type must be application/json"),
        (b"{}", "application/json", "request body has no messages"),
        (b'{"messages": {}}', "application/json", "messages must be an array, not an object"),
        (b'{"messages": []}', "application/json", "messages must not be empty"),
        (b'{"messages": [3]}', "application/json", "messages[0] must be an object, not a number"),
        (b'{"messages": [{"content": "x"}]}', "application/json", "messages[0].role must be a string"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "application/json", "lone surrogate"),
        (
            b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "model must be a string, not a number",
        ),
        (
            b'{"stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "stream must be a boolean",
        ),
        (
            b'{"max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "max_tokens must be a non-negative integer",
        ),
        (
            b'{"max_tokens": true, "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "max_tokens must be a non-negative integer",
        ),
        (
            b'{"system": "s", "messages": [{"role": "system", "content": "x"}]}',
            "application/json",
            "put the system prompt in the top-level system field",
        ),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "application/json", "'wizard' is not one of"),
        (
            b'{"system": 5, "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "system must be a string or an array of text blocks",
        ),
        (
            b'{"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]}',
            "application/json",
            "system[0] must be a text block",
        ),
        (b'{"system": "", "messages": [{"role": "user"}]}', "application/json", "messages[0].content is required"),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "application/json",
            "messages[0].content[0].text must be a string, not null",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"text": "x"}]}]}',
            "application/json",
            "messages[0].content[0].type must be a string",
        ),
        (
            b'{"messages": [{"role": "user", "content": 7}]}',
            "application/json",
            "messages[0].content must be a string, null or an array of parts",
        ),
        (
            b'{"system": "s", "messages": [{"role": "user", "content": [{"type": "tool_result", "content": 1}]}]}',
            "application/json",
            "messages[0].content[0].content must be a string or an array",
        ),
    ],
)
def test_malformed_bodies_get_clear_messages(doc, content_type, message) -> None:
    got = rejected(doc, content_type=content_type) if content_type != "application/json" else rejected(doc)
    if message is not None:
        assert message in got


def test_deeply_nested_json_within_the_size_limit_is_rejected_not_crashed() -> None:
    deep = b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert "JSON" in rejected(deep, max_bytes=len(deep)) or "messages" in rejected(deep, max_bytes=len(deep))


def test_json_content_types_with_parameters_are_accepted() -> None:
    raw = b'{"messages": [{"role": "user", "content": "x"}]}'
    for ct in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json", ""):
        assert parse_chat_body(raw, ct, max_bytes=MAX).messages == (("user", "x"),)


def test_estimated_tokens_counts_text_and_images() -> None:
    body = ChatBody(OPENAI, "", (("system", "a" * 10), ("user", "b" * 30)), False, 0, ignored_blocks=2)
    assert estimated_tokens(body) == 10 + 2 * 85
    assert estimated_tokens(ChatBody(OPENAI, "", (("user", ""),), False, 0)) == 1


def _outcome(raw: bytes, path: str | None = None) -> ChatBody | None:
    try:
        body = parse_chat_body(raw, max_bytes=MAX, path=path)
    except InvalidArgument as e:
        assert e.message
        return None
    assert body.flavor in (ANTHROPIC, OPENAI) and body.messages
    for role, text in body.messages:
        text.encode("utf-8")  # always encodable downstream
        assert isinstance(role, str)
    return body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.sampled_from([None, "/v1/messages", "/v1/chat/completions"]))
def test_arbitrary_bytes_never_raise_anything_but_invalid_argument(raw, path) -> None:
    _outcome(raw, path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"]) | st.text(max_size=5)
block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_result", "refusal", "image_url"]) | json_values},
    optional={"text": json_values, "content": json_values, "refusal": json_values},
)
content = st.text() | st.none() | st.lists(block | json_values, max_size=4) | json_values
message = st.fixed_dictionaries({}, optional={"role": roles | json_values, "content": content})
chat_doc = st.fixed_dictionaries(
    {"messages": st.lists(message | json_values, max_size=4) | json_values},
    optional={
        "model": st.text(max_size=10) | json_values,
        "system": st.text() | st.lists(block, max_size=3) | json_values,
        "stream": json_values,
        "max_tokens": json_values,
        "max_completion_tokens": json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(chat_doc, st.sampled_from([None, "/v1/messages", "/v1/chat/completions"]))
def test_arbitrary_chat_shaped_json_never_raises_anything_but_invalid_argument(doc, path) -> None:
    _outcome(json.dumps(doc).encode(), path)


def test_a_non_streamed_completion_is_read_whole_text_thinking_and_tool_arguments() -> None:
    from services.enforcer.edges.bodies import completion_text

    anthropic = {
        "content": [
            {"type": "thinking", "thinking": "plan it"},
            {"type": "text", "text": "Running it."},
            {"type": "tool_use", "id": "t", "name": "sh", "input": {"cmd": "rm -rf /"}},
            {"type": "redacted_thinking", "data": "opaque"},
        ]
    }
    assert completion_text("anthropic", anthropic) == 'plan it\nRunning it.\n{"cmd": "rm -rf /"}'
    openai = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "reasoning_content": "think",
                    "tool_calls": [{"type": "function", "function": {"name": "send", "arguments": '{"to": "x"}'}}],
                }
            },
            "junk",
        ]
    }
    assert completion_text("openai", openai) == 'think\n{"to": "x"}'
    assert completion_text("openai", {"choices": [{"message": {"tool_calls": [None, {"function": 3}]}}]}) == ""
