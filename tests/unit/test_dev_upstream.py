"""The development stand-in's tool-call and reasoning answers (tools/dev_upstream.py) put
their text where the enforcer reads it: streamed (sse.py's formats) and not (bodies.py),
in both wire formats. Through a real Envoy: tests/envoy/test_output_screening.py."""

from __future__ import annotations

import json

import pytest

from services.enforcer.edges.bodies import completion_text
from services.enforcer.edges.sse import SSEDecoder, stream_format
from tools import dev_upstream as dev

HARMFUL = dev.UNSAFE_LEAD + dev.UNSAFE_TEXT + dev.UNSAFE_TEXT


def streamed_text(flavor: str, reply: dev.Reply) -> str:
    if flavor == "anthropic":
        frames = dev.anthropic_events("m", reply, "msg_1", 3)
    else:
        frames = dev.openai_events("m", reply, "chatcmpl-1", 0, 3, usage=True)
    decoder, fmt = SSEDecoder(), stream_format(flavor)
    text = "".join(fmt.text_of(ev) for frame in frames for ev in decoder.feed(frame))
    assert fmt.done
    return text


@pytest.mark.parametrize("flavor", ["anthropic", "openai"])
def test_the_harmful_tool_call_and_reasoning_are_in_what_the_enforcer_screens(flavor) -> None:
    tool = dev.reply("m", f"go {dev.TOOL_UNSAFE}")
    assert tool.text == dev.TOOL_LEAD and tool.tool == (dev.TOOL_NAME, dev.tool_arguments(True))
    assert streamed_text(flavor, tool) == dev.TOOL_LEAD + dev.tool_arguments(True)
    thinking = dev.reply("m", f"go {dev.THINKING_UNSAFE}")
    assert streamed_text(flavor, thinking) == HARMFUL + dev.THINKING_ANSWER
    if flavor == "anthropic":
        body = dev.anthropic_message("m", tool, "msg_1", 3)
        assert body["stop_reason"] == "tool_use" and body["content"][1]["input"]["message"] == HARMFUL
    else:
        body = dev.openai_completion("m", tool, "chatcmpl-1", 0, 3)
        assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert HARMFUL in completion_text(flavor, json.loads(json.dumps(body)))


def test_a_benign_tool_call_and_plain_replies_are_unchanged() -> None:
    benign = dev.reply("m", f"go {dev.TOOL}")
    assert benign.tool == (dev.TOOL_NAME, dev.tool_arguments(False)) and "Step" not in benign.tool[1]
    plain = dev.reply("m", "hello")
    assert plain == dev.Reply(dev.reply_text("m", "hello"))  # no reasoning, no tool call
    assert dev.anthropic_message("m", plain, "msg_1", 3)["content"] == [{"type": "text", "text": plain.text}]
    # Deterministic: the same prompt, the same bytes.
    assert dev.anthropic_events("m", benign, "msg_1", 3) == dev.anthropic_events("m", benign, "msg_1", 3)
