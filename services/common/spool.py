"""A bounded, durable FIFO of records on local disk (SQLite, WAL mode).

The Kafka publisher writes here whenever Kafka cannot take a record, and replays
from here in order once it can, so a broker outage (or a restart of this process
during one) loses nothing. It is bounded in bytes: when full, new records are
refused and counted, because an unbounded spool would eventually fill the disk
of a serving node, which is worse than losing telemetry.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One Kafka record. `record_id` travels as the `record-id` header so consumers
    can drop duplicates (at-least-once delivery without idempotent producers)."""

    topic: str
    key: bytes
    value: bytes
    record_id: str
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.key) + len(self.value) + len(self.record_id) + 64

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        return [("record-id", self.record_id.encode()), *self.headers]


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB NOT NULL, value BLOB NOT NULL, record_id TEXT NOT NULL, headers BLOB NOT NULL,"
            " size INTEGER NOT NULL)"
        )
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    @property
    def depth(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, records: Iterable[Record]) -> list[Record]:
        """Store records in order; returns the ones refused because the spool is full."""
        refused: list[Record] = []
        rows = []
        with self._lock:
            room = self.max_bytes - self._bytes
            for r in records:
                if r.size > room:
                    refused.append(r)
                    continue
                room -= r.size
                rows.append((r.topic, r.key, r.value, r.record_id, _pack_headers(r.headers), r.size))
            if rows:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO spool (topic, key, value, record_id, headers, size) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
                self._count += len(rows)
                self._bytes += sum(row[5] for row in rows)
        return refused

    def peek(self, limit: int) -> list[tuple[int, Record]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, value, record_id, headers FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(row[0], Record(row[1], bytes(row[2]), bytes(row[3]), row[4], _unpack_headers(row[5]))) for row in rows]

    def ack(self, ids: Sequence[int]) -> None:
        """Remove delivered records."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            freed = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchone()
            self._db.execute(f"DELETE FROM spool WHERE id IN ({','.join('?' * len(ids))})", ids)
            self._db.execute("COMMIT")
            self._count -= int(freed[0])
            self._bytes -= int(freed[1])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _pack_headers(headers: tuple[tuple[str, bytes], ...]) -> bytes:
    out = bytearray()
    for k, v in headers:
        kb = k.encode()
        out += len(kb).to_bytes(2, "big") + kb + len(v).to_bytes(4, "big") + v
    return bytes(out)


def _unpack_headers(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    out, i = [], 0
    blob = bytes(blob)
    while i < len(blob):
        kl = int.from_bytes(blob[i : i + 2], "big")
        k = blob[i + 2 : i + 2 + kl].decode()
        i += 2 + kl
        vl = int.from_bytes(blob[i : i + 4], "big")
        out.append((k, blob[i + 4 : i + 4 + vl]))
        i += 4 + vl
    return tuple(out)
