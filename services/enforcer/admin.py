"""The enforcer's EnforcementAdminService: issue, list and revoke enforcement actions.

Served by every enforcer on its own port. It only *produces* to the compacted
`safeguards.actions.<region>` topic (waiting for the broker's acks=all
acknowledgement: an operator must know the action landed, so an unreachable Kafka
answers UNAVAILABLE and nothing is spooled); every replica, this one included,
applies what it reads from there (`state.EnforcementState`), which is also where
List and Revoke look actions up (a revoke is a tombstone on the action's key).

Authorisation: `authorization: Bearer <token>` metadata, checked against a YAML
file of token SHA-256 digests (`--admin-tokens`, reloaded on change; raw tokens
are never stored):

    tokens:
      <sha256 hex of the token>: {name: alice, role: operator}

Roles: `viewer` may List; `operator` may also Issue and Revoke; `admin` may do everything.
No or an unknown token is UNAUTHENTICATED, a role without the right is
PERMISSION_DENIED. Without `--admin-tokens` the service is still registered (so
reflection shows it) but refuses every call with FAILED_PRECONDITION saying so.
Every call, allowed or denied, is audited as a SURFACE_ADMIN signal.

The same domain object serves the monitor's operators' console: there the caller is
a signed-in operator (a `Caller` the console verified), passed instead of a token.

Raw account ids are pseudonymised with the regional key before anything leaves
this module. `python -m services.enforcer.admin hash-token < token-file` prints the
digest to put in the tokens file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from google.protobuf import timestamp_pb2
from pydantic import BaseModel, ConfigDict, Field
from safeguards.v1 import enforcement_pb2, enforcement_pb2_grpc, signals_pb2

from services.common.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.common.kafka import Publisher
from services.common.privacy import RegionalKey, is_pseudonym
from services.common.reloader import ReloadingConfig
from services.common.server import ServiceBinding
from services.common.topics import actions_topic
from services.common.yamlfile import load_model
from services.enforcer.signals import signal_record
from services.enforcer.state import KIND_NAMES, EnforcementState, action_key

log = logging.getLogger("safeguards.enforcer.admin")

K = enforcement_pb2
MAX_FIELD = 256
MAX_REASON = 1024
MAX_EVIDENCE = 100
_CATEGORY = re.compile(r"^[a-z0-9_.-]+$")


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


# ---- tokens ---------------------------------------------------------------------------
class Role(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


#: Which roles may call which method.
ALLOWED: dict[str, frozenset[Role]] = {
    "ListActions": frozenset({Role.VIEWER, Role.OPERATOR, Role.ADMIN}),
    "IssueAction": frozenset({Role.OPERATOR, Role.ADMIN}),
    "RevokeAction": frozenset({Role.OPERATOR, Role.ADMIN}),
}


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=MAX_FIELD)
    role: Role


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: dict[str, _TokenEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role


#: A bearer token to check, or a caller another front end (the console) already verified.
Credentials = str | Caller


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, Caller]:
    """Parse a tokens file: digest -> caller. Raises ConfigError naming the problem."""
    parsed = load_model(path, _TokenFile, "tokens")
    out: dict[str, Caller] = {}
    for digest, entry in parsed.tokens.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(
                f"{path}: tokens: {digest[:12]!r}... is not a SHA-256 hex digest (64 lowercase hex characters; "
                "store `python -m services.enforcer.admin hash-token` output, never a raw token)"
            )
        out[digest] = Caller(entry.name, entry.role)
    return out


def bearer_token(metadata) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return ""


# ---- Kafka --------------------------------------------------------------------------------
class ActionSink(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Deliver one record and return only once the broker acknowledged it."""

    async def close(self) -> None: ...


class KafkaActionSink:
    """A producer of its own (acks=all), started on first use and replaced after a
    failure, so an outage at start does not stop the enforcer from serving."""

    def __init__(self, bootstrap: str, *, idempotence: bool, timeout_s: float, client_id: str) -> None:
        self.bootstrap = bootstrap
        self.idempotence = idempotence
        self.timeout_s = timeout_s
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=self.idempotence,
                    request_timeout_ms=int(self.timeout_s * 1000),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(
        self, topic: str, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = await self._get()
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()
            raise Unavailable(
                f"the actions topic did not acknowledge the record ({type(exc).__name__}); nothing was changed, "
                "retry when Kafka is reachable"
            ) from None

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 2.0)
            except (TimeoutError, KafkaError, OSError):
                pass


