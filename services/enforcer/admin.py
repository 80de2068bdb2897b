"""The enforcer's EnforcementAdminService: bearer-token authentication in front of
the shared admin domain (`services.actions.admin.ActionAdmin`), and its CLI.

Served by every enforcer on its own port. Issue and Revoke produce to the compacted
`safeguards.actions.<region>` topic (waiting for the broker's acks=all
acknowledgement: an unreachable Kafka answers UNAVAILABLE and nothing is spooled);
every replica, this one included, applies what it reads from there, which is also
where List and Revoke look actions up (a revoke is a tombstone on the action's key).

Authorisation: `authorization: Bearer <token>` metadata, checked against a YAML
file of token SHA-256 digests (`--admin-tokens`, reloaded on change; raw tokens are
never stored), in the format and under the role matrix every operator front door
shares (`services.actions.authz`): viewers list, reviewers also issue and revoke
account actions (suspend, throttle), admins also force-blocks and kill switches; a
token's `regions` must include this enforcer's. No or an unknown token is
UNAUTHENTICATED, a role or region without the right PERMISSION_DENIED, a caller
(address or token) past its failures RESOURCE_EXHAUSTED. Without `--admin-tokens`
the service is still registered (so reflection shows it) but refuses every call with
FAILED_PRECONDITION saying so. Every call, allowed or denied, is audited as a
SURFACE_ADMIN signal, which the monitor keeps in its audit log (the console shows it).

`python -m services.enforcer.admin hash-token < token-file` prints the digest to put
in the tokens file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safeguards.v1 import enforcement_pb2, enforcement_pb2_grpc

from services.actions import authz
from services.actions.admin import ActionAdmin, IssueRequest
from services.actions.authz import FailureThrottle, Operator, bearer_token, hash_token, load_tokens
from services.common.errors import ConfigError, PermissionDenied, Unauthenticated
from services.common.pbtime import timestamp
from services.common.reloader import ReloadingConfig
from services.common.server import ServiceBinding
from services.enforcer.policy import PolicySet
from services.enforcer.upstream import ClassifierCaller

OFF_HINT = "the admin API is disabled on this enforcer: start it with --admin-tokens FILE"


class TokenAuth(authz.TokenAuth):
    """The admin API's tokens (None: off, every call FAILED_PRECONDITION)."""

    def __init__(self, tokens) -> None:
        super().__init__(tokens, OFF_HINT)


class EnforcerCatalog:
    """What a force-block may name here: the classifier's labels (ListModels; asked
    again while unknown) and every tenant policy's categories. Tenants and models are
    not known to an enforcer (a tenant on the default policy has no file of its own; a
    replica knows only what it served since it started): not checked here. The
    monitor's console checks them against the region's stored decisions."""

    def __init__(self, classifier: ClassifierCaller, policies: ReloadingConfig[PolicySet]) -> None:
        self._classifier = classifier
        self._policies = policies

    async def categories(self) -> frozenset[str]:
        if not self._classifier.labels:
            await self._classifier.refresh_limits()
        out = set(self._classifier.labels)
        ps = self._policies.current
        if ps is not None:
            for p in (ps.default, *ps.policies.values()):
                out.update(p.categories)
        return frozenset(out)

    async def tenants(self) -> frozenset[str]:
        return frozenset()

    async def models(self) -> frozenset[str]:
        return frozenset()


# ---- gRPC -----------------------------------------------------------------------------------
class EnforcementAdminServicer(enforcement_pb2_grpc.EnforcementAdminServiceServicer):
    def __init__(self, admin: ActionAdmin, auth: TokenAuth, throttle: FailureThrottle | None = None) -> None:
        self._admin = admin
        self._auth = auth
        self._throttle = throttle or FailureThrottle()

    async def _call(self, context, method: str, tenant: str, reason: str, run):
        """Throttle, authenticate, run; failures of authentication or authorisation
        count against the caller (its address and token). A call that identifies
        nobody is audited here (the domain audits the rest); a caller's first
        throttled call is audited once."""
        token = bearer_token(context.invocation_metadata())
        keys = FailureThrottle.keys(context.peer(), token)
        self._throttle.check(keys)
        try:
            caller = self._auth.authenticate(token)
        except Unauthenticated:
            self._admin.audit(method, None, tenant, "", reason, False)
            if self._throttle.failed(keys):
                self._admin.audit(f"{method}.throttled", None, tenant, "", "too many failed calls", False)
            raise
        try:
            return await run(caller)
        except PermissionDenied:
            if self._throttle.failed(keys):
                self._admin.audit(f"{method}.throttled", caller, tenant, "", "too many failed calls", False)
            raise

    async def IssueAction(self, request, context):
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
            idempotency_key=request.idempotency_key,
        )

        async def run(caller: Operator):
            return enforcement_pb2.IssueActionResponse(action=await self._admin.issue(caller, req))

        return await self._call(context, "IssueAction", request.tenant, request.reason, run)

    async def ListActions(self, request, context):
        async def run(caller: Operator):
            return enforcement_pb2.ListActionsResponse(actions=await self._admin.list(caller, request.tenant))

        return await self._call(context, "ListActions", request.tenant, "", run)

    async def RevokeAction(self, request, context):
        live = self._admin.table.find(request.action_id) if request.action_id else None

        async def run(caller: Operator):
            result = await self._admin.revoke(caller, request.action_id, request.reason)
            resp = enforcement_pb2.RevokeActionResponse(revoked=result.revoked)
            if result.original is not None:
                resp.revoked_by = result.original.actor
                resp.revoke_reason = result.original.reason
                resp.revoked_at.CopyFrom(timestamp(result.original.at))
            return resp

        return await self._call(context, "RevokeAction", live.action.target.tenant if live else "", request.reason, run)


def admin_binding(admin: ActionAdmin, auth: TokenAuth, throttle: FailureThrottle | None = None) -> ServiceBinding:
    return ServiceBinding(
        enforcement_pb2.DESCRIPTOR.services_by_name["EnforcementAdminService"].full_name,
        enforcement_pb2_grpc.add_EnforcementAdminServiceServicer_to_server,
        EnforcementAdminServicer(admin, auth, throttle),
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
