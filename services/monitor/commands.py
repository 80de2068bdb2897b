"""What the monitor's offline commands (deadletters, labels, promotion) share: the
monitor's own settings for a process that serves nothing, `--since`, and one way to run a
command against the monitor's database with one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.common.errors import InvalidArgument

_AGO = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_AGO = timedelta(days=400)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """ "24h", "30m", "7d", "90s" ago, or an ISO 8601 time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    m = _AGO.match(text.strip())
    if m:
        ago = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
        if ago > MAX_AGO:
            raise InvalidArgument(f"--since {text!r} is further back than {MAX_AGO.days} days")
        return now - ago
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(f"--since {text!r}: give a duration (24h, 30m, 7d) or an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def command_settings(rest: list[str]):
    """The monitor's settings from the flags a command left (--database-url, --region,
    MONITOR_* env vars...). It serves nothing, so the service's TLS flags do not apply:
    --plaintext is implied unless a TLS flag was given."""
    from services.monitor.settings import MonitorSettings

    if not any(a.startswith(("--plaintext", "--tls-")) for a in rest):
        rest = [*rest, "--plaintext"]
    return MonitorSettings.parse(rest)


def run_against_database(parser: argparse.ArgumentParser, command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; a bad argument it finds is the parser's one-line error (exit 2), a
    database it cannot reach one line on stderr (exit 1)."""
    try:
        return asyncio.run(command)
    except InvalidArgument as exc:
        parser.error(exc.message)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot read the monitor's database at --database-url: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
