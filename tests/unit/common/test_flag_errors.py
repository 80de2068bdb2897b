"""A bad flag or value, given to any service, is one argparse-style line on stderr
(`<prog>: error: ...`) and exit status 2, never a Python traceback; `--help` lists the
choices of every enumerated flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

#: Per service: one of its own enumerated flags with its choices.
ENUMS = {
    "services.ratelimit": ("--fail-mode", "{open,closed}"),
    "services.classifier": ("--execution-provider", "{auto,cuda,cpu}"),
    "services.enforcer": ("--log-level", "{DEBUG,INFO,WARNING,ERROR}"),
    "services.monitor": ("--alert-webhook-auth", "{hmac,bearer}"),
}
BAD = {
    "unknown flag": (["--bad-flag"], "unrecognized arguments: --bad-flag"),
    "enum": (
        ["--plaintext", "--event-loop", "nonsense"],
        "argument --event-loop: Input should be 'uvloop' or 'asyncio'",
    ),
    "int": (
        ["--plaintext", "--max-message-bytes", "lots"],
        "argument --max-message-bytes: Input should be a valid integer",
    ),
    "int below minimum": (["--plaintext", "--max-concurrent-rpcs", "0"], "argument --max-concurrent-rpcs"),
    "float": (["--plaintext", "--drain-grace-seconds", "soon"], "argument --drain-grace-seconds"),
    "address": (["--plaintext", "--listen", "nowhere"], "address 'nowhere' is not HOST:PORT"),
    "json list": (["--plaintext", "--allowed-client-sans", "[oops"], "argument --allowed-client-sans: not a JSON list"),
    "no transport": ([], "no transport security chosen"),
    "missing value": (["--plaintext", "--listen"], "argument --listen: expected one argument"),
}


def run(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_PLAINTEXT", "_LISTEN"))}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=120,
    )


def assert_one_line_error(out: subprocess.CompletedProcess, module: str, expected: str) -> None:
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"python -m {module}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("module", sorted(ENUMS))
def test_bad_flag_is_one_line_and_status_2(module: str, case: str) -> None:
    args, expected = BAD[case]
    assert_one_line_error(run(module, args), module, expected)


@pytest.mark.parametrize("module", sorted(ENUMS))
def test_service_enum_rejects_nonsense_naming_the_choices(module: str) -> None:
    flag, choices = ENUMS[module]
    out = run(module, ["--plaintext", flag, "nonsense"])
    first = choices.strip("{}").split(",")[0]
    assert_one_line_error(out, module, f"argument {flag}: Input should be ")
    assert f"'{first}'" in out.stderr and "(got 'nonsense')" in out.stderr.lower()


def test_bad_env_value_names_the_flag() -> None:
    out = run("services.ratelimit", ["--plaintext"], env={"RATELIMIT_FAIL_MODE": "maybe"})
    assert_one_line_error(out, "services.ratelimit", "argument --fail-mode: Input should be 'open' or 'closed'")


@pytest.mark.parametrize("module", sorted(ENUMS))
def test_help_lists_the_choices_of_enumerated_flags(module: str) -> None:
    out = run(module, ["--help"])
    assert out.returncode == 0, out.stderr
    flag, choices = ENUMS[module]
    assert f"{flag} {choices}" in out.stdout
    assert "--event-loop {uvloop,asyncio}" in out.stdout
    assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in out.stdout


def test_log_level_is_case_insensitive() -> None:
    from services.ratelimit.settings import RatelimitSettings

    assert RatelimitSettings.parse(["--plaintext", "--log-level", "debug"]).log_level == "DEBUG"


def test_a_config_error_at_start_ends_with_one_error_line_and_status_2(tmp_path) -> None:
    """Caught while building (a required file missing): the argparse-style line for the
    person at the terminal, besides the JSON log line for the log pipeline."""
    out = run(
        "services.enforcer",
        ["--plaintext", "--upstream-plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", "",
         "--spool-dir", str(tmp_path), "--hmac-key-file", ""],
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    line = "python -m services.enforcer: error: --hmac-key-file is required: the region's key for account pseudonyms"
    assert out.stderr.splitlines().count(line) == 1
    others = [x for x in out.stderr.splitlines() if x.strip() and x != line]
    assert all(json.loads(x)["msg"] == "cannot start" for x in others), others  # the log pipeline's line


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("services.common.healthcheck", ["--timeout", "soon", "127.0.0.1:1"], "argument --timeout: invalid float"),
        ("services.ratelimit.config_check", ["--bogus"], "the following arguments are required: --config"),
        ("services.monitor.console", ["bogus"], "argument command: invalid choice: 'bogus'"),
    ],
)
def test_the_services_small_commands_report_bad_flags_the_same_way(module: str, args: list[str], expected: str) -> None:
    assert_one_line_error(run(module, args), module, expected)
