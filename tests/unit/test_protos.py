"""Generated protobuf code is built by setup, never edited: it must match what
grpcio-tools makes from protos/ now. The protos pass Buf's STANDARD lint."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT
from tools import protogen


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    assert fresh
    for path in fresh:
        rel = path.relative_to(tmp_path)
        current = ROOT / "gen" / rel
        assert current.exists(), f"gen/{rel} missing: run `make protos`"
        assert filecmp.cmp(path, current, shallow=False), f"gen/{rel} is stale: run `make protos`"


def buf_binary() -> str | None:
    local = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_protos_pass_buf_standard_lint() -> None:
    buf = buf_binary()
    if buf is None:
        pytest.fail("buf is not installed: `make setup` installs it from npm into .cache/npm")
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
