"""The hot path's rule for over-long input: screened whole when it fits, else by head,
tail and random windows (marked oversize), never unscreened; pieces always fit the
classifier's byte limit."""

from __future__ import annotations

import random

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.clients import CircuitBreaker
from services.enforcer.upstream import ClassifierCaller, ClassifierLimits, segment, split_utf8, strongest, whole
from tests.support import free_port


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400), st.integers(4, 64))
@settings(max_examples=300, deadline=None)
def test_pieces_fit_the_byte_limit_and_join_back_to_the_text(text: str, max_bytes: int) -> None:
    pieces = split_utf8(text, max_bytes)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode("utf-8", "surrogatepass")) <= max_bytes for p in pieces)


def test_cjk_text_is_cut_on_character_boundaries_by_bytes_not_characters() -> None:
    text = "漢" * 20_000  # 60,000 bytes of UTF-8, 20,000 characters
    pieces = split_utf8(text, 32 * 1024)
    assert len(pieces) == 2 and "".join(pieces) == text


def test_a_text_within_the_hot_path_budget_is_screened_whole() -> None:
    seg = segment(["x" * 1000], 1000, ClassifierLimits())
    assert seg.texts == ["x" * 1000] and not seg.oversize


def test_an_over_long_text_is_sampled_head_tail_and_middle_and_marked_oversize() -> None:
    text = "".join(f"{i:07d} " for i in range(10_000))  # 80,000 characters, every offset distinct
    seg = segment([text], 16_000, ClassifierLimits(), random.Random(7))
    assert seg.oversize
    assert seg.texts[0] == text[:4000] and seg.texts[-1] == text[-4000:]
    assert len(seg.texts) == 4 and all(t in text for t in seg.texts)
    assert sum(len(t) for t in seg.texts) == 16_000


def test_middle_windows_move_so_a_payload_cannot_be_hidden_at_a_known_offset() -> None:
    marked = "".join(chr(0x4E00 + (i % 2000)) for i in range(100_000))
    seen = {segment([marked], 16_000, ClassifierLimits(), random.Random(s)).texts[1][:5] for s in range(20)}
    assert len(seen) > 10


def test_tiny_classifier_limits_keep_head_and_tail_and_say_oversize() -> None:
    seg = segment(["y" * 1000], 1000, ClassifierLimits(max_text_bytes=100, max_batch_texts=3))
    assert seg.oversize and len(seg.texts) == 3


def test_retro_screening_covers_every_piece_in_requests_the_classifier_accepts() -> None:
    text = "z" * 10_000
    batches = whole([text], ClassifierLimits(max_text_bytes=100, max_batch_texts=8))
    assert all(len(b) <= 8 for b in batches)
    assert "".join(p for b in batches for p in b) == text


def test_each_score_is_judged_against_its_own_pieces_threshold() -> None:
    """A partial piece's in-band score (threshold raised to the band edge, 0.64) must not be
    judged against a full piece's threshold (0.5): the strongest pair per label wins."""
    scores, thresholds = strongest(
        [("harmful", 0.6, 0.64), ("harmful", 0.3, 0.5), ("benign", 0.9, 0.0), ("benign", 0.4, 0.0)]
    )
    assert scores == {"harmful": 0.6, "benign": 0.9} and thresholds == {"harmful": 0.64}
    scores, thresholds = strongest([("harmful", 0.6, 0.64), ("harmful", 0.55, 0.5)])
    assert (scores["harmful"], thresholds["harmful"]) == (0.55, 0.5)  # past its threshold: it fires


async def test_a_flood_of_refused_requests_asks_the_classifier_for_its_limits_once_at_a_time() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:  # nobody listens
        caller = ClassifierCaller(channel, CircuitBreaker("classifier"))
        for _ in range(100):
            caller._refresh_limits_soon()
        first = caller._refreshing
        assert first is not None and not first.done()
        for _ in range(100):
            caller._refresh_limits_soon()
        assert caller._refreshing is first
        assert await first == ClassifierLimits()  # unreachable: the known limits stay


def test_payload_texts_count_against_the_same_budget() -> None:
    """A decision's texts (the text, then what was decoded from it) are screened each
    whole while they fit `max_chars` together; past it, joined and sampled: oversize."""
    seg = segment(["a" * 600, "b" * 400], 1000, ClassifierLimits())
    assert seg.texts == ["a" * 600, "b" * 400] and not seg.oversize
    seg = segment(["a" * 600, "b" * 401], 1000, ClassifierLimits(), random.Random(1))
    assert seg.oversize and seg.texts[0] == "a" * 250 and seg.texts[-1] == "b" * 250


def test_never_more_texts_than_the_classifier_takes_in_one_request() -> None:
    seg = segment([f"payload {i}" for i in range(100)], 16_000, ClassifierLimits(max_batch_texts=64))
    assert len(seg.texts) == 64 and seg.oversize
    assert seg.texts[0] == "payload 0" and seg.texts[-1] == "payload 99"
