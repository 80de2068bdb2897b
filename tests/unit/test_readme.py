"""The README's configuration reference is generated from the settings classes
(the one place flags are defined): it must not drift from them."""

from tests.support import ROOT
from tools import settings_doc


def test_readme_settings_tables_are_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert settings_doc.update(text) == text, "README is stale: run `python -m tools.settings_doc --write README.md`"


def test_readme_names_the_two_commands_ci_runs() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
