"""Dead letters: signal records PostgreSQL refuses, parked so the consumer goes on.

A batch that fails with a *data* error (the record's values: SQLSTATE classes 22
data exception, 23 integrity violation, 54 program limit such as an index row too
large, or a value the client cannot encode) would fail the same way on every retry
and, before this, stopped the consumer for good. The consumer bisects such a batch
(`SignalConsumer`) down to the records that fail on their own and parks each here,
in `monitor_dead_letters`, then applies the rest and commits the offsets. Anything
else (PostgreSQL down, a missing table or privilege, a lock timeout, a
serialization failure) is the store's fault, not the record's: that batch is
retried as it is, never parked, and the consumer reports itself stuck.

A parked record keeps only what its data policy allows the monitor to keep
(METADATA_ONLY: no snippet; ZERO_RETENTION or unknown: no content and no request
id). Parked records are counted (`safeguards_monitor_signals_total{result=
"dead_letter"}`) and alerted (`dead_letters`: firing while any is pending), and
after a fix they are replayed: produced back to their topic, where the consumer
takes them like any other record (the processed-ids table makes a replay of one
that did get stored change nothing). They are kept for `--dedupe-retention-hours`.

    python -m services.monitor.deadletters list    [monitor flags]
    python -m services.monitor.deadletters replay  [monitor flags]
    python -m services.monitor.deadletters discard ID [ID ...] [monitor flags]

The monitor flags (or their MONITOR_* env vars) name the database, region and
Kafka (with its TLS / SASL settings), as for the service.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from safeguards.v1 import signals_pb2

from services.monitor.commands import command_settings
from services.monitor.outbox import Flushed, Outbox

log = logging.getLogger("safeguards.monitor.deadletters")

#: SQLSTATE classes that blame the record, not the store.
POISON_CLASSES = frozenset({"22", "23", "54"})
#: Longest error text kept (an exception class and SQLSTATE; never a value).
MAX_ERROR = 200

OUTBOX = Outbox(
    what="dead letter",
    table="monitor_dead_letters",
    id_column="id",
    done_column="replayed_at",
    columns=("topic", "record_key", "record"),
    order_by="parked_at, id",
)


def is_poison(exc: BaseException) -> bool:
    """Whether applying failed because of the records' values (retrying cannot help)."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in POISON_CLASSES
    # asyncpg's client-side DataError (a value it cannot encode) is a ValueError;
    # so are our own refusals of a value while building a query.
    return isinstance(exc, (ValueError, TypeError, OverflowError))


def describe(exc: BaseException) -> str:
    """What went wrong, without the value: the error class and SQLSTATE."""
    state = getattr(exc, "sqlstate", None)
    return (type(exc).__name__ + (f" (SQLSTATE {state})" if state else ""))[:MAX_ERROR]


def keepable(value: bytes | None) -> bytes:
    """The record as the monitor may keep it: content cut to what its data policy allows."""
    try:
        sig = signals_pb2.SafeguardSignal.FromString(value or b"")
    except Exception:  # noqa: BLE001 - not a signal: nothing to keep (it would never decode)
        return b""
    policy = sig.data_policy
    if policy == signals_pb2.DATA_POLICY_STANDARD:
        return value or b""
    sig.content.redacted_snippet = ""
    if policy != signals_pb2.DATA_POLICY_METADATA_ONLY:
        sig.ClearField("content")
        sig.request_id = ""
    return sig.SerializeToString()


async def park(pool: asyncpg.Pool, region: str, record, exc: BaseException) -> bool:
    """Keep one refused record; False when it was parked already (a redelivery)."""
    parked = await pool.fetchval(
        "INSERT INTO monitor_dead_letters (region, topic, partition, record_offset, record_key, record, error) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (region, topic, partition, record_offset) DO NOTHING "
        "RETURNING true",
        region,
        record.topic,
        record.partition,
        record.offset,
        record.key,
        keepable(record.value),
        describe(exc),
    )
    return bool(parked)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    topic: str
    partition: int
    offset: int
    error: str
    parked_at: datetime
    replayed_at: datetime | None


async def pending(pool: asyncpg.Pool, region: str) -> int:
    return await OUTBOX.pending(pool, region)


async def list_dead(pool: asyncpg.Pool, region: str, limit: int = 100) -> list[DeadLetter]:
    rows = await pool.fetch(
        "SELECT id, topic, partition, record_offset, error, parked_at, replayed_at FROM monitor_dead_letters "
        "WHERE region = $1 ORDER BY parked_at DESC, id DESC LIMIT $2",
        region,
        limit,
    )
    return [DeadLetter(r["id"], r["topic"], r["partition"], r["record_offset"], r["error"], r["parked_at"],
                       r["replayed_at"]) for r in rows]  # fmt: skip


async def replay(pool: asyncpg.Pool, region: str, producer: AIOKafkaProducer) -> Flushed:
    """Produce every pending dead letter back to its topic (acks=all), oldest first;
    each is marked replayed once the broker has it. Stops at the first failure."""
    total = Flushed()
    while True:

        async def send(r: asyncpg.Record) -> None:
            await producer.send_and_wait(r["topic"], bytes(r["record"]), key=r["record_key"])

        done = await OUTBOX.flush(pool, region, send, channel="kafka")
        total = Flushed(total.sent + done.sent, total.rejected + done.rejected, total.failed + done.failed)
        if done.failed or not done.sent:
            return total


async def discard(pool: asyncpg.Pool, region: str, ids: list[int]) -> int:
    """Forget dead letters for good (an operator decided they are not worth keeping)."""
    status = await pool.execute("DELETE FROM monitor_dead_letters WHERE region = $1 AND id = ANY($2)", region, ids)
    return int(status.rsplit(" ", 1)[-1])


async def purge(conn: asyncpg.Connection, before: datetime) -> int:
    status = await conn.execute("DELETE FROM monitor_dead_letters WHERE parked_at < $1", before)
    return int(status.rsplit(" ", 1)[-1])


# ---- the command ---------------------------------------------------------------------------------
async def _run(command: str, ids: list[int], settings) -> int:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
    try:
        if command == "list":
            for d in await list_dead(pool, settings.region):
                state = f"replayed {d.replayed_at:%Y-%m-%d %H:%M:%S}" if d.replayed_at else "pending"
                where = f"{d.topic}[{d.partition}]@{d.offset}"
                print(f"{d.id}\t{d.parked_at:%Y-%m-%d %H:%M:%S}\t{where}\t{state}\t{d.error}")
            return 0
        if command == "discard":
            print(f"discarded {await discard(pool, settings.region, ids)}")
            return 0
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            client_id=f"monitor-replay-{settings.region}",
            **settings.kafka_security().client_kwargs(),
        )
        await producer.start()
        try:
            done = await replay(pool, settings.region, producer)
        finally:
            await producer.stop()
        print(f"replayed {done.sent}, left pending {await pending(pool, settings.region)}")
        return 1 if done.failed else 0
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.monitor.deadletters",
        description="List, replay (after a fix) or discard the signal records the monitor parked; "
        "other flags are the monitor's (--database-url, --region, --kafka-bootstrap, or MONITOR_* env vars)",
    )
    parser.add_argument("command", choices=("list", "replay", "discard"))
    parser.add_argument("ids", nargs="*", type=int, help="discard: the dead letters' ids (from list)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "discard" and not args.ids:
        parser.error("discard needs the ids of the dead letters (see list)")
    return asyncio.run(_run(args.command, args.ids, command_settings(rest)))


if __name__ == "__main__":
    sys.exit(main())
