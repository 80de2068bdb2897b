"""CompletionSession: windows due at the right offsets and holding the right text,
the tail screened on finish, a cut that stops the stream, fail modes, and exactly
one signal per completion under the data policy."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from safeguards.v1 import signals_pb2

from services.common.errors import FailedPrecondition, InvalidArgument
from services.enforcer.policy import Action
from services.enforcer.requests import PromptRequest
from services.enforcer.streaming import window_ends
from tests.unit.enforcer_stream.helpers import IDENT, RecordingClassifier, make_screener

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x9Jk2mQ8vLpR3sT\nq4nB6dF0hZ1cW5yU8eK2aP9oGjXr\n"


def test_window_due_only_after_every_chars_and_ends_at_the_newest_text() -> None:
    assert window_ends(0, 9, every=10, window=30) == []
    assert window_ends(0, 10, every=10, window=30) == [10]
    assert window_ends(10, 19, every=10, window=30) == []
    assert window_ends(10, 23, every=10, window=30) == [23]
    assert window_ends(23, 23, every=10, window=30, final=True) == []
    assert window_ends(23, 25, every=10, window=30, final=True) == [25]


def test_a_chunk_larger_than_the_window_is_covered_by_overlapping_windows() -> None:
    assert window_ends(0, 100, every=10, window=30) == [25, 40, 55, 70, 85, 100]


@given(
    screened=st.integers(0, 500),
    new=st.integers(0, 2000),
    every=st.integers(1, 300),
    window=st.integers(1, 600),
    final=st.booleans(),
)
def test_windows_cover_every_new_character(screened: int, new: int, every: int, window: int, final: bool) -> None:
    length = screened + new
    ends = window_ends(screened, length, every, window, final=final)
    if not ends:
        assert new == 0 or (not final and new < every)
        return
    assert ends == sorted(ends) and ends[-1] == length and all(screened < e <= length for e in ends)
    covered = set()
    for e in ends:
        covered.update(range(max(0, e - window), e))
    assert set(range(screened, length)) <= covered


async def test_feeds_screen_windows_at_the_due_offsets_with_the_last_window_chars(tmp_path) -> None:
    screener, cl, pub = make_screener(tmp_path, every=10, window=30)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    text = "".join(chr(ord("a") + i % 26) for i in range(47))
    offsets = [4, 9, 10, 15, 24, 31, 47]  # cumulative lengths after each chunk
    windows_per_chunk, prev = [], 0
    for end in offsets:
        v = await s.feed(text[prev:end])
        windows_per_chunk.append(v.windows)
        assert not v.cut and v.result is None and v.action is Action.ALLOW
        prev = end
    # due at 10 (4+9>=10 -> screened at 10), next at >=20 (24), next at >=34 (47)
    assert windows_per_chunk == [0, 0, 1, 0, 1, 0, 1]
    assert cl.texts == [text[0:10], text[0:24], text[17:47]]
    assert not pub.records  # no signal before the end


async def test_a_window_is_classified_with_what_it_decodes_to(tmp_path) -> None:
    """Completion windows go through textnorm.classifier_texts like prompts: an encoded
    harmful passage is classified decoded (the classifier here flags "HARMFUL")."""
    screener, cl, pub = make_screener(tmp_path, every=10, window=200)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    encoded = base64.b64encode(b"HARMFUL step by step instructions").decode()
    v = await s.feed("Here it is: " + encoded)
    assert v.cut and v.action is Action.BLOCK
    assert cl.calls == [["Here it is: " + encoded, "HARMFUL step by step instructions"]]
    plain = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    assert not (await plain.feed("A plain answer with no payload.")).cut
    assert cl.calls[-1] == ["A plain answer with no payload."]


async def test_finish_screens_the_unscreened_tail_and_emits_one_signal(tmp_path) -> None:
    screener, cl, pub = make_screener(tmp_path, every=10, window=30)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION, prompt_decision_id="p1")
    await s.feed("0123456789")  # screened at 10
    await s.feed("abc")
    v = await s.finish()
    assert cl.texts == ["0123456789", "0123456789abc"]
    assert not v.cut and v.result is not None and v.result.outcome.action is Action.ALLOW
    assert v.chunk_index == 1
    (sig,) = pub.signals()
    assert sig.surface == signals_pb2.SURFACE_SCREEN_COMPLETION and sig.decision_id == v.result.decision_id
    assert sig.prompt_decision_id == "p1"
    assert sig.content.characters == 13 and sig.content.redacted_snippet == "0123456789abc"
    assert sig.account_hmac and "acct-raw-7" not in sig.SerializeToString().decode("latin-1")
    with pytest.raises(FailedPrecondition):
        await s.feed("more")
    s.abandon()  # already closed: no second signal
    assert len(pub.records) == 1


async def test_a_blocklisted_term_cuts_and_later_feeds_are_refused_unscreened(tmp_path) -> None:
    screener, cl, pub = make_screener(tmp_path, every=10, window=30)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    assert not (await s.feed("Sure, here is the pluto")).cut
    v = await s.feed("nium recipe you asked for")  # the term spans two chunks
    assert v.cut and v.replacement == "[cut]" and v.action is Action.BLOCK and v.chunk_index == 1
    assert v.result is not None and "blocklist" in [r.code for r in v.result.outcome.reasons]
    calls = len(cl.texts)
    later = await s.feed("HARMFUL and more")
    assert later.cut and later.refused and later.chunk_index == 2 and later.result is None
    assert len(cl.texts) == calls  # nothing screened after the cut
    assert (await s.finish()) is v
    s.abandon()
    (sig,) = pub.signals()
    assert sig.action == 5  # ACTION_BLOCK


async def test_a_private_key_in_the_completion_cuts_and_is_masked_in_the_signal(tmp_path) -> None:
    screener, _cl, pub = make_screener(tmp_path, every=20, window=200)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_EXT_PROC_RESPONSE)
    out = [await s.feed(PEM[i : i + 7]) for i in range(0, len(PEM), 7)]
    assert any(v.cut for v in out)
    (sig,) = pub.signals()
    assert "pii.private_key" in [r.code for r in sig.reasons]
    assert "MIIEow" not in sig.content.redacted_snippet and sig.surface == signals_pb2.SURFACE_EXT_PROC_RESPONSE


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
async def test_a_private_key_is_cut_in_the_chunk_that_completes_its_begin_line(tmp_path, chunk: int) -> None:
    """Tier-0 runs on every chunk, not on the classifier's schedule: with windows due only
    every 2,000 characters, the key's BEGIN line still cuts the chunk that completes it,
    so no key material reaches the client (the cut chunk is replaced, not sent)."""
    screener, cl, _pub = make_screener(tmp_path, every=2000, window=2000)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_EXT_PROC_RESPONSE)
    text = "Here is the key you asked for:\n" + PEM
    sent = ""
    for i in range(0, len(text), chunk):
        piece = text[i : i + chunk]
        v = await s.feed(piece)
        if v.cut:
            assert v.windows == 0 and "pii.private_key" in [r.code for r in v.result.outcome.reasons]
            break
        sent += piece
    else:
        raise AssertionError("the key was never cut")
    header_end = text.index("KEY-----") + len("KEY-----")
    assert len(sent) < header_end <= len(sent) + chunk  # cut in the chunk completing the header
    assert "MIIEow" not in sent
    assert cl.texts == []  # the classifier's schedule was never due


async def test_a_blocked_term_split_over_one_character_chunks_never_completes(tmp_path) -> None:
    screener, _cl, _pub = make_screener(tmp_path, every=1000, window=1000)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    text = "filler " * 100 + "the plutonium recipe is"
    sent = ""
    for ch in text:
        if (await s.feed(ch)).cut:
            break
        sent += ch
    assert "plutonium recipe" not in sent and sent.endswith("plutonium recip")


async def test_per_chunk_scans_are_bounded_by_the_overlap_not_the_stream(tmp_path) -> None:
    """Linear in the stream: each chunk's scan covers at most CHUNK_OVERLAP_CHARS of
    old text, however long the completion has grown."""
    from services.enforcer import streaming

    screener, _cl, _pub = make_screener(tmp_path, every=10**6, window=10**6)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    seen: list[int] = []
    real = s._scorer.detect

    async def spy(text, blocklist, kinds):
        seen.append(len(text))
        return await real(text, blocklist, kinds)

    s._scorer.detect = spy
    for _ in range(2000):
        await s.feed("0123456789")
    assert max(seen) <= streaming.CHUNK_OVERLAP_CHARS + 10


async def test_classifier_verdict_cuts_at_the_window_that_sees_it(tmp_path) -> None:
    screener, cl, _pub = make_screener(tmp_path, every=10, window=30)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    assert not (await s.feed("harmless text")).cut
    assert not (await s.feed("HARMF")).cut  # not due yet (5 < 10 new chars): not screened
    v = await s.feed("UL stuff!!")
    assert v.cut and "classifier.harmful" in [r.code for r in v.result.outcome.reasons]


async def test_completion_windows_are_screened_with_the_completion_models(tmp_path) -> None:
    """`completion.models` (a model trained on model output) screens completion windows;
    prompts keep `classifier.models`; unset, completions use the prompt's models."""
    screener, cl, _pub = make_screener(tmp_path, every=10, window=30, completion_models=("output_guard",))
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    await s.feed("a perfectly fine sentence")
    await screener.screen_prompt(PromptRequest(identity=IDENT, messages=(("user", "hello"),)))
    assert cl.models == [("output_guard",), ("prompt_guard",)]
    plain, cl2, _ = make_screener(tmp_path, every=10, window=30)
    await plain.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION).feed("a fine sentence")
    assert cl2.models == [("prompt_guard",)]


