"""CLI: ``python -m modelbuild --out DIR [--cache DIR] [--force]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .build import DEFAULT_CACHE, DEFAULT_OUT, DEFAULT_SHARED, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelbuild",
        description="Build the default classifier models (deterministic; a no-op when inputs are unchanged).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp says up to date")
    parser.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation and model cards")
    parser.add_argument(
        "--shared-cache",
        default=DEFAULT_SHARED,
        help="folder of complete builds kept per input hash, reused by any checkout on this machine; empty "
        "disables (default: $SAFEGUARDS_MODEL_CACHE or %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    built = build(args.out, args.cache, force=args.force, run_eval=not args.no_eval, shared=args.shared_cache)
    print(f"{'built' if built else 'up to date'}: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
