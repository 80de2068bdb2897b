"""Render each service's settings as a markdown table for the README.

The settings classes are the one place where flags, env vars and defaults are
defined; the README's configuration reference is generated from them
(`python -m tools.settings_doc --write README.md`) and a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from services.common.settings import ServiceSettings


def settings_classes() -> dict[str, type[ServiceSettings]]:
    from services.classifier.settings import ClassifierSettings
    from services.enforcer.settings import EnforcerSettings
    from services.monitor.settings import MonitorSettings
    from services.ratelimit.settings import RatelimitSettings

    return {
        "ratelimit": RatelimitSettings,
        "classifier": ClassifierSettings,
        "enforcer": EnforcerSettings,
        "monitor": MonitorSettings,
    }


def render(cls: type[ServiceSettings]) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = ""
        shown = f"`{default}`" if default not in ("", [], None) else ""
        meaning = (info.description or "").split(" [env: ")[0].replace("|", "\\|")
        rows.append(f"| `--{name.replace('_', '-')}` | `{prefix}{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows)


def update(text: str) -> str:
    for name, cls in settings_classes().items():
        pattern = re.compile(rf"(<!-- settings:{name} -->\n).*?(\n<!-- /settings:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README has no <!-- settings:{name} --> block")
        text = pattern.sub(lambda m, c=cls: m.group(1) + render(c) + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="README", help="rewrite the settings blocks of this file in place")
    ns = parser.parse_args(argv)
    if ns.write:
        path = Path(ns.write)
        path.write_text(update(path.read_text()))
        return 0
    for name, cls in settings_classes().items():
        print(f"## {name}\n\n{render(cls)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
