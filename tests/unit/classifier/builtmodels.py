"""Where the classifier tests find (or build) the default models, and how long a build may take."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MODELS_DIR = ROOT / "build" / "models"
CACHE_DIR = ROOT / ".cache"
# A clean build takes minutes on two cores: tests that need the models get a long timeout.
BUILD_TIMEOUT_S = 1800
