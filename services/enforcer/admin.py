"""The enforcer's EnforcementAdminService: bearer-token authentication in front of
the shared admin domain (`services.actions.admin.ActionAdmin`), and its CLI.

Served by every enforcer on its own port. Issue and Revoke produce to the compacted
`safeguards.actions.<region>` topic (waiting for the broker's acks=all
acknowledgement: an unreachable Kafka answers UNAVAILABLE and nothing is spooled);
every replica, this one included, applies what it reads from there, which is also
where List and Revoke look actions up (a revoke is a tombstone on the action's key).

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

`python -m services.enforcer.admin hash-token < token-file` prints the digest to put
in the tokens file.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from safeguards.v1 import enforcement_pb2, enforcement_pb2_grpc

from services.actions.admin import MAX_FIELD, ActionAdmin, Caller, IssueRequest, Role
from services.common.errors import ConfigError, FailedPrecondition, ServiceError
from services.common.reloader import ReloadingConfig
from services.common.server import ServiceBinding
from services.common.yamlfile import load_model


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


# ---- tokens ---------------------------------------------------------------------------
class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=MAX_FIELD)
    role: Role


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: dict[str, _TokenEntry] = Field(default_factory=dict)


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


class TokenAuth:
    """Bearer token -> Caller, from the reloaded tokens file (None: the API is off)."""

    def __init__(self, tokens: ReloadingConfig[dict[str, Caller]] | None) -> None:
        self.tokens = tokens

    def authenticate(self, token: str) -> Caller:
        if self.tokens is None or self.tokens.current is None:
            raise FailedPrecondition("the admin API is disabled on this enforcer: start it with --admin-tokens FILE")
        if not token:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        caller = self.tokens.current.get(hash_token(token))
        if caller is None:
            raise Unauthenticated("unknown token")
        return caller


# ---- gRPC -----------------------------------------------------------------------------------
class EnforcementAdminServicer(enforcement_pb2_grpc.EnforcementAdminServiceServicer):
    def __init__(self, admin: ActionAdmin, auth: TokenAuth) -> None:
        self._admin = admin
        self._auth = auth

    def _caller(self, context, method: str, tenant: str = "", reason: str = "") -> Caller:
        """The token's caller; a call that identifies nobody is audited and refused."""
        try:
            return self._auth.authenticate(bearer_token(context.invocation_metadata()))
        except ServiceError:
            self._admin.audit(method, None, tenant, "", reason, False)
            raise

    async def IssueAction(self, request, context):
        caller = self._caller(context, "IssueAction", request.tenant, request.reason)
        req = IssueRequest(
            kind=request.kind,
            reason=request.reason,
            tenant=request.tenant,
            account=request.account,
            model=request.model,
            category=request.category,
            ttl_s=request.ttl.ToNanoseconds() / 1e9 if request.HasField("ttl") else 0.0,
            requests_per_minute=request.requests_per_minute,
            evidence=tuple(request.evidence),
        )
        return enforcement_pb2.IssueActionResponse(action=await self._admin.issue(caller, req))

    async def ListActions(self, request, context):
        caller = self._caller(context, "ListActions", request.tenant)
        return enforcement_pb2.ListActionsResponse(actions=await self._admin.list(caller, request.tenant))

    async def RevokeAction(self, request, context):
        live = self._admin.table.find(request.action_id) if request.action_id else None
        caller = self._caller(context, "RevokeAction", live.action.target.tenant if live else "", request.reason)
        revoked = await self._admin.revoke(caller, request.action_id, request.reason)
        return enforcement_pb2.RevokeActionResponse(revoked=revoked)


def admin_binding(admin: ActionAdmin, auth: TokenAuth) -> ServiceBinding:
    return ServiceBinding(
        enforcement_pb2.DESCRIPTOR.services_by_name["EnforcementAdminService"].full_name,
        enforcement_pb2_grpc.add_EnforcementAdminServiceServicer_to_server,
        EnforcementAdminServicer(admin, auth),
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
