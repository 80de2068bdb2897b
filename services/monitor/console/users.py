"""Console operators: the users file and password hashing.

The users file (`--console-users`, YAML, reloaded on change) holds only scrypt
hashes, never passwords:

    users:
      - name: alice
        password_hash: "scrypt$32768$8$1$<salt b64>$<hash b64>"
        role: reviewer            # viewer | reviewer | admin (services.actions.authz's matrix)
        regions: [eu-west-1]      # region scope; "*" = every region

`python -m services.monitor.console hash-password` prints a hash for a password
read from stdin. Verification is constant-time, and an unknown name costs the same
scrypt work as a known one, so timing tells nothing about which names exist. The
console checks passwords through `PasswordChecker`: off the event loop, a bounded
few at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.actions.authz import Operator, Role, parse_role
from services.common.errors import ConfigError, ResourceExhausted
from services.common.yamlfile import load_model

#: scrypt cost: 2**15 x 8 x 1 needs 32 MiB and ~50-100 ms per hash (OWASP's floor is 2**17 x 8 x 1
#: at 128 MiB; the parameters are stored with each hash, so raising them later re-hashes nothing).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 256 * 1024 * 1024
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
MAX_PASSWORD = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    m = _HASH.match(stored)
    if m is None or len(password) > MAX_PASSWORD:
        return False
    n, r, p = (int(x) for x in m.group(1, 2, 3))
    salt, expected = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


#: Verified against when the name is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class _UserEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    password_hash: str
    role: Role
    regions: list[str] = Field(min_length=1)

    _role = field_validator("role", mode="before")(parse_role)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-64 letters, digits or _ . @ -")
        return v

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        m = _HASH.match(v)
        if m is None:
            raise ValueError(
                "is not a scrypt hash (scrypt$N$r$p$salt$hash): store the output of "
                "`python -m services.monitor.console hash-password`, never a password"
            )
        n = int(m.group(1))
        if n < 2**14 or n & (n - 1):
            raise ValueError("scrypt N must be a power of two >= 16384")
        return v

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for region in v:
            if not region or len(region) > 64:
                raise ValueError("each region is 1-64 characters ('*' = every region)")
        return v


class _UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    users: list[_UserEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Account:
    """A sign-in account of the users file."""

    operator: Operator
    password_hash: str


def load_users(path: Path) -> dict[str, Account]:
    """Parse a users file: name -> account. Raises ConfigError naming the file and problem."""
    parsed = load_model(path, _UsersFile, "users")
    out: dict[str, Account] = {}
    for i, u in enumerate(parsed.users):
        if u.name in out:
            raise ConfigError(f"{path}: users.{i}.name: {u.name!r} appears twice")
        out[u.name] = Account(Operator(u.name, u.role, frozenset(u.regions)), u.password_hash)
    return out


def authenticate(users: dict[str, Account], name: str, password: str) -> Operator | None:
    """The operator when name and password match, else None (same work either way)."""
    account = users.get(name)
    ok = verify_password(password, account.password_hash if account else _DUMMY_HASH)
    return account.operator if ok and account is not None else None


class PasswordChecker:
    """Password checks off the event loop, bounded: scrypt (~50-100 ms of CPU and 32
    MiB each) runs on at most `concurrency` worker threads (hashlib releases the GIL
    while hashing), at most `queue` more wait for one, and beyond that a sign-in is
    refused at once (ResourceExhausted: 429) instead of queueing without bound. The
    event loop keeps serving every other request during a sign-in flood, and the
    memory scrypt takes stays bounded."""

    def __init__(self, concurrency: int = 2, queue: int = 16) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scrypt")
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0

    async def authenticate(self, users: dict[str, Account], name: str, password: str) -> Operator | None:
        if self._admitted >= self.concurrency + self.queue:
            raise ResourceExhausted("too many sign-ins at once: try again in a moment")
        self._admitted += 1
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, authenticate, users, name, password)
        finally:
            self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
