"""The one authorization model for operators, whichever front door they use: the
enforcer's admin API (bearer tokens), the monitor's MonitorService (bearer tokens, the
same file format) and the operators' console (signed-in users).

Each front door turns its credentials into an `Operator` (name, role, regions), then
asks `authorize(operator, operation, region)` before it does anything. The role
matrix below is the only place that says which role may do what:

| operation        | what                                                       | viewer | reviewer | admin |
|------------------|------------------------------------------------------------|--------|----------|-------|
| `read`           | cases, decisions, aggregates, overview, actions, audit log | yes    | yes      | yes   |
| `review_case`    | a case's verdict (approve / dismiss)                       |        | yes      | yes   |
| `account_action` | issue / revoke SUSPEND_ACCOUNT, THROTTLE_ACCOUNT           |        | yes      | yes   |
| `tenant_action`  | issue / revoke FORCE_BLOCK_CATEGORY, KILL_SWITCH           |        |          | yes   |

Region scope: an operator acts only in the regions it lists (`*`: every region); a
front door serves one region and refuses (PERMISSION_DENIED) an operator whose scope
does not include it, before the role is even looked at.

Tokens (admin API and MonitorService): a YAML file of SHA-256 digests, raw tokens are
never stored; reloaded on change:

    tokens:
      <sha256 hex of the token>: {name: alice, role: reviewer, regions: [eu-west-1]}

`regions` defaults to `["*"]`. The role `operator` (token files written before the
console and the admin API shared one model) reads as `reviewer`.

Failed calls (no or an unknown token, a role or region without the right) are
throttled per caller (`FailureThrottle`): the peer address and, when one was sent, the
token's digest each count their failures; past the limit every call of that caller is
refused with RESOURCE_EXHAUSTED until the window ends, while other callers (another
address with a valid token) go on unaffected.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from safeguards.v1 import enforcement_pb2

from services.common.errors import (
    ConfigError,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.reloader import ReloadingConfig
from services.common.yamlfile import load_model

K = enforcement_pb2
MAX_NAME = 256
#: What an operator's name may hold (a token's or a console user's): no ':' (the
#: monitor tells its own console's audit records by the `console:` prefix), no spaces.
NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,256}$")


class Role(StrEnum):
    """Cumulative: each role may do what the ones before it may."""

    VIEWER = "viewer"
    REVIEWER = "reviewer"
    ADMIN = "admin"


#: Older spellings read from configuration files.
ROLE_ALIASES = {"operator": Role.REVIEWER}


class Operation(StrEnum):
    READ = "read"
    REVIEW_CASE = "review_case"
    ACCOUNT_ACTION = "account_action"
    TENANT_ACTION = "tenant_action"


#: The role matrix: which roles may do which operation.
MATRIX: dict[Operation, frozenset[Role]] = {
    Operation.READ: frozenset({Role.VIEWER, Role.REVIEWER, Role.ADMIN}),
    Operation.REVIEW_CASE: frozenset({Role.REVIEWER, Role.ADMIN}),
    Operation.ACCOUNT_ACTION: frozenset({Role.REVIEWER, Role.ADMIN}),
    Operation.TENANT_ACTION: frozenset({Role.ADMIN}),
}

_ACCOUNT_KINDS = frozenset({K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT})


def action_operation(kind: int) -> Operation:
    """Issuing or revoking an action of `kind`: account actions for reviewers, the
    tenant- and model-wide ones (force-blocks, kill switches) for admins only."""
    return Operation.ACCOUNT_ACTION if kind in _ACCOUNT_KINDS else Operation.TENANT_ACTION


def parse_role(value: object) -> object:
    """A pydantic `before` validator: the aliases mapped, anything else as it is."""
    return ROLE_ALIASES.get(value, value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Operator:
    """Who calls, as a front door verified it."""

    name: str
    role: Role
    #: Regions this operator may act in; "*" is every region.
    regions: frozenset[str] = frozenset({"*"})

    def covers(self, region: str) -> bool:
        return "*" in self.regions or region in self.regions

    def may(self, operation: Operation | str) -> bool:
        """The role alone (the region is the front door's: `authorize`)."""
        return self.role in MATRIX[Operation(operation)]


def authorize(op: Operator, operation: Operation, region: str) -> None:
    """Raise PermissionDenied unless `op` may do `operation` in `region`."""
    if not op.covers(region):
        raise PermissionDenied(f"{op.name} has no access to region {region}")
    if not op.may(operation):
        allowed = ", ".join(sorted(r.value for r in MATRIX[operation]))
        raise PermissionDenied(f"role {op.role.value} may not do {operation.value} (needs {allowed})")


# ---- tokens -----------------------------------------------------------------------------------
class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME.pattern)
    role: Role
    regions: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    _role = field_validator("role", mode="before")(parse_role)


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: dict[str, _TokenEntry] = Field(default_factory=dict)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, Operator]:
    """Parse a tokens file: digest -> operator. Raises ConfigError naming the problem."""
    parsed = load_model(path, _TokenFile, "tokens")
    out: dict[str, Operator] = {}
    for digest, entry in parsed.tokens.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(
                f"{path}: tokens: {digest[:12]!r}... is not a SHA-256 hex digest (64 lowercase hex characters; "
                "store `python -m services.enforcer.admin hash-token` output, never a raw token)"
            )
        out[digest] = Operator(entry.name, entry.role, frozenset(entry.regions))
    return out


