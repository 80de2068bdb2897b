"""Text -> model input arrays, and model output rows -> per-text scores.

Both default models see long texts as overlapping windows and a text's score is the
maximum over its windows for every non-benign label (the minimum for ``benign``): a
jailbreak hidden in the middle of a long, otherwise harmless document must still win.
The model build, the evaluation and the serving code all call these functions, so the
three can never disagree about how a text is cut up.  Nothing here knows about gRPC.

Two input kinds, named by ``inputs.kind`` in a model's manifest:

* ``token_ids`` (encoder): WordPiece ids from a ``tokenizers.Tokenizer``; each window is
  ``[CLS] + up to max_len-2 content tokens + [SEP]``; consecutive windows start
  ``stride`` content tokens apart; rows are right-padded with ``pad_id`` and come with an
  ``attention_mask``.
* ``text`` (tier-1 n-gram model): lower-cased Unicode code points; each window holds up to
  ``max_len`` characters, consecutive windows start ``stride`` characters apart, rows are
  right-padded with 0 (NUL characters in the text are dropped so that 0 only ever means
  padding).  The n-gram hashing itself happens inside the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BENIGN = "benign"


@dataclass(frozen=True)
class Windows:
    """A batch of model rows cut from ``n_texts`` texts.

    ``text_index[i]`` is the position (in the input sequence) of the text that row ``i``
    was cut from; every text has at least one row, in order, so rows of one text are
    contiguous.
    """

    arrays: dict[str, np.ndarray]
    text_index: np.ndarray
    n_texts: int

    @property
    def n_rows(self) -> int:
        return int(self.text_index.shape[0])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` items, ``stride`` apart, covering ``length``.

    The last window is aligned to the end of the sequence (rather than running past it) so
    that every window is as full as possible and the tail is never scored on a fragment.
    """
    if window <= 0 or stride <= 0:
        raise ValueError("window and stride must be positive")
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def token_windows(
    tokenizer,
    texts: Sequence[str],
    max_len: int = 256,
    stride: int = 128,
    *,
    max_windows: int | None = None,
) -> Windows:
    """Tokenise ``texts`` and cut them into encoder rows of at most ``max_len`` tokens.

    ``tokenizer`` is a ``tokenizers.Tokenizer``; its own truncation and padding settings are
    ignored (texts are encoded without special tokens, then windowed here).  ``max_windows``
    optionally caps the rows per text (first windows kept) for callers that need a bound.
    Returns ``input_ids`` and ``attention_mask`` as int64 ``[rows, longest row]``.
    """
    if max_len < 3:
        raise ValueError("max_len must leave room for [CLS] and [SEP]")
    cls_id = _special_id(tokenizer, "[CLS]")
    sep_id = _special_id(tokenizer, "[SEP]")
    pad_id = _special_id(tokenizer, "[PAD]", default=0)
    body = max_len - 2
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False) if texts else []
    rows: list[list[int]] = []
    owners: list[int] = []
    for i, enc in enumerate(encodings):
        ids = enc.ids
        starts = window_starts(len(ids), body, min(stride, body))
        if max_windows is not None:
            starts = starts[:max_windows]
        for s in starts:
            rows.append([cls_id, *ids[s : s + body], sep_id])
            owners.append(i)
    width = max((len(r) for r in rows), default=2)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return Windows(
        arrays={"input_ids": input_ids, "attention_mask": mask},
        text_index=np.asarray(owners, dtype=np.int64),
        n_texts=len(encodings),
    )


def codepoints(text: str) -> np.ndarray:
    """The n-gram model's view of a text: lower-cased code points without NULs (uint32)."""
    clean = text.lower().replace("\x00", "")
    return np.frombuffer(clean.encode("utf-32-le"), dtype=np.uint32)


def char_windows(
    texts: Sequence[str],
    max_len: int = 1024,
    stride: int = 512,
    *,
    max_windows: int | None = None,
) -> Windows:
    """Cut ``texts`` into n-gram model rows: int64 ``codepoints [rows, longest row]``, 0-padded."""
    pieces: list[np.ndarray] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        cps = codepoints(text)
        starts = window_starts(len(cps), max_len, min(stride, max_len))
        if max_windows is not None:
            starts = starts[:max_windows]
        for s in starts:
            pieces.append(cps[s : s + max_len])
            owners.append(i)
    width = max((len(p) for p in pieces), default=1)
    width = max(width, 1)
    out = np.zeros((len(pieces), width), dtype=np.int64)
    for r, piece in enumerate(pieces):
        out[r, : len(piece)] = piece
    return Windows(
        arrays={"codepoints": out},
        text_index=np.asarray(owners, dtype=np.int64),
        n_texts=len(texts),
    )


def max_over_windows(row_probs: np.ndarray, text_index: np.ndarray, n_texts: int, labels: Sequence[str]) -> np.ndarray:
    """Per-text scores from per-row probabilities ``[rows, labels]``.

    Non-benign labels take the maximum over a text's windows, ``benign`` the minimum: a
    text is as unsafe as its worst window.  The result no longer sums to one per row; each
    column is the score the policy thresholds.
    """
    row_probs = np.asarray(row_probs, dtype=np.float32)
    out = np.empty((n_texts, row_probs.shape[1]), dtype=np.float32)
    out[:] = np.nan
    order_ok = text_index.size == 0 or bool(np.all(np.diff(text_index) >= 0))
    if order_ok and text_index.size:
        starts = np.flatnonzero(np.r_[True, np.diff(text_index) != 0])
        owners = text_index[starts]
        mx = np.maximum.reduceat(row_probs, starts, axis=0)
        mn = np.minimum.reduceat(row_probs, starts, axis=0)
        out[owners] = mx
        for j, label in enumerate(labels):
            if label == BENIGN:
                out[owners, j] = mn[:, j]
    else:
        for t in range(n_texts):
            sel = row_probs[text_index == t]
            if sel.size:
                out[t] = sel.max(axis=0)
                for j, label in enumerate(labels):
                    if label == BENIGN:
                        out[t, j] = sel[:, j].min()
    return out


def _special_id(tokenizer, token: str, default: int | None = None) -> int:
    tid = tokenizer.token_to_id(token)
    if tid is None:
        if default is None:
            raise ValueError(f"tokenizer has no {token} token")
        return default
    return int(tid)