@pytest.mark.parametrize(("fail", "cut"), [("open", False), ("closed", True)])
async def test_classifier_failure_follows_the_policy_fail_mode(tmp_path, fail: str, cut: bool) -> None:
    screener, _cl, pub = make_screener(tmp_path, fail=fail, classifier=RecordingClassifier(fail="unavailable"))
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    v = await s.feed("a perfectly fine sentence")
    assert v.cut is cut
    if not cut:
        v = await s.finish()
        assert v.result.outcome.degraded
    (sig,) = pub.signals()
    assert list(sig.failed_dependencies) == ["classifier"]


async def test_abandoned_stream_emits_its_one_signal_with_what_is_known(tmp_path) -> None:
    screener, _cl, pub = make_screener(tmp_path, data_policy="ZERO_RETENTION")
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION)
    await s.feed("some text that was sent before the client left")
    s.abandon()
    s.abandon()
    (sig,) = pub.signals()
    assert "completion.abandoned" in [r.code for r in sig.reasons]
    assert not sig.content.redacted_snippet and not sig.content.text_hmac and not sig.request_id


async def test_completion_over_the_byte_limit_is_invalid(tmp_path) -> None:
    screener, _cl, _pub = make_screener(tmp_path)
    s = screener.open_completion(IDENT, surface=signals_pb2.SURFACE_SCREEN_COMPLETION, max_bytes=10)
    await s.feed("é" * 5)  # 10 bytes
    with pytest.raises(InvalidArgument, match="over 10 bytes"):
        await s.feed("x")


async def test_open_completion_rejects_missing_tenant_and_foreign_region(tmp_path) -> None:
    screener, _cl, _pub = make_screener(tmp_path)
    with pytest.raises(InvalidArgument, match="tenant is required"):
        screener.open_completion(IDENT.__class__(tenant=""), surface=2)
    with pytest.raises(FailedPrecondition, match="region 'mars'"):
        screener.open_completion(IDENT.__class__(tenant="a", region="mars"), surface=2)