# ---- the domain -----------------------------------------------------------------------------
class EnforcementAdmin:
    """Protocol-free admin logic: authorise, validate, produce, audit."""

    def __init__(
        self,
        *,
        region: str,
        key: RegionalKey | None,
        state: EnforcementState,
        sink: ActionSink,
        publisher: Publisher,
        tokens: ReloadingConfig[dict[str, Caller]] | None,
        apply_locally: bool = False,
        clock=time.time,
    ) -> None:
        """`apply_locally`: also apply an acknowledged record to `state` at once, before
        the consumer reads it back (the console, so an operator sees what they did on
        the next page). The enforcer's admin API leaves its state to the consumer, like
        every other replica's."""
        self.region = region
        self.apply_locally = apply_locally
        self.key = key
        self.state = state
        self.sink = sink
        self.publisher = publisher
        self.tokens = tokens
        self.topic = actions_topic(region)
        self._clock = clock

    def authenticate(self, token: str) -> Caller:
        if self.tokens is None or self.tokens.current is None:
            raise FailedPrecondition("the admin API is disabled on this enforcer: start it with --admin-tokens FILE")
        if not token:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        caller = self.tokens.current.get(hash_token(token))
        if caller is None:
            raise Unauthenticated("unknown token")
        return caller

    @staticmethod
    def authorise(caller: Caller, method: str) -> None:
        if caller.role not in ALLOWED[method]:
            raise PermissionDenied(f"role {caller.role.value!r} may not call {method}")

    async def _audited(self, method: str, who: Credentials, tenant: str, reason: str, run) -> object:
        """Authorise, run, and audit the call whatever its outcome."""
        caller: Caller | None = who if isinstance(who, Caller) else None
        action_id = ""
        allowed = False
        try:
            if caller is None:
                caller = self.authenticate(who)  # type: ignore[arg-type]
            self.authorise(caller, method)  # a denied caller is audited by name
            result, action_id = await run(caller)
            allowed = True
            return result
        finally:
            self.audit(method, caller, tenant, action_id, reason, allowed)

    def audit(
        self,
        method: str,
        caller: Caller | None,
        tenant: str,
        action_id: str,
        reason: str,
        ok: bool,
        case_id: str = "",
    ) -> None:
        """Publish a SURFACE_ADMIN signal for one administrative call (and log it, content-free)."""
        sig = signals_pb2.SafeguardSignal(
            decision_id=uuid.uuid4().hex,
            time=_ts(self._clock()),
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
        self.publisher.publish(signal_record(sig))
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
    async def issue(
        self, who: Credentials, req: enforcement_pb2.IssueActionRequest, *, account_hmac: str = ""
    ) -> enforcement_pb2.EnforcementAction:
        """Issue an action. The account is `req.account` (raw, pseudonymised here) or, from
        a front end that only knows the pseudonym (a review case), `account_hmac`."""

        async def run(caller: Caller):
            action = self._build(caller, req, account_hmac)
            key = action_key(action.kind, action.target)
            await self.sink.send(self.topic, key.encode(), action.SerializeToString())
            if self.apply_locally:
                self.state.apply(key.encode(), action.SerializeToString())
            return action, action.action_id

        return await self._audited("IssueAction", who, req.tenant, req.reason, run)  # type: ignore[return-value]

    def _build(
        self, caller: Caller, req: enforcement_pb2.IssueActionRequest, account_hmac: str = ""
    ) -> enforcement_pb2.EnforcementAction:
        kind = req.kind
        if kind not in KIND_NAMES:
            raise InvalidArgument(
                "kind is required (SUSPEND_ACCOUNT, THROTTLE_ACCOUNT, FORCE_BLOCK_CATEGORY, KILL_SWITCH)"
            )
        name = K.EnforcementKind.Name(kind).removeprefix("ENFORCEMENT_KIND_")
        for field in ("tenant", "account", "model", "category"):
            if len(getattr(req, field)) > MAX_FIELD:
                raise InvalidArgument(f"{field} is longer than {MAX_FIELD} characters")
        needs = {
            K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT: {"tenant", "account"},
            K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT: {"tenant", "account"},
            K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY: {"tenant", "category"},
        }.get(kind)
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
        ttl = req.ttl.ToNanoseconds() / 1e9 if req.HasField("ttl") else 0.0
        if ttl < 0:
            raise InvalidArgument("ttl must not be negative")
        if len(req.evidence) > MAX_EVIDENCE or any(len(e) > MAX_FIELD for e in req.evidence):
            raise InvalidArgument(f"evidence: at most {MAX_EVIDENCE} ids of at most {MAX_FIELD} characters")
        now = self._clock()
        action = enforcement_pb2.EnforcementAction(
            action_id=uuid.uuid4().hex,
            kind=kind,
            target=enforcement_pb2.EnforcementTarget(
                tenant=req.tenant,
                account_hmac=account_hmac or self.key.account(req.tenant, req.account),
                model=req.model,
                category=req.category,
            ),
            actor=caller.name,
            reason=req.reason,
            issued_at=_ts(now),
            requests_per_minute=req.requests_per_minute,
            evidence=list(req.evidence),
            region=self.region,
        )
        if ttl > 0:
            action.expires_at.CopyFrom(_ts(now + ttl))
        return action

    # ---- ListActions ----
    async def list(
        self, who: Credentials, req: enforcement_pb2.ListActionsRequest
    ) -> list[enforcement_pb2.EnforcementAction]:
        async def run(caller: Caller):
            return self.state.actions(req.tenant), ""

        return await self._audited("ListActions", who, req.tenant, "", run)  # type: ignore[return-value]

    # ---- RevokeAction ----
    async def revoke(self, who: Credentials, req: enforcement_pb2.RevokeActionRequest) -> bool:
        live = self.state.find(req.action_id) if req.action_id else None
        tenant = live.action.target.tenant if live else ""

        async def run(caller: Caller):
            if not req.action_id:
                raise InvalidArgument("action_id is required")
            if not req.reason.strip():
                raise InvalidArgument("reason is required")
            if live is None:
                raise NotFound(
                    f"no action {req.action_id[:64]!r} in force (already revoked or replaced, or issued moments ago "
                    "and not read from the actions topic yet)"
                )
            key = live.key.encode()
            await self.sink.send(self.topic, key, None)
            if self.apply_locally:
                self.state.apply(key, None)
            return True, req.action_id

        return await self._audited("RevokeAction", who, tenant, req.reason, run)  # type: ignore[return-value]


def _ts(unix: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


# ---- gRPC -----------------------------------------------------------------------------------
class EnforcementAdminServicer(enforcement_pb2_grpc.EnforcementAdminServiceServicer):
    def __init__(self, admin: EnforcementAdmin) -> None:
        self._admin = admin

    async def IssueAction(self, request, context):
        action = await self._admin.issue(bearer_token(context.invocation_metadata()), request)
        return enforcement_pb2.IssueActionResponse(action=action)

    async def ListActions(self, request, context):
        actions = await self._admin.list(bearer_token(context.invocation_metadata()), request)
        return enforcement_pb2.ListActionsResponse(actions=actions)

    async def RevokeAction(self, request, context):
        revoked = await self._admin.revoke(bearer_token(context.invocation_metadata()), request)
        return enforcement_pb2.RevokeActionResponse(revoked=revoked)


def admin_binding(admin: EnforcementAdmin) -> ServiceBinding:
    return ServiceBinding(
        enforcement_pb2.DESCRIPTOR.services_by_name["EnforcementAdminService"].full_name,
        enforcement_pb2_grpc.add_EnforcementAdminServiceServicer_to_server,
        EnforcementAdminServicer(admin),
    )


# ---- CLI ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.enforcer.admin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "hash-token",
        help="read a token on stdin, print its SHA-256 digest for the --admin-tokens file",
    )
    check = sub.add_parser("check-tokens", help="validate a tokens file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        token = sys.stdin.read().strip()
        if not token:
            print("hash-token: no token on stdin", file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    try:
        callers = load_tokens(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: ok, {len(callers)} token(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
