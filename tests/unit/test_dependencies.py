"""The dependency locks: requirements.lock (what the image installs) and requirements-dev.lock
(what `make` installs) pin every transitive package with hashes, agree with the direct pins
in requirements*.txt, and the runtime lock carries what the serving code imports and no
package of the model build or the tests.

The serving code is what the image holds: services/ less the model build and its evaluation
(kept out by deploy/Dockerfile.dockerignore), plus the command-line client (safeguards/).
Which distribution provides an imported module is read from the installed distributions'
file lists (RECORD), so `envoy.service.auth.v3` is xds-protos, not a guess from its name.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
SERVING_ROOTS = (ROOT / "services", ROOT / "safeguards")
# The model build and its evaluation (host only, `make models`): outside the serving roots.
MODEL_BUILD = ROOT / "modelbuild"
LOCAL_PACKAGES = {"services", "safeguards"}  # the repository's own (safeguards.v1 is generated into gen/)
# Packages the issue names as build-only: they must be pinned for the build, never for serving.
BUILD_ONLY = {"onnx", "safetensors"}
# Runtime pins that no serving module imports by name, each with why the image needs it.
USED_WITHOUT_IMPORT = {
    "hiredis": "redis-py's reply parser, loaded by redis when installed",
}
# The distribution that ships copies of other distributions' modules; installed first.
SHADOWED_BY = "xds-protos"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
REMAKE = "run `make lock` after editing requirements*.txt"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[str, Pin]:
    """Every entry of a lock; raises AssertionError naming the first line that is not
    `name==version` followed by sha256 hashes only (an option, URL, marker or bare pin)."""
    pins: dict[str, Pin] = {}
    for entry in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        entry = entry.split(" #", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        requirement, *options = entry.split()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", requirement)
        assert m, f"{path.name}: {requirement!r} is not name==version (an option, URL or marker bypasses the lock)"
        bad = [o for o in options if not HASH.fullmatch(o)]
        assert not bad, f"{path.name}: {requirement}: {bad[0]!r} is not a --hash=sha256:… option"
        assert options, f"{path.name}: {requirement} has no hash"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}: {name} appears twice"
        pins[name] = Pin(name, m.group(2), frozenset(options))
    return pins


def read_pins(path: Path) -> dict[str, str]:
    """The direct pins of a requirements file and the files it includes (-r): name -> version."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(read_pins(path.parent / line[3:].strip()))
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier: a pin
        assert spec.operator == "==", f"{path.name}: {line!r} is not pinned with =="
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def own_pins(path: Path) -> set[str]:
    """The names pinned in this file itself, not in the files it includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonicalize_name(Requirement(line).name))
    return names


def serving_files() -> list[Path]:
    return sorted(p for root in SERVING_ROOTS for p in root.rglob("*.py"))


def third_party_imports(files: list[Path]) -> dict[str, set[str]]:
    """Every absolute import of a module outside the standard library and the repository
    (and every package read by name: resources.files, import_module): dotted module name ->
    the files (relative to the root) that import it."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif _loads_by_name(node):
                modules = [node.args[0].value]  # importlib.resources.files("pkg"), import_module("pkg")
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL_PACKAGES:
                    found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def _loads_by_name(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("files", "import_module") and isinstance(node.args[0].value, str)


@cache
def module_owners() -> dict[str, frozenset[str]]:
    """Dotted module (and package) name -> the installed distributions whose files provide it."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                continue
            stem = parts[-1].split(".", 1)[0]
            if not parts[-1].endswith((".py", ".so", ".pyd")):
                continue
            modules = list(parts[:-1]) + ([] if stem == "__init__" else [stem])
            for i in range(1, len(modules) + 1):
                owners.setdefault(".".join(modules[:i]), set()).add(name)
    return {k: frozenset(v) for k, v in owners.items()}


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_lock_entry_is_pinned_with_hashes(lock: Path) -> None:
    pins = read_lock(lock)
    assert len(pins) > 20, f"{lock.name}: only {len(pins)} entries"
    text = lock.read_text()
    # Continuation lines too: every line is a pin, a hash or a comment.
    for line in text.splitlines():
        stripped = line.strip()
        assert (
            not stripped
            or stripped.startswith("#")
            or HASH.match(stripped)
            or re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+ \\$", stripped)
        ), f"{lock.name}: unexpected line {line!r}"


def test_read_lock_refuses_what_would_bypass_the_hashes(tmp_path: Path) -> None:
    h = "--hash=sha256:" + "0" * 64
    for body, message in [
        ("grpcio==1.85.1\n", "has no hash"),
        (f"grpcio>=1.85 {h}\n", "is not name==version"),
        (f"--extra-index-url https://example.invalid/simple\ngrpcio==1.85.1 {h}\n", "is not name==version"),
        (f"grpcio @ https://example.invalid/grpcio.whl {h}\n", "is not name==version"),
        ("grpcio==1.85.1 --hash=md5:0123\n", "is not a --hash=sha256"),
        (f"grpcio==1.85.1 \\\n    {h}\nGRPCIO==1.85.1 {h}\n", "appears twice"),
    ]:
        path = tmp_path / "x.lock"
        path.write_text(body)
        with pytest.raises(AssertionError, match=message):
            read_lock(path)
    path.write_text(f"grpcio==1.85.1 \\\n    {h}\n    # via -r requirements.txt\n")
    assert read_lock(path) == {"grpcio": Pin("grpcio", "1.85.1", frozenset([h]))}


@pytest.mark.parametrize(
    ("requirements", "lock"),
    [("requirements.txt", RUNTIME_LOCK), ("requirements-dev.txt", DEV_LOCK)],
    ids=["runtime", "dev"],
)
def test_locks_hold_every_direct_pin_at_its_version(requirements: str, lock: Path) -> None:
    locked = read_lock(lock)
    for name, version in read_pins(ROOT / requirements).items():
        assert name in locked, f"{requirements} pins {name}=={version}, missing from {lock.name}: {REMAKE}"
        assert locked[name].version == version, (
            f"{requirements} pins {name}=={version}, {lock.name} has {locked[name].version}: {REMAKE}"
        )


def test_dev_lock_holds_the_runtime_lock_exactly() -> None:
    """Tests run the image's versions: the dev lock is resolved under the runtime lock."""
    dev = read_lock(DEV_LOCK)
    for name, pin in read_lock(RUNTIME_LOCK).items():
        assert dev.get(name) == pin, (
            f"{name}: requirements.lock has {pin.version}, requirements-dev.lock differs: {REMAKE}"
        )


def test_serving_imports_are_provided_by_the_runtime_lock() -> None:
    runtime = read_lock(RUNTIME_LOCK)
    imports = third_party_imports(serving_files())
    assert "onnxruntime" in imports and "grpc" in imports, sorted(imports)  # the walk sees the serving code
    owners = module_owners()
    problems = []
    for module, where in sorted(imports.items()):
        provided_by = owners.get(module)
        if not provided_by:
            problems.append(f"{module} (imported by {sorted(where)[0]}) is provided by no installed distribution")
        elif not provided_by & runtime.keys():
            problems.append(
                f"{module} (imported by {sorted(where)[0]}) comes from {sorted(provided_by)}, "
                "none of them in requirements.lock: pin it in requirements.txt"
            )
    assert not problems, "\n".join(problems)


def test_runtime_lock_has_no_build_or_test_package() -> None:
    runtime = read_lock(RUNTIME_LOCK)
    dev_only = own_pins(ROOT / "requirements-dev.txt")
    assert BUILD_ONLY <= dev_only, "onnx and safetensors are pinned for the model build in requirements-dev.txt"
    leaked = sorted(dev_only & runtime.keys())
    assert not leaked, f"build/test packages in requirements.lock (the image): {leaked}"


def test_every_runtime_pin_is_used_by_the_serving_code() -> None:
    """A pin in requirements.txt that no serving module imports is a build or test package
    in the image (or a dead one), unless USED_WITHOUT_IMPORT says why it is needed."""
    owners = module_owners()
    used = set().union(*(owners.get(m, frozenset()) for m in third_party_imports(serving_files())))
    unused = sorted(set(read_pins(ROOT / "requirements.txt")) - used - USED_WITHOUT_IMPORT.keys())
    assert not unused, f"requirements.txt pins {unused}, which no serving module imports"


def test_not_serving_code_stays_out_of_the_image() -> None:
    """The build context lets in only what serving needs (an allow list after `*`), and the
    model build is not part of it, nor imported by anything that is."""
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()]
    assert "*" in lines
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    assert MODEL_BUILD.name not in allowed and MODEL_BUILD.is_dir()
    importers = [p for p in serving_files() if re.search(r"^\s*(from|import) modelbuild\b", p.read_text(), re.M)]
    assert not importers, f"serving code imports the model build: {importers}"


