"""The applied enforcement state, in memory: what is in force, for O(1) lookups on
the request path (no awaits) and for the admin reads.

It is a projection of the compacted actions topic: `apply(key, value)` takes one
verified record (value None = a tombstone, a revoke) and every replica that applies
the same records holds the same tables. A newer action on a target replaces the
older one; a tombstone naming the action it revokes (`revokes`) removes only that
action. Expiry is checked at lookup time, so an action stops applying at its
`expires_at` with no record and no timer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge
from safeguards.v1 import enforcement_pb2

from services.actions.keys import (
    KIND_NAMES,
    action_key,
    kill_model_key,
    kill_tenant_key,
    suspend_key,
    throttle_key,
)
from services.actions.records import Revocation

log = logging.getLogger("safeguards.actions")

K = enforcement_pb2
#: Reason codes of a request blocked by the enforcement state.
SUSPENDED = "enforcement.suspended"
KILL_SWITCH = "enforcement.kill_switch"
_NO_CATEGORIES: frozenset[str] = frozenset()
#: Revoked action ids remembered, with who revoked them when the tombstone said (`revocation`).
MAX_REVOKED = 10_000


@dataclass(frozen=True)
class LiveAction:
    key: str
    action: enforcement_pb2.EnforcementAction
    expires_s: float  # unix seconds; 0 = never

    def in_force(self, now: float) -> bool:
        return not self.expires_s or now < self.expires_s


@dataclass(frozen=True)
class Block:
    """A request the state blocks before any scoring: its reason code and detail."""

    code: str
    detail: str


class ActionMetrics:
    """The projection's and its consumer's metrics (`<prefix>_actions_*`)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "enforcer") -> None:
        self.applied = Counter(
            f"{prefix}_actions_applied",
            "Records of the actions topic applied, by kind (revoke = tombstone).",
            ["kind"],
            registry=registry,
        )
        self.malformed = Counter(
            f"{prefix}_actions_malformed", "Records of the actions topic skipped as malformed.", registry=registry
        )
        self.refused = Counter(
            f"{prefix}_actions_refused",
            "Records of the actions topic refused and not applied, by reason: unsigned, unknown_key, "
            "bad_signature, malformed_header, stale_revoke (a revoke of an action no longer in force), revoked "
            "(a late copy of an action revoked since).",
            ["reason"],
            registry=registry,
        )
        self.live = Gauge(
            f"{prefix}_actions_live", "Actions held in memory (expired ones included).", registry=registry
        )
        self.lag = Gauge(
            f"{prefix}_actions_lag", "Records between what this replica applied and the topic's end.", registry=registry
        )
        self.up = Gauge(
            f"{prefix}_actions_consumer_up", "1 while the actions consumer reaches Kafka.", registry=registry
        )
        self.caught_up = Gauge(
            f"{prefix}_actions_caught_up",
            "1 once the topic was read up to its end offsets at start.",
            registry=registry,
        )
        self.snapshot_loaded = Gauge(
            f"{prefix}_actions_snapshot_loaded",
            "1 while the state served is the local snapshot restored at start (0 once the topic was read).",
            registry=registry,
        )
        self.snapshot_writes = Counter(
            f"{prefix}_actions_snapshot_writes",
            "Writes of the local snapshot of the applied state, by result (ok, error).",
            ["result"],
            registry=registry,
        )


