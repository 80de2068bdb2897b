"""A local snapshot of the applied enforcement state, so a replica that restarts
while Kafka is unreachable keeps its suspensions and kill switches.

The file holds the actions in force (their signed-over record keys and values), the
topic offsets the state reflects and when it was written, and is authenticated with
the action key ring (HMAC-SHA256 over the body, key id in the header line): a file
edited by hand, cut short, or signed with a key no longer in the ring is refused
and the replica starts as if it had none. It is written atomically (temporary
file, fsync, rename, fsync of the folder), so a crash mid-write leaves the previous
snapshot.

Layout: one JSON header line `{"format": 1, "kid": ..., "mac": ...}`, then the JSON
body `{"topic", "written_at", "positions": {partition: offset}, "records": [[key,
base64 value], ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.actions.records import KeyRing

log = logging.getLogger("safeguards.actions.snapshot")

FORMAT = 1
_DOMAIN = b"safeguards.actions.snapshot.v1\0"


@dataclass(frozen=True)
class Snapshot:
    topic: str
    written_at: float
    positions: dict[int, int]
    records: list[tuple[str, bytes]]


def encode(ring: KeyRing, snap: Snapshot) -> bytes:
    body = json.dumps(
        {
            "topic": snap.topic,
            "written_at": snap.written_at,
            "positions": {str(p): o for p, o in sorted(snap.positions.items())},
            "records": [[k, base64.b64encode(v).decode()] for k, v in snap.records],
        },
        separators=(",", ":"),
    ).encode()
    kid = ring.signing_kid
    mac = ring.mac(kid, _DOMAIN + body)
    header = json.dumps({"format": FORMAT, "kid": kid, "mac": mac}, separators=(",", ":")).encode()
    return header + b"\n" + body


def decode(ring: KeyRing, raw: bytes, topic: str) -> Snapshot:
    """The snapshot in `raw`; raises ValueError saying why it is refused."""
    header_line, sep, body = raw.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    try:
        header = json.loads(header_line)
    except ValueError:
        raise ValueError("header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("unknown format")
    kid, mac = header.get("kid"), header.get("mac")
    if not isinstance(kid, str) or not isinstance(mac, str):
        raise ValueError("header lacks kid or mac")
    expected = ring.mac(kid, _DOMAIN + body)
    if expected is None:
        raise ValueError(f"signed with key {kid[:64]!r}, not in the key ring")
    if not hmac.compare_digest(expected, mac):
        raise ValueError("checksum does not match (edited or cut short)")
    try:
        data = json.loads(body)
        snap = Snapshot(
            topic=str(data["topic"]),
            written_at=float(data["written_at"]),
            positions={int(p): int(o) for p, o in data["positions"].items()},
            records=[(str(k), base64.b64decode(v, validate=True)) for k, v in data["records"]],
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ValueError("body does not have the snapshot's fields") from None
    if snap.topic != topic:
        raise ValueError(f"snapshot of {snap.topic!r}, not of {topic!r}")
    return snap


def write(path: Path, ring: KeyRing, snap: Snapshot) -> None:
    """Replace `path` atomically (blocking: run it off the event loop)."""
    data = encode(ring, snap)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: Path, ring: KeyRing, topic: str) -> Snapshot | None:
    """The snapshot at `path`, or None (missing, or refused: logged with the reason)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("actions snapshot not readable", extra={"path": str(path), "error": exc.strerror})
        return None
    try:
        return decode(ring, raw, topic)
    except ValueError as exc:
        log.error("actions snapshot refused; starting without it", extra={"path": str(path), "why": str(exc)})
        return None