def bearer_token(metadata) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return ""


class TokenAuth:
    """Bearer token -> Operator, from the reloaded tokens file (None: the API is off)."""

    def __init__(self, tokens: ReloadingConfig[dict[str, Operator]] | None, off_hint: str) -> None:
        self.tokens = tokens
        #: What FAILED_PRECONDITION says when no tokens file is configured.
        self.off_hint = off_hint

    def authenticate(self, token: str) -> Operator:
        if self.tokens is None or self.tokens.current is None:
            raise FailedPrecondition(self.off_hint)
        if not token:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        caller = self.tokens.current.get(hash_token(token))
        if caller is None:
            raise Unauthenticated("unknown token")
        return caller


# ---- throttling of failures ---------------------------------------------------------------------
def peer_host(peer: str) -> str:
    """gRPC's `context.peer()` ("ipv4:10.0.0.1:5555", "ipv6:[::1]:5555", "unix:...")
    without the port: one caller is one address, whatever port it comes from."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or rest
    return peer or "unknown"


class FailureThrottle:
    """Failed calls per caller key in fixed windows: past `max_failures` in
    `window_s`, the key is refused until its window ends. Bounded: the oldest keys
    are forgotten past `max_keys` (a flood from many addresses costs memory only up
    to there). In memory, per process: each replica throttles what it sees."""

    def __init__(
        self, max_failures: int = 20, window_s: float = 60.0, max_keys: int = 10_000, clock=time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        #: key -> [window start, failures]
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    @staticmethod
    def keys(peer: str, token: str) -> tuple[str, ...]:
        out = [f"addr:{peer_host(peer)}"]
        if token:
            out.append(f"token:{hash_token(token)}")
        return tuple(out)

    def _entry(self, key: str, now: float) -> list[float] | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] >= self.window_s:
            del self._keys[key]
            return None
        return entry

    def check(self, keys: tuple[str, ...]) -> None:
        """Raise ResourceExhausted when any of the caller's keys is over its limit."""
        now = self._clock()
        for key in keys:
            entry = self._entry(key, now)
            if entry is not None and entry[1] >= self.max_failures:
                retry = max(1, int(entry[0] + self.window_s - now + 0.999))
                raise ResourceExhausted(
                    f"too many failed calls from this caller ({self.max_failures} in {self.window_s:g}s): "
                    f"retry in {retry}s"
                )

    def failed(self, keys: tuple[str, ...]) -> bool:
        """Count one failure on each key; True when that crossed a limit (the caller is
        now throttled: audited once, not at every refused call)."""
        now = self._clock()
        crossed = False
        for key in keys:
            entry = self._entry(key, now)
            if entry is None:
                entry = self._keys[key] = [now, 0]
            else:
                self._keys.move_to_end(key)
            entry[1] += 1
            crossed |= entry[1] == self.max_failures
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return crossed


def load_token_config(path: str, poll_seconds: float) -> ReloadingConfig[dict[str, Operator]] | None:
    """The tokens file of a front door's `--...-tokens` flag, loaded (a bad file raises
    ConfigError) and reloaded on change once started; '' : None, the front door is off."""
    if not path:
        return None
    tokens = ReloadingConfig(Path(path), load_tokens, poll_seconds=poll_seconds, describe=lambda t: {"tokens": len(t)})
    tokens.load_initial()
    return tokens