class ActionTable:
    """The tables. Lookups never await."""

    def __init__(self, region: str, metrics: ActionMetrics, *, clock=time.time) -> None:
        self.region = region
        self.metrics = metrics
        self.clock = clock
        self._by_key: dict[str, LiveAction] = {}
        self._key_of_id: dict[str, str] = {}
        self._forced: dict[str, dict[str, LiveAction]] = {}
        #: Ids of actions revoked by a tombstone this table applied (bounded): a second
        #: revoke answers "already revoked" rather than "not found".
        self._revoked: OrderedDict[str, Revocation | None] = OrderedDict()

    # ---- lookups (the request path) -------------------------------------------------
    def _in_force(self, key: str, now: float) -> LiveAction | None:
        live = self._by_key.get(key)
        return live if live is not None and live.in_force(now) else None

    def blocking(self, tenant: str, account_hmac: str, model: str) -> Block | None:
        """A suspension of the account or a kill switch of the tenant or model in force."""
        if not self._by_key:
            return None
        now = self.clock()
        if account_hmac and (live := self._in_force(suspend_key(tenant, account_hmac), now)):
            return Block(SUSPENDED, f"action {live.action.action_id}")
        if live := self._in_force(kill_tenant_key(tenant), now):
            return Block(KILL_SWITCH, f"tenant; action {live.action.action_id}")
        if model and (live := self._in_force(kill_model_key(model), now)):
            return Block(KILL_SWITCH, f"model; action {live.action.action_id}")
        return None

    def forced_categories(self, tenant: str) -> frozenset[str]:
        forced = self._forced.get(tenant)
        if not forced:
            return _NO_CATEGORIES
        now = self.clock()
        return frozenset(c for c, live in forced.items() if live.in_force(now))

    def account_limit(self, tenant: str, account_hmac: str) -> int | None:
        """Requests per minute an account is throttled to, if it is."""
        if not account_hmac or not self._by_key:
            return None
        live = self._in_force(throttle_key(tenant, account_hmac), self.clock())
        return live.action.requests_per_minute if live else None

    # ---- admin reads ----------------------------------------------------------------
    def actions(self, tenant: str = "") -> list[enforcement_pb2.EnforcementAction]:
        """Actions in force, oldest first (optionally of one tenant)."""
        now = self.clock()
        out = [
            live.action
            for live in self._by_key.values()
            if live.in_force(now) and (not tenant or live.action.target.tenant == tenant)
        ]
        return sorted(out, key=lambda a: (a.issued_at.ToNanoseconds(), a.action_id))

    def find(self, action_id: str) -> LiveAction | None:
        key = self._key_of_id.get(action_id)
        return self._by_key.get(key) if key is not None else None

    def was_revoked(self, action_id: str) -> bool:
        return action_id in self._revoked

    def revocation(self, action_id: str) -> Revocation | None:
        """Who revoked `action_id`, why and when, as its tombstone said (None: not
        revoked, forgotten, or a tombstone written without them)."""
        return self._revoked.get(action_id)

    def get(self, key: str) -> LiveAction | None:
        return self._by_key.get(key)

    def in_force(self) -> Iterator[LiveAction]:
        """Every action in force now (what a snapshot keeps)."""
        now = self.clock()
        return (live for live in list(self._by_key.values()) if live.in_force(now))

    def __len__(self) -> int:
        return len(self._by_key)

    def replace_with(self, other: ActionTable) -> None:
        """Take `other`'s tables as this one's (a state rebuilt from the topic replaces
        the snapshot served meanwhile, in one step on the event loop)."""
        self._by_key, self._key_of_id, self._forced = other._by_key, other._key_of_id, other._forced
        self._revoked.update(other._revoked)
        self.metrics.live.set(len(self._by_key))

    # ---- applying records -------------------------------------------------------------
    def apply(
        self, key: bytes | None, value: bytes | None, revokes: str = "", revocation: Revocation | None = None
    ) -> bool:
        """Apply one record; False (logged, counted) when malformed or a stale revoke.
        `revokes`: a tombstone's signed `sg-revokes` header, the action it removes
        (empty: whatever is on the key). Never logs content: only sizes and what is wrong."""
        try:
            skey = key.decode() if key else ""
        except UnicodeDecodeError:
            skey = ""
        if not skey:
            return self._malformed("record without a usable key", key, value)
        if value is None:
            live = self._by_key.get(skey)
            if revokes and live is not None and live.action.action_id != revokes:
                self.metrics.refused.labels("stale_revoke").inc()
                log.warning("revoke of an action no longer in force ignored", extra={"key_bytes": len(skey)})
                return False
            if live is not None:
                self._revoked[live.action.action_id] = revocation
                while len(self._revoked) > MAX_REVOKED:
                    self._revoked.popitem(last=False)
            self._remove(skey)
            self.metrics.applied.labels("revoke").inc()
            return True
        try:
            action = enforcement_pb2.EnforcementAction.FromString(value)
        except DecodeError:
            return self._malformed("value is not an EnforcementAction", key, value)
        if not action.action_id or action.kind not in KIND_NAMES:
            return self._malformed("action id or kind missing", key, value)
        try:
            expected = action_key(action.kind, action.target)
        except ValueError:
            return self._malformed("target does not fit the kind", key, value)
        if expected != skey:
            return self._malformed("key does not match the action's target", key, value)
        if action.region and action.region != self.region:
            return self._malformed("action is for another region", key, value)
        if action.kind == K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT and action.requests_per_minute <= 0:
            return self._malformed("throttle without requests_per_minute", key, value)
        if action.action_id in self._revoked:
            # A late copy of an action revoked since (an idempotent retry's first try,
            # held by a stalled broker): a revoke is final, nothing brings it back.
            self.metrics.refused.labels("revoked").inc()
            log.warning("record of an action revoked since ignored", extra={"key_bytes": len(skey)})
            return False
        expires = action.expires_at.ToNanoseconds() / 1e9 if action.HasField("expires_at") else 0.0
        self._remove(skey)
        live = LiveAction(skey, action, expires)
        self._by_key[skey] = live
        self._key_of_id[action.action_id] = skey
        if action.kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
            self._forced.setdefault(action.target.tenant, {})[action.target.category] = live
        self.metrics.applied.labels(KIND_NAMES[action.kind]).inc()
        self.metrics.live.set(len(self._by_key))
        return True

    def _remove(self, key: str) -> None:
        old = self._by_key.pop(key, None)
        if old is None:
            return
        self._key_of_id.pop(old.action.action_id, None)
        if old.action.kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
            forced = self._forced.get(old.action.target.tenant, {})
            forced.pop(old.action.target.category, None)
            if not forced:
                self._forced.pop(old.action.target.tenant, None)
        self.metrics.live.set(len(self._by_key))

    def _malformed(self, why: str, key: bytes | None, value: bytes | None) -> bool:
        self.metrics.malformed.inc()
        log.warning(
            "malformed action record skipped",
            extra={"why": why, "key_bytes": len(key or b""), "value_bytes": len(value or b"")},
        )
        return False
