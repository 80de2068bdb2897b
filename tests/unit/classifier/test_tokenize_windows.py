"""Windowing: every token is covered, rows are well formed, scores aggregate per text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.classifier.tokenize import char_windows, codepoints, max_over_windows, token_windows, window_starts

LABELS = ["benign", "jailbreak", "prompt_injection", "harmful"]


@given(length=st.integers(0, 5000), window=st.integers(1, 600), stride=st.integers(1, 600))
def test_windows_cover_every_position_and_stay_in_bounds(length, window, stride):
    stride = min(stride, window)
    starts = window_starts(length, window, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and (s + window <= length or (s == 0 and length <= window))
        covered[s : s + window] = True
    assert covered.all()
    assert starts == sorted(set(starts))


def test_short_text_is_one_row_with_cls_and_sep(encoder_parts):
    _, _, tok = encoder_parts
    w = token_windows(tok, ["Hello world"], max_len=256, stride=128)
    ids, mask = w.arrays["input_ids"], w.arrays["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert w.n_rows == 1 and w.text_index.tolist() == [0]
    assert ids[0, 0] == tok.token_to_id("[CLS]") and ids[0, int(mask[0].sum()) - 1] == tok.token_to_id("[SEP]")


def test_long_text_becomes_overlapping_windows_of_at_most_max_len(encoder_parts):
    _, _, tok = encoder_parts
    text = " ".join(f"word{i}" for i in range(1500))
    body = tok.encode(text, add_special_tokens=False).ids
    w = token_windows(tok, ["short", text, "also short"], max_len=256, stride=128)
    ids, mask = w.arrays["input_ids"], w.arrays["attention_mask"]
    assert ids.shape[1] == 256
    assert w.text_index.tolist()[0] == 0 and w.text_index.tolist()[-1] == 2
    rows = np.flatnonzero(w.text_index == 1)
    assert len(rows) == len(window_starts(len(body), 254, 128))
    seen = []
    for r in rows:
        seen.extend(ids[r, 1 : int(mask[r].sum()) - 1].tolist())
    assert set(seen) == set(body)  # nothing lost between windows
    assert mask[w.text_index == 0].sum() < 256  # the short text is padded, not stretched


def test_empty_batch_and_empty_text(encoder_parts):
    _, _, tok = encoder_parts
    assert token_windows(tok, []).n_rows == 0
    w = token_windows(tok, [""])
    assert w.n_rows == 1 and w.arrays["attention_mask"].sum() == 2  # [CLS] [SEP]


def test_char_windows_lowercase_drop_nul_and_pad_with_zero():
    assert codepoints("AbC\x00d").tolist() == [ord(c) for c in "abcd"]
    w = char_windows(["Hi", "x" * 2500], max_len=1024, stride=512)
    assert w.text_index.tolist() == [0, 1, 1, 1, 1]
    cps = w.arrays["codepoints"]
    assert cps.shape == (5, 1024) and cps[0, :2].tolist() == [ord("h"), ord("i")] and not cps[0, 2:].any()


def test_text_score_is_max_over_windows_and_benign_is_min():
    probs = np.array(
        [[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05], [0.7, 0.1, 0.1, 0.1], [0.6, 0.1, 0.1, 0.2]], np.float32
    )
    out = max_over_windows(probs, np.array([0, 0, 0, 1]), 2, LABELS)
    assert out[0].tolist() == pytest.approx([0.1, 0.8, 0.1, 0.1])
    assert out[1].tolist() == pytest.approx([0.6, 0.1, 0.1, 0.2])
    # Unsorted window order gives the same answer.
    shuffled = max_over_windows(probs[[3, 1, 0, 2]], np.array([1, 0, 0, 0]), 2, LABELS)
    assert np.allclose(shuffled, out)
