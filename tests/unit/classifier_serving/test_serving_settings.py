"""Classifier settings: CLASSIFIER_* env vars apply, flags win, and the defaults are the
documented ones (--help completeness is tested for every service in tests/unit/test_settings.py)."""

from __future__ import annotations

import subprocess
import sys

from services.classifier.settings import ClassifierSettings
from tests.support import ROOT


def test_defaults_env_vars_and_flags(monkeypatch) -> None:
    monkeypatch.setenv("CLASSIFIER_PLAINTEXT", "true")
    monkeypatch.setenv("CLASSIFIER_MAX_TEXT_BYTES", "100")
    monkeypatch.setenv("CLASSIFIER_EXECUTION_PROVIDER", "cpu")
    s = ClassifierSettings.parse(["--max-text-bytes", "200"])
    assert s.max_text_bytes == 200
    assert s.execution_provider == "cpu"
    assert s.listen == "127.0.0.1:50052" and s.metrics_listen == "127.0.0.1:51052"
    assert s.models == "build/models" and s.default_model == "prompt_guard"


def test_a_bad_execution_provider_is_refused(monkeypatch) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.classifier", "--plaintext", "--execution-provider", "tpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode != 0
    assert "execution_provider" in out.stderr or "execution-provider" in out.stderr
