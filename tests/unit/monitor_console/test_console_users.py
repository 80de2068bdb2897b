"""Console users file and password hashing: scrypt hashes verify and only verify the
right password, bad files say exactly what is wrong, the CLI prints a hash without
echoing the password, the example file holds the documented dev users, and the
console's password checker bounds how many checks run and wait."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from services.actions.authz import Operator, Role
from services.common.errors import ConfigError, ResourceExhausted
from services.monitor.console.users import (
    Account,
    PasswordChecker,
    authenticate,
    hash_password,
    load_users,
    verify_password,
)
from tests.support import ROOT

# Cheap parameters for the tests that hash many times (the file loader requires N >= 2**14).
FAST = {"n": 2**14, "r": 8, "p": 1}


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("correct horse", **FAST)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)
    assert not verify_password("correct horse", "plain-text")
    # Salted: the same password hashes differently each time.
    assert hash_password("correct horse", **FAST) != stored


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def _users_file(tmp_path, body: str):
    f = tmp_path / "users.yaml"
    f.write_text(body)
    return f


def test_users_file_parses_roles_and_regions(tmp_path) -> None:
    h = hash_password("pw-a", **FAST)
    f = _users_file(
        tmp_path,
        f'users:\n  - {{name: alice, password_hash: "{h}", role: reviewer, regions: [eu, us]}}\n'
        f'  - {{name: root, password_hash: "{h}", role: admin, regions: ["*"]}}\n',
    )
    users = load_users(f)
    assert users["alice"].operator == Operator("alice", Role.REVIEWER, frozenset({"eu", "us"}))
    assert authenticate(users, "alice", "pw-a") == users["alice"].operator
    assert authenticate(users, "alice", "pw-b") is None
    assert authenticate(users, "nobody", "pw-a") is None
    assert users["alice"].operator.covers("eu") and not users["alice"].operator.covers("ap")
    assert users["root"].operator.covers("ap")


GOOD = hash_password("x", **FAST)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("users: [1, 2", "not valid YAML"),
        ("- a\n", "top level must be a mapping with a 'users' key"),
        ("people: []\n", "people: Extra inputs are not permitted"),
        (f'users: [{{name: a, password_hash: "{GOOD}", role: root, regions: [eu]}}]\n',
         "users.0.role: Input should be"),
        ('users: [{name: a, password_hash: "hunter2", role: viewer, regions: [eu]}]\n',
         "users.0.password_hash: is not a scrypt hash"),
        (f'users: [{{name: a, password_hash: "{GOOD}", role: viewer, regions: []}}]\n', "users.0.regions:"),
        (f'users: [{{name: "a b", password_hash: "{GOOD}", role: viewer, regions: [eu]}}]\n',
         "users.0.name: must be 1-64 letters"),
        (f'users: [{{name: a, password_hash: "{GOOD}", role: viewer, regions: [eu]}}, '
         f'{{name: a, password_hash: "{GOOD}", role: admin, regions: [eu]}}]\n', "users.1.name: 'a' appears twice"),
        ('users: [{name: a, password_hash: "scrypt$1024$8$1$AAAA$AAAA", role: viewer, regions: [eu]}]\n',
         "scrypt N must be a power of two >= 16384"),
    ],
)  # fmt: skip
def test_bad_users_files_say_what_is_wrong(tmp_path, text, error) -> None:
    f = _users_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_users(f)
    assert error in str(err.value) and str(f) in str(err.value)


def test_missing_users_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_users(tmp_path / "nope.yaml")


def test_example_users_file_holds_the_documented_dev_users() -> None:
    users = load_users(ROOT / "config" / "console-users.example.yaml")
    for role in ("admin", "reviewer", "viewer"):
        op = authenticate(users, f"dev-{role}", f"dev-{role}-password")
        assert op is not None and op.role == Role(role) and op.regions == frozenset({"*"})


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.monitor.console", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_hash_password_cli_reads_stdin_and_never_echoes_it() -> None:
    out = _cli("hash-password", stdin="s3cret-pass\n")
    assert out.returncode == 0, out.stderr
    assert verify_password("s3cret-pass", out.stdout.strip()) and "s3cret-pass" not in out.stdout + out.stderr
    empty = _cli("hash-password", stdin="\n")
    assert empty.returncode == 2 and "no password given" in empty.stderr


def test_check_users_cli(tmp_path) -> None:
    ok = _cli("check-users", str(ROOT / "config" / "console-users.example.yaml"))
    assert ok.returncode == 0 and "ok, 3 user(s)" in ok.stdout
    bad = _users_file(tmp_path, "users: {}\n")
    out = _cli("check-users", str(bad))
    assert out.returncode == 1 and f"{bad}: users: Input should be a valid list" in out.stderr


async def test_the_password_checker_runs_a_bounded_few_and_refuses_the_rest_at_once() -> None:
    users = {"ada": Account(Operator("ada", Role.ADMIN, frozenset({"*"})), hash_password("pw", **FAST))}
    checker = PasswordChecker(concurrency=1, queue=1)
    try:
        results = await asyncio.gather(
            *(checker.authenticate(users, "ada", "pw" if i == 0 else "wrong") for i in range(5)),
            return_exceptions=True,
        )
    finally:
        checker.close()
    assert results[0] == users["ada"].operator and results[1] is None  # one checking, one waiting
    assert all(isinstance(r, ResourceExhausted) for r in results[2:])  # the rest refused, not queued
