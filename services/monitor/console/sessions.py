"""Server-side console sessions and the sign-in attempt limit, in the monitor's
PostgreSQL (so every replica behind a load balancer shares them, and a restart
signs nobody out).

The browser holds only a random session id; the table keys sessions by its SHA-256,
so a read of the table yields no usable cookie. A session ends at the first of: its
absolute lifetime, an idle gap longer than the idle limit, sign-out (row deleted).
The session row names the operator only: role and regions are read from the users
file on every request, so a change there takes effect at once.

Sign-in attempts are counted per client address and per (address, name), never per
name alone: a flood of wrong passwords from one address locks that address (and
that address's tries at that name) out, and cannot lock the operator out from
their own address. Each attempt is reserved *before* its password is checked, by
one INSERT .. ON CONFLICT DO UPDATE over both keys (atomic: however many attempts
race, at most the limit get a password check). Past a key's limit, the attempt is
refused and the key is blocked with an exponential backoff (30 s doubling with
every further attempt, at most the window); a key's count starts again once its
window is over and it is not blocked. A good password gives the address its
attempt back and clears the (address, name) key. Keys are stored hashed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

#: The window over which sign-in attempts are counted, and the longest backoff.
ATTEMPT_WINDOW_S = 15 * 60
#: The first backoff past a limit; it doubles with every further attempt.
BACKOFF_S = 30.0
#: An address may try this many times the per-name limit (several operators behind one NAT).
ADDRESS_FACTOR = 3


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    operator: str
    csrf: str


class Sessions:
    def __init__(self, pool: asyncpg.Pool, *, lifetime_s: float, idle_s: float, max_failures: int) -> None:
        self.pool = pool
        self.lifetime_s = lifetime_s
        self.idle_s = idle_s
        self.max_failures = max_failures

    async def create(self, operator: str) -> tuple[str, Session]:
        """A new session: (the cookie value, the session). Expired rows are swept here."""
        sid = secrets.token_urlsafe(32)
        session = Session(operator, secrets.token_urlsafe(32))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM console_sessions WHERE expires_at <= now() "
                "OR last_seen <= now() - make_interval(secs => $1)",
                self.idle_s,
            )
            await conn.execute(
                "INSERT INTO console_sessions (id_hash, operator, csrf, expires_at) "
                "VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
                _digest(sid),
                operator,
                session.csrf,
                self.lifetime_s,
            )
        return sid, session

    async def touch(self, sid: str) -> Session | None:
        """The live session of a cookie value (and mark it used), or None."""
        if not sid or len(sid) > 128:
            return None
        row = await self.pool.fetchrow(
            "UPDATE console_sessions SET last_seen = now() WHERE id_hash = $1 AND expires_at > now() "
            "AND last_seen > now() - make_interval(secs => $2) RETURNING operator, csrf",
            _digest(sid),
            self.idle_s,
        )
        return Session(row["operator"], row["csrf"]) if row else None

    async def end(self, sid: str) -> None:
        await self.pool.execute("DELETE FROM console_sessions WHERE id_hash = $1", _digest(sid))

    # ---- sign-in attempt limit ------------------------------------------------------
    def _keys(self, name: str, client: str) -> list[tuple[str, int]]:
        return [
            (_digest(f"client:{client}"), self.max_failures * ADDRESS_FACTOR),
            (_digest(f"client-user:{client}\x00{name}"), self.max_failures),
        ]

    async def attempt(self, name: str, client: str) -> float:
        """Reserve one sign-in attempt; 0 when it may go ahead (check the password),
        else the seconds until this address may try again."""
        keys = self._keys(name, client)
        rows = await self.pool.fetch(
            "INSERT INTO console_signin_counters AS c (key_hash, attempts, max_attempts, window_start) "
            "SELECT k, 1, m, now() FROM unnest($1::text[], $2::int[]) AS t(k, m) "
            "ON CONFLICT (key_hash) DO UPDATE SET "
            "attempts = CASE WHEN c.window_start <= now() - make_interval(secs => $3) "
            "  AND coalesce(c.blocked_until <= now(), true) THEN 1 ELSE c.attempts + 1 END, "
            "max_attempts = EXCLUDED.max_attempts, "
            "window_start = CASE WHEN c.window_start <= now() - make_interval(secs => $3) "
            "  AND coalesce(c.blocked_until <= now(), true) THEN now() ELSE c.window_start END, "
            "blocked_until = CASE WHEN c.window_start <= now() - make_interval(secs => $3) "
            "  AND coalesce(c.blocked_until <= now(), true) THEN NULL "
            "  WHEN c.attempts + 1 > EXCLUDED.max_attempts THEN now() + make_interval(secs => "
            "    least($3, $4 * power(2, least(c.attempts - EXCLUDED.max_attempts, 16)))) "
            "  ELSE c.blocked_until END "
            "RETURNING attempts, max_attempts, "
            "greatest(extract(epoch FROM blocked_until - now()), 0)::float8 AS wait_s",
            [k for k, _ in keys],
            [m for _, m in keys],
            float(ATTEMPT_WINDOW_S),
            BACKOFF_S,
        )
        waits = [r["wait_s"] or 0.0 for r in rows if r["attempts"] > r["max_attempts"]]
        return max(max(waits, default=0.0), 1.0) if waits else 0.0

    async def succeeded(self, name: str, client: str) -> None:
        """A good password: the address gets its attempt back, the (address, name) key is cleared."""
        (client_key, _), (pair_key, _) = self._keys(name, client)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM console_signin_counters WHERE key_hash = $1", pair_key)
            await conn.execute(
                "UPDATE console_signin_counters SET attempts = greatest(attempts - 1, 0) WHERE key_hash = $1",
                client_key,
            )
            await conn.execute(
                "DELETE FROM console_signin_counters WHERE window_start <= now() - make_interval(secs => $1) "
                "AND coalesce(blocked_until <= now(), true)",
                float(ATTEMPT_WINDOW_S),
            )
