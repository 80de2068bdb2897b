"""A bounded, durable FIFO of records on local disk (SQLite, WAL mode).

The Kafka publisher writes here whenever Kafka cannot take a record, and replays
from here in order once it can, so a broker outage (or a restart of this process
during one) loses nothing. It is bounded in bytes: when full, new records are
refused and counted, because an unbounded spool would eventually fill the disk
of a serving node, which is worse than losing telemetry.

`append()` runs on the request path (the publisher calls it from `publish()`), so it
never raises and never waits long: an SQLite error (disk full, I/O error, the file
locked by another process) rolls the transaction back and refuses the batch, which
the caller counts as dropped; `last_error` names the error (never any content). The
next call starts clean. `peek()` and `ack()` run in the publisher's background loop:
they roll back too and raise `SpoolError`, an OSError, so that loop backs off and
retries as it does for an unreachable broker.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("safeguards.spool")

#: How long a write waits for a lock held by another connection before it gives up.
#: One process owns a spool file and serialises its own writes, so a lock held
#: elsewhere means a misconfiguration (a spool folder shared by replicas): failing
#: fast and counting the drop beats stalling the event loop for SQLite's default 5 s.
BUSY_TIMEOUT_S = 0.05


class SpoolError(OSError):
    """The spool's database failed (the transaction was rolled back)."""


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
    def __init__(self, path: Path, max_bytes: int, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        #: Name of the SQLite error of the last append that failed ("" after one that worked).
        self.last_error = ""
        #: Appends refused because of an SQLite error, since start.
        self.failures = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
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
        """Store records in order; returns the ones refused: those that do not fit, or
        the whole batch when SQLite fails (rolled back; `last_error` says why). Never raises."""
        refused: list[Record] = []
        rows = []
        with self._lock:
            room = self.max_bytes - self._bytes
            for r in records:
                if r.size > room:
                    refused.append(r)
                    continue
                room -= r.size
                rows.append((r, (r.topic, r.key, r.value, r.record_id, _pack_headers(r.headers), r.size)))
            if not rows:
                return refused
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO spool (topic, key, value, record_id, headers, size) VALUES (?, ?, ?, ?, ?, ?)",
                    [row for _, row in rows],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.failures += 1
                if not self.last_error:  # one line when writes start failing, not one per record
                    log.error(
                        "spool writes failing; batches rolled back and refused", extra={"error": _error_name(exc)}
                    )
                self.last_error = _error_name(exc)
                return refused + [r for r, _ in rows]  # nothing of this batch was stored
            if self.last_error:
                log.warning("spool writes work again", extra={"failed_appends": self.failures})
            self.last_error = ""
            self._count += len(rows)
            self._bytes += sum(row[5] for _, row in rows)
        return refused

    def peek(self, limit: int) -> list[tuple[int, Record]]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, topic, key, value, record_id, headers FROM spool ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"spool read failed: {_error_name(exc)}") from exc
        return [(row[0], Record(row[1], bytes(row[2]), bytes(row[3]), row[4], _unpack_headers(row[5]))) for row in rows]

    def ack(self, ids: Sequence[int]) -> None:
        """Remove delivered records (all or none: on an SQLite error they stay, and are
        delivered again; consumers drop the duplicates by record id)."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                freed = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE id IN ({marks})", ids
                ).fetchone()
                self._db.execute(f"DELETE FROM spool WHERE id IN ({marks})", ids)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"spool delete failed: {_error_name(exc)}") from exc
            self._count -= int(freed[0])
            self._bytes -= int(freed[1])

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL, SQLITE_IOERR may): only
        # roll back a transaction that is still open, and never let that raise too.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                log.error("spool rollback failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _error_name(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", "") or type(exc).__name__


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
