"""The admin domain of enforcement actions, on plain types: authorise a caller by
role, validate, produce to the actions topic (acks=all, signed by the sink), audit.

Front ends turn their own credentials into a `Operator` first: the enforcer's gRPC
admin API checks bearer tokens (`services.enforcer.admin`), the monitor's console
its signed-in operators. Every call, allowed or refused, is audited as a
SURFACE_ADMIN signal on the region's signals topic. Nothing here knows gRPC, HTTP or
aiokafka: the sink and the publisher are ports.

Issue produces the action and returns it; every replica applies what it reads back
from the topic (`apply_locally` also applies it at once, for a console whose operator
reads their own write on the next page). Revoke is a tombstone on the action's key
naming the action it revokes; revoking an action already revoked answers
`revoked=False` with the first revoke's actor and reason. Raw account ids are pseudonymised with the regional key
before anything leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from safeguards.v1 import enforcement_pb2, signals_pb2

from services.actions.authz import Operation, Operator, action_operation, authorize
from services.actions.keys import KIND_NAMES, action_key
from services.actions.projection import ActionTable
from services.actions.records import Revocation
from services.actions.sink import ActionSink
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.kafka import Publisher
from services.common.pbtime import timestamp
from services.common.privacy import RegionalKey, is_pseudonym
from services.common.spool import Record
from services.common.topics import actions_topic, signals_topic

log = logging.getLogger("safeguards.actions.admin")

K = enforcement_pb2
MAX_FIELD = 256
MAX_REASON = 1024
MAX_EVIDENCE = 100
#: Revokes remembered per process (their actor and reason answer a second revoke).
MAX_REVOCATIONS = 10_000
#: Idempotency keys remembered per process, with the action each issued.
MAX_IDEMPOTENCY_KEYS = 10_000
MAX_IDEMPOTENCY_KEY = 128
_CATEGORY = re.compile(r"^[a-z0-9_.-]+$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class RevokeResult:
    """`revoked` False: the action had been revoked already, by `original` (from this
    process's memory or the tombstone's signed headers; None when neither says)."""

    revoked: bool
    original: Revocation | None = None


class Catalog(Protocol):
    """What actions may name, as the front door knows it: the categories a
    force-block may name (the classifier's labels and the policies' categories), the
    tenants and the models of this region. An empty set: not known, nothing is checked
    against it."""

    async def categories(self) -> frozenset[str]: ...

    async def tenants(self) -> frozenset[str]: ...

    async def models(self) -> frozenset[str]: ...


class NoCatalog:
    async def categories(self) -> frozenset[str]:
        return frozenset()

    async def tenants(self) -> frozenset[str]:
        return frozenset()

    async def models(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class IssueRequest:
    """An action to issue. The account is `account` (raw, pseudonymised here) or, from
    a front end that only knows the pseudonym (a review case), `account_hmac`."""

    kind: int
    reason: str
    tenant: str = ""
    account: str = ""
    account_hmac: str = ""
    model: str = ""
    category: str = ""
    ttl_s: float = 0.0
    requests_per_minute: int = 0
    evidence: tuple[str, ...] = ()
    #: The caller's key for retries: the same key issues the same action once.
    idempotency_key: str = ""


@dataclass
class _Issued:
    """What one idempotency key issued here: the request's fingerprint and the action
    record (sent again, byte for byte, by a retry until the broker acknowledged it)."""

    fingerprint: str
    action: enforcement_pb2.EnforcementAction
    acknowledged: bool = False


class ActionAdmin:
    """Protocol-free admin logic: authorise, validate, produce, audit."""

    def __init__(
        self,
        *,
        region: str,
        key: RegionalKey | None,
        table: ActionTable,
        sink: ActionSink,
        publisher: Publisher,
        apply_locally: bool = False,
        catalog: Catalog | None = None,
        clock=time.time,
    ) -> None:
        self.region = region
        self.apply_locally = apply_locally
        self.key = key
        self.table = table
        self.sink = sink
        self.publisher = publisher
        self.catalog = catalog or NoCatalog()
        self.topic = actions_topic(region)
        self._clock = clock
        #: action id -> its revoke, this process's own (bounded, oldest forgotten).
        self._revocations: OrderedDict[str, Revocation] = OrderedDict()
        #: (actor, idempotency key) -> what it issued here (bounded, oldest forgotten).
        self._issued: OrderedDict[tuple[str, str], _Issued] = OrderedDict()

    def authorise(self, caller: Operator, operation: Operation) -> None:
        """The one role matrix and this region's scope (services.actions.authz)."""
        authorize(caller, operation, self.region)

    async def _audited(self, method: str, caller: Operator, tenant: str, reason: str, run) -> object:
        """Run (which authorises first) and audit the call whatever its outcome."""
        action_id = ""
        allowed = False
        try:
            result, action_id = await run()
            allowed = True
            return result
        finally:
            self.audit(method, caller, tenant, action_id, reason, allowed)

    def audit(
        self,
        method: str,
        caller: Operator | None,
        tenant: str,
        action_id: str,
        reason: str,
        ok: bool,
        case_id: str = "",
    ) -> None:
        """Publish a SURFACE_ADMIN signal for one administrative call (and log it,
        content-free). `caller` None: credentials that identified nobody."""
        sig = signals_pb2.SafeguardSignal(
            decision_id=uuid.uuid4().hex,
            time=timestamp(self._clock()),
            region=self.region,
            tenant=tenant[:MAX_FIELD],
            surface=signals_pb2.SURFACE_ADMIN,
            audit=signals_pb2.AdminAudit(
                actor=caller.name if caller else "",
                role=caller.role.value if caller else "",
                method=method,
                action_id=action_id,
                reason=reason[:MAX_REASON],
                allowed=ok,
                case_id=case_id[:MAX_FIELD],
            ),
        )
        self.publisher.publish(
            Record(
                topic=signals_topic(self.region),
                key=sig.tenant.encode(),
                value=sig.SerializeToString(),
                record_id=sig.decision_id,
                headers=(("type", b"safeguards.v1.SafeguardSignal"),),
            )
        )
        log.info(
            "admin call",
            extra={
                "method": method,
                "actor": sig.audit.actor,
                "role": sig.audit.role,
                "action_id": action_id,
                "case_id": sig.audit.case_id,
                "allowed": ok,
            },
        )

    # ---- IssueAction ----
    async def issue(self, caller: Operator, req: IssueRequest) -> enforcement_pb2.EnforcementAction:
        async def run():
            if req.kind not in KIND_NAMES:
                self.authorise(caller, Operation.ACCOUNT_ACTION)  # whoever may issue anything
                raise InvalidArgument(
                    "kind is required (SUSPEND_ACCOUNT, THROTTLE_ACCOUNT, FORCE_BLOCK_CATEGORY, KILL_SWITCH)"
                )
            self.authorise(caller, action_operation(req.kind))
            action = self._build(caller, req)
            await self._check_names(req)
            issued = self._idempotent(caller, req, action) if req.idempotency_key else None
            if issued is not None:
                action = issued.action
                if issued.acknowledged:  # a retry of a call that succeeded: nothing to write
                    return action, action.action_id
            key = action_key(action.kind, action.target).encode()
            value = action.SerializeToString()
            await self.sink.send(self.topic, key, value)
            if issued is not None:
                issued.acknowledged = True
            if self.apply_locally:
                self.table.apply(key, value)
            return action, action.action_id

        return await self._audited("IssueAction", caller, req.tenant, req.reason, run)  # type: ignore[return-value]

    async def _check_names(self, req: IssueRequest) -> None:
        """The category, tenant and model an action names exist here, as far as the
        catalog knows (a typo would otherwise be shown as in force and act on nothing)."""
        checks = (
            ("category", req.category, self.catalog.categories),
            ("tenant", req.tenant, self.catalog.tenants),
            ("model", req.model, self.catalog.models),
        )
        for what, name, known_of in checks:
            if not name:
                continue
            known = await known_of()
            if known and name not in known:
                listed = sorted(known)
                shown = ", ".join(listed[:20]) + (f" and {len(listed) - 20} more" if len(listed) > 20 else "")
                raise InvalidArgument(f"unknown {what} {name[:64]!r} in region {self.region}: known are {shown}")

    def _idempotent(self, caller: Operator, req: IssueRequest, built: enforcement_pb2.EnforcementAction) -> _Issued:
        """The action an idempotency key stands for. Its id is derived from the region,
        the caller and the key, so a retry on another replica writes the same action_id
        (the projection replaces the record on its key; the fault suite counts one
        action); on this replica the retry resends the first try's record unchanged, or
        nothing once the broker acknowledged it. A key reused for a different action is
        refused, and so is the key of an action since revoked (it is not brought back)."""
        digest = hashlib.sha256(
            b"\0".join(v.encode() for v in ("safeguards.action.v1", self.region, caller.name, req.idempotency_key))
        )
        action_id = digest.hexdigest()[:32]
        probe = enforcement_pb2.EnforcementAction()
        probe.CopyFrom(built)
        for field in ("action_id", "issued_at", "expires_at"):
            probe.ClearField(field)
        # What was asked for: the action without its instants, and the lifetime asked.
        fingerprint = hashlib.sha256(probe.SerializeToString(deterministic=True) + repr(req.ttl_s).encode()).hexdigest()
        if action_id in self._revocations or self.table.was_revoked(action_id):
            raise FailedPrecondition(
                "the action issued with this idempotency key was revoked since; issue a new one with a new key"
            )
        slot = (caller.name, req.idempotency_key)
        issued = self._issued.get(slot)
        if issued is None:
            built.action_id = action_id
            issued = _Issued(fingerprint, built)
            live = self.table.find(action_id)
            if live is not None:  # issued through another replica and read back from the topic
                issued.action, issued.acknowledged = live.action, True
                if not _same_action(live.action, built):
                    issued.fingerprint = ""
            self._issued[slot] = issued
            while len(self._issued) > MAX_IDEMPOTENCY_KEYS:
                self._issued.popitem(last=False)
        if issued.fingerprint != fingerprint:
            raise AlreadyExists(
                "this idempotency key already issued a different action "
                f"({issued.action.action_id}); use a new key for a new action"
            )
        return issued

    def _build(self, caller: Operator, req: IssueRequest) -> enforcement_pb2.EnforcementAction:
        kind = req.kind
        name = K.EnforcementKind.Name(kind).removeprefix("ENFORCEMENT_KIND_")
        for field in ("tenant", "account", "model", "category"):
            if len(getattr(req, field)) > MAX_FIELD:
                raise InvalidArgument(f"{field} is longer than {MAX_FIELD} characters")
        needs = {
            K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT: {"tenant", "account"},
            K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT: {"tenant", "account"},
            K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY: {"tenant", "category"},
        }.get(kind)
        account_hmac = req.account_hmac
        if account_hmac and req.account:
            raise InvalidArgument("give the account or its pseudonym, not both")
        if account_hmac and not is_pseudonym(account_hmac):
            raise InvalidArgument("account_hmac must be a regional account pseudonym (64 lowercase hex characters)")
        given = {f for f in ("tenant", "account", "model", "category") if getattr(req, f)}
        if account_hmac:
            given.add("account")
        elif req.account and self.key is None:
            raise FailedPrecondition("no regional key here to pseudonymise a raw account id: give its pseudonym")
        if needs is None:  # kill switch: a tenant or a model
            if len(given & {"tenant", "model"}) != 1 or given - {"tenant", "model"}:
                raise InvalidArgument("KILL_SWITCH needs exactly one of tenant or model (and nothing else)")
        else:
            missing = sorted(needs - given)
            if missing:
                raise InvalidArgument(f"{name} needs {' and '.join(missing)}")
            extra = sorted(given - needs)
            if extra:
                raise InvalidArgument(f"{name} does not use {', '.join(extra)}")
        if kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY and not _CATEGORY.match(req.category):
            raise InvalidArgument("category must be a classifier label such as 'jailbreak' (lowercase, [a-z0-9_.-])")
        if kind == K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT:
            if req.requests_per_minute <= 0:
                raise InvalidArgument("THROTTLE_ACCOUNT needs requests_per_minute > 0")
        elif req.requests_per_minute:
            raise InvalidArgument("requests_per_minute is for THROTTLE_ACCOUNT only")
        if not req.reason.strip():
            raise InvalidArgument("reason is required")
        if len(req.reason) > MAX_REASON:
            raise InvalidArgument(f"reason is longer than {MAX_REASON} characters")
        if req.ttl_s < 0:
            raise InvalidArgument("ttl must not be negative")
        if len(req.evidence) > MAX_EVIDENCE or any(len(e) > MAX_FIELD for e in req.evidence):
            raise InvalidArgument(f"evidence: at most {MAX_EVIDENCE} ids of at most {MAX_FIELD} characters")
        if req.idempotency_key and not (
            len(req.idempotency_key) <= MAX_IDEMPOTENCY_KEY and _IDEMPOTENCY_KEY.match(req.idempotency_key)
        ):
            raise InvalidArgument(
                f"idempotency_key: at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces (a UUID)"
            )
        now = self._clock()
        action = enforcement_pb2.EnforcementAction(
            action_id=uuid.uuid4().hex,
            kind=kind,
            target=enforcement_pb2.EnforcementTarget(
                tenant=req.tenant,
                account_hmac=account_hmac or (self.key.account(req.tenant, req.account) if req.account else ""),
                model=req.model,
                category=req.category,
            ),
            actor=caller.name,
            reason=req.reason,
            issued_at=timestamp(now),
            requests_per_minute=req.requests_per_minute,
            evidence=list(req.evidence),
            region=self.region,
        )
        if req.ttl_s > 0:
            action.expires_at.CopyFrom(timestamp(now + req.ttl_s))
        return action

    # ---- ListActions ----
    async def list(self, caller: Operator, tenant: str = "") -> list[enforcement_pb2.EnforcementAction]:
        async def run():
            self.authorise(caller, Operation.READ)
            return self.table.actions(tenant), ""

        return await self._audited("ListActions", caller, tenant, "", run)  # type: ignore[return-value]

    # ---- RevokeAction ----
    def revocation(self, action_id: str) -> Revocation | None:
        """Who revoked `action_id`: this process (while it remembers), else the
        tombstone any front door wrote, as read back from the topic."""
        return self._revocations.get(action_id) or self.table.revocation(action_id)

    async def revoke(self, caller: Operator, action_id: str, reason: str) -> RevokeResult:
        """Revoke an action in force. Idempotent: an action already revoked answers
        `revoked=False` with the first revoke (its actor and reason are kept, never
        replaced by a later one's); the call is audited either way, with its own
        actor and reason."""
        live = self.table.find(action_id) if action_id else None
        tenant = live.action.target.tenant if live else ""

        async def run():
            self.authorise(caller, Operation.ACCOUNT_ACTION)  # whoever may revoke anything; the kind's below
            if not action_id:
                raise InvalidArgument("action_id is required")
            if not reason.strip():
                raise InvalidArgument("reason is required")
            if len(reason) > MAX_REASON:
                raise InvalidArgument(f"reason is longer than {MAX_REASON} characters")
            original = self.revocation(action_id)
            if original is not None or (live is None and self.table.was_revoked(action_id)):
                if live is not None:
                    self.authorise(caller, action_operation(live.action.kind))
                return RevokeResult(False, original), action_id
            if live is None:
                raise NotFound(
                    f"no action {action_id[:64]!r} in force (expired, replaced, or issued moments ago "
                    "and not read from the actions topic yet)"
                )
            self.authorise(caller, action_operation(live.action.kind))
            # Claimed before the produce: a second revoke meanwhile answers "already".
            mine = self._revocations[action_id] = Revocation(caller.name, reason, self._clock())
            while len(self._revocations) > MAX_REVOCATIONS:
                self._revocations.popitem(last=False)
            key = live.key.encode()
            try:
                await self.sink.send(self.topic, key, None, revokes=live.action.action_id, revocation=mine)
            except BaseException:
                if self._revocations.get(action_id) is mine:
                    del self._revocations[action_id]
                raise
            if self.apply_locally:
                self.table.apply(key, None, revokes=live.action.action_id, revocation=mine)
            return RevokeResult(True), action_id

        return await self._audited("RevokeAction", caller, tenant, reason, run)  # type: ignore[return-value]


def _same_action(a: enforcement_pb2.EnforcementAction, b: enforcement_pb2.EnforcementAction) -> bool:
    """The same action asked for, whenever it was issued (what an idempotent retry on
    another replica compares against the one read back from the topic)."""
    return (
        a.kind == b.kind
        and a.target == b.target
        and a.reason == b.reason
        and a.requests_per_minute == b.requests_per_minute
        and list(a.evidence) == list(b.evidence)
        and a.HasField("expires_at") == b.HasField("expires_at")
    )
