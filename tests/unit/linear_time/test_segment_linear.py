"""services.classifier.segment.spans on hostile shapes: time grows linearly with the
input (see `growth`), whatever the shape of its sentence ends and line breaks."""

from __future__ import annotations

import pytest

from services.classifier.segment import SegmentSpec, segment_texts, spans
from tests.unit.linear_time.growth import assert_linear, repeat_to

SHAPES = {
    "no sentence ends": lambda n: repeat_to("word ", n),
    "no whitespace at all": lambda n: "x" * n,
    "a run of dots": lambda n: "." * n,
    "dots then one space": lambda n: "." * (n - 2) + " x",
    "dots and spaces": lambda n: repeat_to(". ", n),
    "question marks without spaces": lambda n: repeat_to("?!", n),
    "one long whitespace run": lambda n: "a" + " " * (n - 2) + "b",
    "one long whitespace run after a dot": lambda n: "a." + " " * (n - 3) + "b",
    "deep newlines": lambda n: "\n" * n,
    "newline, spaces, newline": lambda n: repeat_to("\n   \t", n),
    "short lines": lambda n: repeat_to("a\n", n),
    "short sentences": lambda n: repeat_to("a. ", n),
    "prose": lambda n: repeat_to("The cat sat on the mat. It was happy!\n", n),
    "CJK sentences": lambda n: repeat_to("这是一个句子。", n),
    "one long rule": lambda n: "=" * n,
    "rules of three": lambda n: repeat_to("===\n", n),
    "rules and blanks": lambda n: repeat_to("==== \n-----\n", n),
    "rule characters, one short of a rule": lambda n: repeat_to("---a", n),
    "one-word lines": lambda n: repeat_to("word\n", n),
}


UNLIMITED = SegmentSpec(max_text_chars=0)  # the cutting itself, not the length limit in front of it


@pytest.mark.parametrize("shape", list(SHAPES))
def test_spans_time_grows_linearly(shape: str) -> None:
    assert_linear(lambda t: spans(t, UNLIMITED), SHAPES[shape])


@pytest.mark.parametrize("shape", ["short lines", "short sentences", "deep newlines"])
def test_cutting_into_pieces_grows_linearly(shape: str) -> None:
    assert_linear(lambda t: segment_texts([t], UNLIMITED), SHAPES[shape])
