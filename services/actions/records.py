"""The signed record format of `safeguards.actions.<region>`.

Every record (an action, or a revoke's tombstone) carries two headers:

- `sg-kid`: the id of the regional key that signed it;
- `sg-sig`: HMAC-SHA256, hex, over a length-prefixed encoding of the key id, the
  topic, the record key, the value (a tombstone is marked as such, distinct from an
  empty value) and the `sg-revokes` header.

A tombstone also carries `sg-revokes`: the id of the action it revokes, so a copy of
an old revoke produced again cannot lift a later action on the same target (the
projection removes the action only when its id matches); and the revoke's own
`sg-revoked-by`, `sg-revoke-reason` and `sg-revoked-at` (milliseconds), signed too
(appended to the signed encoding when present, so tombstones written before them still
verify), so every replica and the monitor's history know who revoked it and why. Binding the topic stops a
record signed for another topic (alerts share the producer) from being replayed here.

Keys come as a ring, `kid:base64[,kid:base64...]`: the first signs, every one
verifies, which is how keys rotate (README "Action signing keys"). A record without
headers, with an unknown key id, or whose signature does not match is refused with
a reason (`Refused.reason`, a metric label) and never applied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import ConfigError

HEADER_KID = "sg-kid"
HEADER_SIG = "sg-sig"
HEADER_REVOKES = "sg-revokes"
HEADER_REVOKED_BY = "sg-revoked-by"
HEADER_REVOKE_REASON = "sg-revoke-reason"
HEADER_REVOKED_AT = "sg-revoked-at"
_REVOKE_HEADERS = (HEADER_REVOKED_BY, HEADER_REVOKE_REASON, HEADER_REVOKED_AT)
_DOMAIN = b"safeguards.actions.v1"
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_KEY_BYTES = 32
#: Reasons a record is refused (the `reason` label of the refused-records counter).
REASONS = ("unsigned", "unknown_key", "bad_signature", "malformed_header")

#: The DEVELOPMENT key: public (it is in this source file), so anyone can forge records
#: it signs. Used only with --insecure-dev-action-key (`make run`, tests); a service
#: started without a key ring and without that flag refuses to start.
DEV_KEY_ID = "insecure-dev"
DEV_KEY = b"safeguards-INSECURE-development-action-key-never-in-production"


@dataclass(frozen=True)
class Revocation:
    """Who revoked an action, why and when (unix seconds)."""

    actor: str
    reason: str
    at: float


class Refused(Exception):
    """A record that must not be applied; `reason` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyRing:
    """Regional action keys by id; the first one signs."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("action key ring is empty")

    @classmethod
    def parse(cls, text: str, where: str = "--action-keys") -> KeyRing:
        """`kid:base64` entries separated by commas or new lines (`#` starts a comment)."""
        entries = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            entries += [e.strip() for e in line.split(",") if e.strip()]
        seen: set[str] = set()
        keys = []
        for entry in entries:
            kid, sep, b64 = entry.partition(":")
            kid = kid.strip()
            if not sep or not _KID.fullmatch(kid):
                raise ConfigError(f"{where}: each entry is KEY_ID:BASE64 with KEY_ID of [A-Za-z0-9._-]{{1,64}}")
            if kid in seen:
                raise ConfigError(f"{where}: key id {kid!r} appears twice")
            try:
                secret = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{where}: key {kid!r} is not valid base64") from None
            if len(secret) < MIN_KEY_BYTES:
                raise ConfigError(f"{where}: key {kid!r} is {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed")
            seen.add(kid)
            keys.append((kid, secret))
        if not keys:
            raise ConfigError(f"{where}: no keys")
        return cls(tuple(keys))

    @classmethod
    def insecure_dev(cls) -> KeyRing:
        return cls(((DEV_KEY_ID, DEV_KEY),))

    @property
    def signing_kid(self) -> str:
        return self.keys[0][0]

    @property
    def insecure(self) -> bool:
        return any(kid == DEV_KEY_ID or key == DEV_KEY for kid, key in self.keys)

    def get(self, kid: str) -> bytes | None:
        for k, key in self.keys:
            if k == kid:
                return key
        return None

    def mac(self, kid: str, payload: bytes) -> str | None:
        key = self.get(kid)
        return hmac.new(key, payload, hashlib.sha256).hexdigest() if key is not None else None


def _revocation_headers(r: Revocation) -> list[tuple[str, bytes]]:
    return [
        (HEADER_REVOKED_BY, r.actor.encode()),
        (HEADER_REVOKE_REASON, r.reason.encode()),
        (HEADER_REVOKED_AT, str(int(r.at * 1000)).encode()),
    ]


def _message(
    kid: str, topic: str, key: bytes, value: bytes | None, revokes: str, details: list[tuple[str, bytes]] = ()
) -> bytes:
    parts = [_DOMAIN, kid.encode(), topic.encode(), key, b"" if value is None else value, revokes.encode()]
    parts += [raw for _, raw in details]
    out = bytearray()
    for i, part in enumerate(parts):
        # A tombstone's value has no length (all ones), so it differs from an empty value.
        n = 0xFFFFFFFFFFFFFFFF if i == 4 and value is None else len(part)
        out += n.to_bytes(8, "big") + part
    return bytes(out)


def sign(
    ring: KeyRing,
    topic: str,
    key: bytes,
    value: bytes | None,
    revokes: str = "",
    revocation: Revocation | None = None,
) -> list[tuple[str, bytes]]:
    """The headers that authenticate one record (with the ring's first key); a
    tombstone's `revocation` (who, why, when) travels in signed headers."""
    kid = ring.signing_kid
    details = _revocation_headers(revocation) if revocation is not None else []
    sig = ring.mac(kid, _message(kid, topic, key, value, revokes, details))
    assert sig is not None
    headers = [(HEADER_KID, kid.encode()), (HEADER_SIG, sig.encode())]
    if revokes:
        headers.append((HEADER_REVOKES, revokes.encode()))
    return headers + details


@dataclass(frozen=True)
class Verified:
    kid: str
    #: For a tombstone: the id of the action it revokes ...
    revokes: str
    #: ... and who revoked it, why and when (None: a tombstone written without them).
    revocation: Revocation | None = None


def verify(
    ring: KeyRing, topic: str, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None
) -> Verified:
    """Check a record's signature; raises Refused (never applied) when it fails."""
    found: dict[str, bytes] = {}
    for name, raw in headers or ():
        if name in (HEADER_KID, HEADER_SIG, HEADER_REVOKES, *_REVOKE_HEADERS):
            if name in found:
                raise Refused("malformed_header")  # two of one: which would count?
            found[name] = raw or b""
    if HEADER_KID not in found or HEADER_SIG not in found:
        raise Refused("unsigned")
    present = [name for name in _REVOKE_HEADERS if name in found]
    if present and (len(present) != len(_REVOKE_HEADERS) or value is not None):
        raise Refused("malformed_header")  # all three, and on a tombstone only
    details = [(name, found[name]) for name in present]
    try:
        kid = found[HEADER_KID].decode("ascii")
        sig = found[HEADER_SIG].decode("ascii")
        revokes = found.get(HEADER_REVOKES, b"").decode("utf-8")
        revocation = (
            Revocation(
                found[HEADER_REVOKED_BY].decode("utf-8"),
                found[HEADER_REVOKE_REASON].decode("utf-8"),
                int(found[HEADER_REVOKED_AT].decode("ascii")) / 1000,
            )
            if present
            else None
        )
    except (UnicodeDecodeError, ValueError):
        raise Refused("malformed_header") from None
    expected = ring.mac(kid, _message(kid, topic, key or b"", value, revokes, details))
    if expected is None:
        raise Refused("unknown_key")
    if not hmac.compare_digest(expected, sig):
        raise Refused("bad_signature")
    return Verified(kid, revokes, revocation)
