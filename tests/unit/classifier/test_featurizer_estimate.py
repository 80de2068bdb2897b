"""The classifier's admission check before tokenising (`Featurizer.estimate`): exact for
the n-gram model's code points, and never above the real rows and tokens for the
encoder's WordPiece on text of the shapes requests carry (prose, code, URLs, numbers,
other scripts), so that refusing on the estimate only refuses work the real rows would
not fit either. (The stated exception, runtime.MAX_CHARS_PER_TOKEN: text of a few very
long words that are single tokens, or of words WordPiece cannot piece, each one [UNK]
however long; such text may be refused where it would have fit, and gets a PARTIAL
verdict from the cascade's first stage.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classifier import manifest as mf
from services.classifier.runtime import Featurizer
from tests.e2e.failsafe_prompts import ATTACKS, BENIGN, long_benign
from tests.unit.classifier.builtmodels import BUILD_TIMEOUT_S

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)

WORDS = [
    "the", "ignore", "previous", "instructions", "antidisestablishmentarianism", "def", "return", "x1", "sha256",
    "https://example.com/a/b?c=d&e=f", "12345.678", "日本語の文章", "Привет", "naïve", "café", "{\"k\": [1, 2]}",
    "ZmFrZSBiYXNlNjQ=", "!!!", "—", "self.value", "__init__", "C:\\Program Files", "aaaaaaaaaaaaaaaaaaaa",
]  # fmt: skip


def featurizer(models, name: str) -> Featurizer:
    man = mf.load(models / name)
    return Featurizer(man.inputs, models / name / "1")


def real(f: Featurizer, texts: list[str]) -> tuple[int, int]:
    w = f.windows(texts)
    return int(f.lengths(w).sum()), w.n_rows


@pytest.fixture(scope="module")
def encoder(built_models) -> Featurizer:
    return featurizer(built_models, "prompt_guard_minilm")


@pytest.fixture(scope="module")
def ngram(built_models) -> Featurizer:
    return featurizer(built_models, "prompt_guard_ngram")


def test_the_estimate_is_exact_for_code_points(ngram) -> None:
    texts = [*ATTACKS, *BENIGN, long_benign(16_000, seed=3), "Ärger " * 500, ""]
    for t in texts:
        assert ngram.estimate([t]) == real(ngram, [t]), len(t)
    assert ngram.estimate(texts) == real(ngram, texts)


def test_the_estimate_never_exceeds_the_encoders_real_rows_on_the_test_prompts(encoder) -> None:
    texts = [*ATTACKS, *BENIGN, *(long_benign(n, seed=n) for n in (3000, 4096, 9000, 16_000))]
    for t in texts:
        est, got = encoder.estimate([t]), real(encoder, [t])
        assert est[0] <= got[0] and est[1] <= got[1], (len(t), est, got)
    # and it is close enough to refuse what cannot fit: a 16 KB document is many windows
    assert encoder.estimate([long_benign(16_000, seed=1)])[1] >= 10


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), min_size=30, max_size=3000), st.integers(0, 2**32 - 1))
def test_the_estimate_never_exceeds_the_encoders_real_rows_on_mixed_text(encoder, words, seed) -> None:
    rng = random.Random(seed)
    text = "".join(w + rng.choice([" ", " ", "\n", "\t"]) for w in words)
    est, got = encoder.estimate([text]), real(encoder, [text])
    assert est[0] <= got[0] and est[1] <= got[1], (len(text), est, got)


def test_the_estimate_of_a_batch_is_the_sum_of_its_texts(encoder) -> None:
    texts = [long_benign(n, seed=n) for n in (100, 2000, 8000)]
    parts = np.array([encoder.estimate([t]) for t in texts]).sum(axis=0)
    assert encoder.estimate(texts) == tuple(int(x) for x in parts)