def test_installs_verify_hashes() -> None:
    """`make` and the image install from the locks only, in hash-checking mode."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install [^\n&]*", dockerfile)
    assert installs, "deploy/Dockerfile installs nothing?"
    for command in installs:
        assert "--require-hashes" in command, f"deploy/Dockerfile: {command!r} does not check hashes"
        assert "requirements-dev.lock" not in command and ".txt" not in command, command
    assert any("-r requirements.lock" in c and "--target" not in c for c in installs), installs
    makefile = (ROOT / "Makefile").read_text()
    deps_rule = re.search(r"^\$\(DEPS_STAMP\):.*?(?=^\S)", makefile, re.M | re.S)
    assert deps_rule, "Makefile: no $(DEPS_STAMP) rule"
    pip_lines = [line.strip() for line in deps_rule.group(0).splitlines() if "pip install" in line]
    assert pip_lines == [
        f"$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/{SHADOWED_BY}.lock",
        "$(PY) -m pip install -q --require-hashes -r requirements-dev.lock",
    ], pip_lines


def _installed_sha256(file: metadata.PackagePath) -> str:
    digest = hashlib.sha256(file.locate().read_bytes()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_shared_files_are_their_owners_not_xds_protos_copies() -> None:
    """xds-protos ships older copies of generated modules that other distributions own
    (google/api, google/rpc, opentelemetry/proto, envoy/__init__.py); whichever installs last
    wins. Installed first (Makefile, Dockerfile), it loses each shared file to the owner: with
    its copy, `opentelemetry.exporter.otlp` fails to import (no InstrumentationScope)."""
    recorded: dict[str, list[tuple[str, str, metadata.PackagePath]]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            if file.hash is not None and file.hash.mode == "sha256":
                recorded.setdefault(str(file), []).append((name, file.hash.value, file))
    problems = []
    for path, owners in sorted(recorded.items()):
        if len({h for _, h, _ in owners}) < 2:
            continue  # one owner, or identical copies
        names = sorted(n for n, _, _ in owners)
        if SHADOWED_BY not in names:
            problems.append(f"{path}: shipped with different content by {names}; decide which wins")
            continue
        installed = _installed_sha256(owners[0][2])
        winners = [n for n, h, _ in owners if h == installed]
        if winners == [SHADOWED_BY] or not winners:
            problems.append(
                f"{path}: has {winners or 'no owner'}'s content, not {[n for n in names if n != SHADOWED_BY]}'s"
            )
    assert not problems, (
        f"{len(problems)} shared files wrong (reinstall {SHADOWED_BY} first, then the lock):\n"
        + "\n".join(problems[:20])
    )
