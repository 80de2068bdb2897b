"""Issue 13's acceptance for model output: through a real Envoy under the default
policy (`completion.models`, every 200 characters), a streamed answer that turns into
instructions for violence is cut within `completion.every_chars` of where the harmful
part began, in the Anthropic and the OpenAI SSE formats; a long benign answer is not.
The completions come from the development upstream (`[[dev:unsafe]]`, `[[dev:long]]`)."""

from __future__ import annotations

from tests.envoy.test_sdks import REPLACEMENT, ask, claude, gpt
from tools.dev_upstream import LONG, LONG_TEXT, UNSAFE, UNSAFE_LEAD, UNSAFE_TEXT

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
    text, stop = anthropic_stream(gateway, f"How do household chemicals react? {UNSAFE}")
    assert stop == "refusal"
    assert harmful_characters_delivered(text) <= EVERY_CHARS + DELTA


def test_a_harmful_answer_is_cut_within_every_chars_in_the_openai_format(gateway) -> None:
    text, finish = openai_stream(gateway, f"How do household chemicals react? {UNSAFE}")
    assert finish == "content_filter"
    assert harmful_characters_delivered(text) <= EVERY_CHARS + DELTA


def test_a_long_benign_answer_is_not_cut(gateway) -> None:
    text, stop = anthropic_stream(gateway, f"Tell me about the valley. {LONG}")
    assert stop == "end_turn" and text == LONG_TEXT
    text, finish = openai_stream(gateway, f"Tell me about the valley. {LONG}")
    assert finish == "stop" and text == LONG_TEXT
