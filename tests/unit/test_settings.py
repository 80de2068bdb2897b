"""Settings: every flag is documented in --help with its env var, env vars apply,
flags win over env vars, and transport security must be chosen explicitly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.classifier.settings import ClassifierSettings
from services.enforcer.settings import EnforcerSettings
from services.monitor.settings import MonitorSettings
from services.ratelimit.settings import RatelimitSettings
from tests.support import ROOT

SERVICES = {
    "services.ratelimit": RatelimitSettings,
    "services.classifier": ClassifierSettings,
    "services.enforcer": EnforcerSettings,
    "services.monitor": MonitorSettings,
}


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_help_documents_every_flag_with_its_env_var(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    cls = SERVICES[module]
    prefix = cls.model_config["env_prefix"]
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert f"[env: {prefix}{name.upper()}]" in text, name
        assert info.description and not info.description.startswith(" [env:"), f"{name} has no description"


def test_env_vars_apply_and_flags_win(monkeypatch) -> None:
    monkeypatch.setenv("RATELIMIT_REDIS_URL", "redis://env:1/0")
    monkeypatch.setenv("RATELIMIT_PLAINTEXT", "true")
    monkeypatch.setenv("RATELIMIT_FAIL_MODE", "closed")
    monkeypatch.setenv("RATELIMIT_ALLOWED_CLIENT_SANS", "")
    s = RatelimitSettings.parse(["--fail-mode", "open"])
    assert s.redis_url == "redis://env:1/0"
    assert s.plaintext is True
    assert s.fail_mode == "open"


def test_list_settings_accept_commas(monkeypatch) -> None:
    s = RatelimitSettings.parse(
        [
            "--tls-cert-file",
            "c",
            "--tls-key-file",
            "k",
            "--tls-client-ca-file",
            "ca",
            "--allowed-client-sans",
            "spiffe://a,spiffe://b",
        ]
    )
    assert s.allowed_client_sans == ["spiffe://a", "spiffe://b"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no transport security chosen"),
        ({"plaintext": True, "tls_cert_file": "x"}, "--plaintext conflicts"),
        ({"plaintext": True, "listen": "nonsense"}, "is not HOST:PORT"),
        ({"plaintext": True, "allowed_client_sans": ["a"]}, "needs mutual TLS"),
        ({"plaintext": True, "fail_mode": "maybe"}, "fail_mode"),
    ],
)
def test_invalid_settings_are_rejected_with_a_clear_message(kwargs, message) -> None:
    with pytest.raises((ValidationError, ValueError)) as err:
        RatelimitSettings(**kwargs)
    assert message in str(err.value)


def test_config_check_command(tmp_path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "services.ratelimit.config_check", "--config", str(ROOT / "config" / "ratelimit")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0 and "ok: 2 domain(s): gateway, llm" in good.stdout
    (tmp_path / "x.yaml").write_text("domain: x\ndescriptors:\n  - key: ''\n")
    bad = subprocess.run(
        [sys.executable, "-m", "services.ratelimit.config_check", "--config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "x.yaml: descriptors[0]: key must be a non-empty string" in bad.stderr
