"""Issue 13's acceptance for model output: through a real Envoy under the default
policy (`completion.models`, every 200 characters), a streamed answer that turns into
instructions for violence is cut within `completion.every_chars` of where the harmful
part began, in the Anthropic and the OpenAI SSE formats; a long benign answer is not.
Everything the model writes is screened, not only its visible text: a tool call whose
streamed arguments turn harmful is cut (Anthropic `input_json_delta`, OpenAI
`tool_calls[].function.arguments`), and so is harmful reasoning (Anthropic
`thinking_delta`; the `reasoning_content` of OpenAI-compatible servers), with an ending
each official SDK parses; a benign tool call is served whole. The completions come from
the development upstream (`[[dev:unsafe]]`, `[[dev:long]]`, `[[dev:tool]]`,
`[[dev:tool-unsafe]]`, `[[dev:thinking-unsafe]]`)."""

from __future__ import annotations

import json

from tests.envoy.test_sdks import REPLACEMENT, ask, claude, gpt
from tools.dev_upstream import (
    LONG,
    LONG_TEXT,
    PACED,
    THINKING_ANSWER,
    THINKING_UNSAFE,
    TOOL,
    TOOL_LEAD,
    TOOL_NAME,
    TOOL_UNSAFE,
    UNSAFE,
    UNSAFE_LEAD,
    UNSAFE_TEXT,
    tool_arguments,
)

EVERY_CHARS = 200  # config/policies/default.yaml completion.every_chars
DELTA = 24  # the development upstream's characters per streamed delta (tools/dev_upstream.pieces)


def harmful_characters_delivered(text: str) -> int:
    """How much of the harmful part reached the client before the cut."""
    assert text.endswith(REPLACEMENT), text[-200:]
    delivered = text[: -len(REPLACEMENT)]
    assert (UNSAFE_LEAD + UNSAFE_TEXT + UNSAFE_TEXT).startswith(delivered)
    return max(0, len(delivered) - len(UNSAFE_LEAD))


def anthropic_stream(gateway, prompt: str) -> tuple[str, str | None]:
    with claude(gateway).messages.stream(model="claude-sonnet-4", max_tokens=2048, messages=ask(prompt)) as s:
        text = "".join(s.text_stream)
        return text, s.get_final_message().stop_reason


def openai_stream(gateway, prompt: str) -> tuple[str, str | None]:
    parts, finish = [], None
    for chunk in gpt(gateway).chat.completions.create(model="gpt-4o", messages=ask(prompt), stream=True):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish


def test_a_harmful_answer_is_cut_within_every_chars_in_the_anthropic_format(gateway) -> None:
    text, stop = anthropic_stream(gateway, f"How do household chemicals react? {UNSAFE} {PACED}")
    assert stop == "refusal"
    assert harmful_characters_delivered(text) <= EVERY_CHARS + DELTA


def test_a_harmful_answer_is_cut_within_every_chars_in_the_openai_format(gateway) -> None:
    text, finish = openai_stream(gateway, f"How do household chemicals react? {UNSAFE} {PACED}")
    assert finish == "content_filter"
    assert harmful_characters_delivered(text) <= EVERY_CHARS + DELTA


def test_a_long_benign_answer_is_not_cut(gateway) -> None:
    text, stop = anthropic_stream(gateway, f"Tell me about the valley. {LONG}")
    assert stop == "end_turn" and text == LONG_TEXT
    text, finish = openai_stream(gateway, f"Tell me about the valley. {LONG}")
    assert finish == "stop" and text == LONG_TEXT


