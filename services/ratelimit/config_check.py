"""`python -m services.ratelimit.config_check --config PATH`: validate a rate-limit
config file or directory the way the service would load it (envoyproxy/ratelimit's
config_check), for CI pipelines of config repositories."""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.errors import ConfigError
from services.common.settings import ArgumentParser
from services.ratelimit import config


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m services.ratelimit.config_check", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML file or directory of YAML files")
    ns = parser.parse_args(argv)
    try:
        cfg = config.load(Path(ns.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {len(cfg.domains)} domain(s): {', '.join(sorted(cfg.domains))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
