"""The client's flags without any server: a bad flag or value is one argparse-style
line and exit status 2; a service that is not there is one line and status 1; `--help`
lists the choices of enumerated flags; env vars stand in for connection flags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from safeguards.cli import duration
from tests.support import ROOT, free_port

SCRIPT = ROOT / ".venv" / "bin" / "safeguards"


def client(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAFEGUARDS_")}
    return subprocess.run(
        [sys.executable, "-m", "safeguards", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        input=stdin,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "prog", "expected"),
    [
        ([], "safeguards", "the following arguments are required: COMMAND"),
        (["nonsense"], "safeguards", "argument COMMAND: invalid choice: 'nonsense'"),
        (["screen", "--bad-flag", "hi"], "safeguards", "unrecognized arguments: --bad-flag"),
        (["screen", "--timeout", "soon", "hi"], "safeguards screen", "argument --timeout: invalid duration value"),
        (["screen", "--role", "god", "hi"], "safeguards screen", "argument --role: invalid choice: 'god'"),
        (["stream", "--chunk-chars", "0", "x"], "safeguards stream", "argument --chunk-chars: invalid positive"),
        (["ratelimit"], "safeguards ratelimit", "the following arguments are required: --descriptor/-d"),
        (["ratelimit", "-d", "tenant"], "safeguards ratelimit", "argument --descriptor/-d: invalid descriptor"),
        (["ratelimit", "-d", "a=b", "--hits", "many"], "safeguards ratelimit", "argument --hits: invalid int"),
        (["actions"], "safeguards actions", "the following arguments are required: ACTION"),
        (
            ["actions", "issue", "--kind", "ban", "--tenant", "t", "--reason", "r"],
            "safeguards actions issue",
            "argument --kind: invalid choice: 'ban' (choose from 'suspend-account', 'throttle-account', "
            "'force-block-category', 'kill-switch')",
        ),
        (["actions", "issue", "--kind", "kill-switch", "--tenant", "t"], "safeguards actions issue", "--reason"),
        (["actions", "revoke"], "safeguards actions revoke", "required: action_id, --reason"),
        (["cases", "list", "--status", "closed"], "safeguards cases list", "argument --status: invalid choice"),
        (["cases", "list", "--action", "nuke"], "safeguards cases list", "argument --action: invalid choice"),
        (["aggregates", "--window", "2m"], "safeguards aggregates", "argument --window: invalid choice: '2m'"),
        (["models", "--plaintext", "--ca-file", "ca.pem"], "safeguards models", "--plaintext conflicts"),
        (["models", "--cert-file", "c.pem"], "safeguards models", "--cert-file and --key-file go together"),
        (["models", "--ca-file", "/nonexistent/ca.pem"], "safeguards models", "cannot read /nonexistent/ca.pem"),
        (["screen", "--plaintext", "--messages-file", "/nonexistent.json"], "safeguards screen", "cannot read"),
    ],
)
def test_bad_flags_are_one_line_and_status_2(args: list[str], prog: str, expected: str) -> None:
    out = client(*args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], lines[0]
    assert out.stdout == ""


def test_bad_env_value_is_reported_like_its_flag() -> None:
    out = client("models", env={"SAFEGUARDS_TIMEOUT": "later"})
    assert out.returncode == 2
    assert out.stderr == "safeguards models: error: argument --timeout: invalid duration value: 'later'\n"


def test_a_service_that_is_not_there_is_one_line_and_status_1() -> None:
    port = free_port()
    out = client(
        "models", "--timeout", "2s", env={"SAFEGUARDS_CLASSIFIER": f"127.0.0.1:{port}", "SAFEGUARDS_PLAINTEXT": "1"}
    )
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("safeguards models: error: UNAVAILABLE: ")
    assert f"is the classifier running at 127.0.0.1:{port}?" in line
    assert "Traceback" not in out.stderr


def test_no_text_and_no_stdin_is_a_usage_error() -> None:
    out = client("screen", "--plaintext", stdin="")
    # An empty stdin is a prompt of "" (sent); a terminal would be refused: not testable here.
    assert out.returncode in (1, 2)
    assert len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["actions", "issue"], "{suspend-account,throttle-account,force-block-category,kill-switch}"),
        (["cases", "list"], "{allow,flag,redact,throttle,block}"),
        (["cases", "list"], "{open,actioned,dismissed}"),
        (["aggregates"], "{1m,5m,1h}"),
        (["screen"], "{user,system,assistant,tool}"),
    ],
)
def test_help_lists_the_choices_of_enumerated_flags(args: list[str], choices: str) -> None:
    out = client(*args, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert choices in text
    assert "[env: SAFEGUARDS_ENFORCER]" in text and "[env: SAFEGUARDS_TOKEN]" in text


def test_top_level_help_lists_every_command() -> None:
    out = client("--help")
    assert out.returncode == 0
    for name in ("screen", "stream", "ratelimit", "models", "classify", "actions", "cases", "aggregates"):
        assert f"    {name}" in out.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="make setup installs .venv/bin/safeguards")
def test_make_installs_the_safeguards_command() -> None:
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0 and "usage: safeguards" in out.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("250ms", 0.25), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-1s", "1 h 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        duration(text)
