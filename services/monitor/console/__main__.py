"""`python -m services.monitor.console`: hash a console password, check a users file.

python -m services.monitor.console hash-password < password-file
python -m services.monitor.console check-users config/console-users.example.yaml
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from services.common.errors import ConfigError
from services.common.settings import ArgumentParser
from services.monitor.console.users import MAX_PASSWORD, hash_password, load_users


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m services.monitor.console", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "hash-password",
        help="read a password (stdin, or a prompt on a terminal) and print its scrypt hash for the users file",
    )
    check = sub.add_parser("check-users", help="validate a console users file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("hash-password: no password given", file=sys.stderr)
            return 2
        if len(password) > MAX_PASSWORD:
            print(f"hash-password: a password is at most {MAX_PASSWORD} characters", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    try:
        users = load_users(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: ok, {len(users)} user(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