# ---- tool calls and reasoning ----------------------------------------------------------
# The visible text of these answers is benign: only the screened tool arguments or
# reasoning can cut them. How much of the harmful part gets out first depends on how
# Envoy chunks the stream (a cut withholds its whole chunk; the stand-in writes its
# events at once, so usually nothing): these tests check the cut, what the client was
# sent, and that the official SDKs parse the ending, not the every_chars bound above.
HARMFUL_ANSWER = UNSAFE_LEAD + UNSAFE_TEXT + UNSAFE_TEXT  # what [[dev:thinking-unsafe]] reasons
TOOLS = [
    {
        "name": TOOL_NAME,
        "description": "Post a message to a team channel.",
        "input_schema": {
            "type": "object",
            "properties": {"channel": {"type": "string"}, "message": {"type": "string"}},
            "required": ["channel", "message"],
        },
    }
]
OPENAI_TOOLS = [{"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}} for t in TOOLS]


def prefix_then_replacement(text: str, whole: str) -> None:
    """`text` is a prefix of `whole` (what the stand-in wrote), then the replacement."""
    assert text.endswith(REPLACEMENT), text[-200:]
    assert whole.startswith(text[: -len(REPLACEMENT)]), text[-200:]


def a_prefix_of(delivered: str, whole: str) -> None:
    assert whole.startswith(delivered), delivered[-200:]


def anthropic_parts(gateway, prompt: str, **kw) -> tuple[dict[str, str], object]:
    """A streamed Messages answer through the official SDK: the text of each delta type
    as the client received it, and the SDK's final message."""
    fields = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
    parts = dict.fromkeys(fields, "")
    with claude(gateway).messages.stream(model="claude-sonnet-4", max_tokens=4096, messages=ask(prompt), **kw) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type in fields:
                parts[event.delta.type] += getattr(event.delta, fields[event.delta.type])
        return parts, s.get_final_message()


def openai_parts(gateway, prompt: str, **kw) -> tuple[dict[str, str], str | None]:
    """A streamed Chat Completion through the official SDK: the content, the tool call's
    arguments and the reasoning as the client received them, and the finish reason."""
    parts, finish = {"content": "", "arguments": "", "reasoning": ""}, None
    for chunk in gpt(gateway).chat.completions.create(model="gpt-4o", messages=ask(prompt), stream=True, **kw):
        for choice in chunk.choices:
            delta = choice.delta
            parts["content"] += delta.content or ""
            parts["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or ():
                assert call.index == 0
                parts["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return parts, finish


def test_a_benign_tool_call_is_served_whole_in_both_formats(gateway) -> None:
    parts, final = anthropic_parts(gateway, f"Tell the team a fact. {TOOL}", tools=TOOLS)
    assert final.stop_reason == "tool_use" and parts["input_json_delta"] == tool_arguments(False)
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.name == TOOL_NAME and call.input == json.loads(tool_arguments(False))
    parts, finish = openai_parts(gateway, f"Tell the team a fact. {TOOL}", tools=OPENAI_TOOLS)
    assert finish == "tool_calls" and parts["arguments"] == tool_arguments(False)
    assert parts["content"] == TOOL_LEAD


def test_a_tool_call_whose_arguments_turn_harmful_is_cut_in_the_anthropic_format(gateway) -> None:
    parts, final = anthropic_parts(gateway, f"Tell the team about household chemicals. {TOOL_UNSAFE}", tools=TOOLS)
    assert final.stop_reason == "refusal"  # not "tool_use"
    a_prefix_of(parts["input_json_delta"], tool_arguments(True))
    prefix_then_replacement(parts["text_delta"], TOOL_LEAD)
    # The SDK's message ends with the replacement: after the partial tool call when the
    # call's start got out, in the lead's own text block when the cut withheld it.
    kinds = [b.type for b in final.content]
    assert kinds in (["text"], ["text", "tool_use", "text"]), kinds
    assert final.content[-1].text.endswith(REPLACEMENT)
    assert all(b.name == TOOL_NAME for b in final.content if b.type == "tool_use")


def test_a_tool_call_whose_arguments_turn_harmful_is_cut_in_the_openai_format(gateway) -> None:
    parts, finish = openai_parts(gateway, f"Tell the team about household chemicals. {TOOL_UNSAFE}", tools=OPENAI_TOOLS)
    assert finish == "content_filter"  # not "tool_calls"
    a_prefix_of(parts["arguments"], tool_arguments(True))
    prefix_then_replacement(parts["content"], TOOL_LEAD)


def test_harmful_reasoning_is_cut_in_the_anthropic_format(gateway) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    parts, final = anthropic_parts(gateway, f"How do household chemicals react? {THINKING_UNSAFE}", thinking=thinking)
    assert final.stop_reason == "refusal"
    a_prefix_of(parts["thinking_delta"], HARMFUL_ANSWER)
    prefix_then_replacement(parts["text_delta"], THINKING_ANSWER)
    assert [b.type for b in final.content] == ["thinking", "text"]


def test_harmful_reasoning_is_cut_in_the_openai_compatible_format(gateway) -> None:
    parts, finish = openai_parts(gateway, f"How do household chemicals react? {THINKING_UNSAFE}")
    assert finish == "content_filter"
    a_prefix_of(parts["reasoning"], HARMFUL_ANSWER)
    prefix_then_replacement(parts["content"], THINKING_ANSWER)


def test_a_non_streamed_tool_call_with_harmful_arguments_is_replaced_in_both_formats(gateway) -> None:
    prompt = f"Tell the team about household chemicals. {TOOL_UNSAFE}"
    msg = claude(gateway).messages.create(model="claude-sonnet-4", max_tokens=4096, messages=ask(prompt), tools=TOOLS)
    assert msg.stop_reason == "refusal" and [(b.type, b.text) for b in msg.content] == [("text", REPLACEMENT)]
    resp = gpt(gateway).chat.completions.create(model="gpt-4o", messages=ask(prompt), tools=OPENAI_TOOLS)
    (choice,) = resp.choices
    assert choice.finish_reason == "content_filter" and not choice.message.tool_calls
    assert choice.message.content == REPLACEMENT
