"""Server-side console sessions and the sign-in attempt limit, in the monitor's
PostgreSQL (so every replica behind a load balancer shares them, and a restart
signs nobody out).

The browser holds only a random session id; the table keys sessions by its SHA-256,
so a read of the table yields no usable cookie. A session ends at the first of: its
absolute lifetime, an idle gap longer than the idle limit, sign-out (row deleted).
The session row names the operator only: role and regions are read from the users
file on every request, so a change there takes effect at once.

Failed sign-ins are counted per operator name and per client address (keys stored
hashed) over a sliding window; past the limit a sign-in is refused before any
password is checked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

#: The window over which failed sign-ins are counted.
ATTEMPT_WINDOW_S = 15 * 60


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
    @staticmethod
    def _keys(name: str, client: str) -> list[str]:
        return [_digest(f"user:{name}"), _digest(f"client:{client}")]

    async def locked_out(self, name: str, client: str) -> bool:
        """Whether the name or the client address has used up its failed attempts."""
        n = await self.pool.fetchval(
            "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM console_signin_failures "
            "WHERE key_hash = ANY($1::text[]) AND at > now() - make_interval(secs => $2) GROUP BY key_hash) t",
            self._keys(name, client),
            float(ATTEMPT_WINDOW_S),
        )
        return n >= self.max_failures

    async def failed(self, name: str, client: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM console_signin_failures WHERE at <= now() - make_interval(secs => $1)",
                float(ATTEMPT_WINDOW_S),
            )
            await conn.execute(
                "INSERT INTO console_signin_failures (key_hash) SELECT unnest($1::text[])", self._keys(name, client)
            )

    async def succeeded(self, name: str) -> None:
        """A good password clears the name's failures (not the address's)."""
        await self.pool.execute("DELETE FROM console_signin_failures WHERE key_hash = $1", self._keys(name, "")[0])
