"""Generate Python code for our protos (protos/safeguards/...) with grpcio-tools.

Generated code is never edited or committed: `make` runs this into gen/, and a test
regenerates into a temporary folder and fails if gen/ differs (stale code).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Compile every proto under protos/ into `out`; returns the generated files."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {files}")
    # Make each generated folder a regular package so `safeguards.v1` imports cleanly.
    for folder in {out / Path(f).parent for f in files}:
        cur = folder
        while cur != out:
            (cur / "__init__.py").touch()
            cur = cur.parent
    return sorted(p for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "gen"), help="output folder (default: gen/)")
    ns = parser.parse_args(argv)
    generated = generate(Path(ns.out))
    print(f"generated {len(generated)} files into {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
