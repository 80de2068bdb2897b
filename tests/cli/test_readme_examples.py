"""Every `safeguards ...` command in the README's shell examples is one the client
accepts (flags, choices, values), so the examples cannot drift from the client; the
test against the mesh (test_cli_mesh.py) runs each kind of command for real."""

from __future__ import annotations

import re
import shlex

import pytest

from safeguards.cli import build_parser
from tests.support import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        joined = re.sub(r"\|\s*\n", "| ", joined)  # a pipe continued on the next line
        for line in joined.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|")
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, "|"]:
                if token != "|":
                    words.append(token)
                    continue
                if words and words[0] == "safeguards":
                    commands.append(shlex.join(words))
                words = []
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_subcommand() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert shown >= {"screen", "stream", "ratelimit", "models", "classify", "actions", "cases", "aggregates"}
    assert not re.search(r"^\s*grpcurl ", (ROOT / "README.md").read_text(), flags=re.M)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)
