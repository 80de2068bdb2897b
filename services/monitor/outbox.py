"""The transactional outbox: rows written in the same transaction as the state change
they announce, delivered after the commit, each marked done once its channel took it.

Used by the automated rules (`monitor_rule_actions`: live actions to the actions
topic) and the alerts (`monitor_alert_outbox`: notifications to the alerts topic and
the webhook). `Outbox.flush` sends one region's pending rows oldest first, in one
transaction that holds them `FOR UPDATE SKIP LOCKED` (two replicas never send the
same row at once), and marks each sent row done in it. The first failure stops the
round and leaves that row and the rest pending for the next one, so an outage
delays delivery but loses nothing and keeps the order; a *permanent* refusal (e.g.
the webhook answering 4xx) is marked done and counted, since retrying it would hold
back every later row forever. Receivers dedupe by the record's own id.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

log = logging.getLogger("safeguards.monitor.outbox")

BATCH = 100


@dataclass(frozen=True)
class Flushed:
    """One round on one channel: rows sent, refused for good (marked done), failed (left pending)."""

    sent: int = 0
    rejected: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Outbox:
    """One channel of an outbox table. Table and column names are code, never input."""

    #: What the rows are, for the logs ("automated action", "alert notification").
    what: str
    table: str
    id_column: str
    #: The row is delivered on this channel once this timestamp column is set.
    done_column: str
    #: Columns `send` reads (besides the id).
    columns: tuple[str, ...]
    order_by: str
    #: Extra condition on the rows this channel delivers (e.g. only live actions).
    where: str = "true"
    batch: int = BATCH

    async def flush(
        self,
        pool: asyncpg.Pool,
        region: str,
        send: Callable[[asyncpg.Record], Awaitable[None]],
        *,
        permanent: tuple[type[BaseException], ...] = (),
        channel: str = "",
    ) -> Flushed:
        sent = rejected = failed = 0
        pending = f"region = $1 AND {self.done_column} IS NULL AND ({self.where})"
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT {', '.join((self.id_column, *self.columns))} FROM {self.table} WHERE {pending} "
                f"ORDER BY {self.order_by} LIMIT {int(self.batch)} FOR UPDATE SKIP LOCKED",
                region,
            )
            for r in rows:
                row_id = r[self.id_column]
                try:
                    await send(r)
                except permanent as exc:
                    rejected += 1
                    log.error(
                        f"{self.what} refused for good; not retried",
                        extra={"id": row_id, "channel": channel, "error": str(exc)},
                    )
                except Exception as exc:  # noqa: BLE001 - unreachable, 5xx, Kafka down: stays pending
                    failed += 1
                    log.warning(
                        f"{self.what} not delivered yet; will retry",
                        extra={"id": row_id, "channel": channel, "error": type(exc).__name__},
                    )
                    break
                else:
                    sent += 1
                await conn.execute(
                    f"UPDATE {self.table} SET {self.done_column} = now() WHERE {self.id_column} = $1", row_id
                )
        return Flushed(sent, rejected, failed)

    async def pending(self, pool: asyncpg.Pool, region: str) -> int:
        return await pool.fetchval(
            f"SELECT count(*) FROM {self.table} WHERE region = $1 AND {self.done_column} IS NULL AND ({self.where})",
            region,
        )
