"""One authorization model for operators, end to end: ratelimit (real Redis),
classifier (real ONNX models), Tansu, one enforcer with its admin API and one monitor
(real PostgreSQL) with MonitorService and the console, all real processes, every one
reading config/admin-tokens.example.yaml.

Proves: the operator token cannot set a kill switch or a force-block through the admin
API (PERMISSION_DENIED) while the admin token can; a force-block of an unknown
category ('jailbrek') is INVALID_ARGUMENT naming the valid ones; a second revoke is
not `revoked: true` and keeps the first one's actor and reason; MonitorService
without a token is UNAUTHENTICATED, with a token of another region PERMISSION_DENIED;
admin API calls and MonitorService case reads appear in the console's audit log with
their own actor and reason; a flood of bad tokens is RESOURCE_EXHAUSTED and does not
lock out a valid token from another caller."""

from __future__ import annotations

import asyncio
import html
import re
import time
import uuid

import aiohttp
import grpc
import pytest
from safeguards.v1 import enforcement_pb2 as epb
from safeguards.v1 import enforcement_pb2_grpc, monitor_pb2, monitor_pb2_grpc, safeguards_pb2_grpc
from safeguards.v1 import safeguards_pb2 as pb

from services.actions.authz import hash_token
from services.monitor.console.users import hash_password
from tests.e2e.meshes import JAILBREAK, monitored_mesh
from tests.integration.monitor.monitor_support import pg_database
from tests.support import ROOT, ServiceProcess, SourceForwarder, free_port

REGION = "e2e-authz"
TOKENS = ROOT / "config" / "admin-tokens.example.yaml"
ADMIN, OPERATOR, VIEWER = "dev-admin-token", "dev-operator-token", "dev-viewer-token"
FOREIGN = "foreign-region-token"
PASSWORD = "correct horse " + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authz")
    api_tokens = tmp / "api-tokens.yaml"
    api_tokens.write_text(
        TOKENS.read_text() + f"  {hash_token(FOREIGN)}: {{name: far, role: admin, regions: [elsewhere]}}\n"
    )
    users = tmp / "users.yaml"
    users.write_text(
        f'users:\n  - {{name: ada, password_hash: "{hash_password(PASSWORD, n=2**14)}", role: admin, '
        f"regions: [{REGION}]}}\n"
    )
    console_port = free_port()
    with (
        pg_database("monauthz") as db_url,
        monitored_mesh(
            tmp,
            REGION,
            db_url,
            enforcer_args=["--admin-tokens", str(TOKENS), "--admin-kafka-timeout-seconds", "5"],
            monitor_args=[
                "--api-tokens",
                str(api_tokens),
                "--console-users",
                str(users),
                "--console-listen",
                f"127.0.0.1:{console_port}",
            ],  # fmt: skip
        ) as m,
    ):
        m["console"] = f"http://127.0.0.1:{console_port}"
        yield m


def admin(enforcer: ServiceProcess, method: str, request, token: str | None, address: str = ""):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address or enforcer.address) as ch:
        return getattr(enforcement_pb2_grpc.EnforcementAdminServiceStub(ch), method)(
            request, metadata=metadata, timeout=10
        )


def monitor_call(monitor: ServiceProcess, method: str, request, token: str | None):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(monitor.address) as ch:
        return getattr(monitor_pb2_grpc.MonitorServiceStub(ch), method)(request, metadata=metadata, timeout=10)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def eventually(check, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.2)


async def _audit_page(base: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base + "/signin") as r:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
        form = {"name": "ada", "password": PASSWORD, "csrf_token": token}
        async with http.post(base + "/signin", data=form, headers={"Origin": base}, allow_redirects=False) as r:
            assert r.status in (302, 303), await r.text()
        async with http.get(base + "/audit") as r:
            assert r.status == 200
            return html.unescape(await r.text())


def audit_page(mesh) -> str:
    return asyncio.run(_audit_page(mesh["console"]))


def test_kill_switches_and_force_blocks_need_the_admin_role(mesh) -> None:
    enforcer = mesh["enforcer"]
    kill = epb.IssueActionRequest(kind=epb.ENFORCEMENT_KIND_KILL_SWITCH, tenant="acme", reason="incident 7")
    err = refused(lambda: admin(enforcer, "IssueAction", kill, OPERATOR))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "tenant_action" in err.details()
    force = epb.IssueActionRequest(
        kind=epb.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY, tenant="acme", category="jailbreak", reason="r"
    )
    assert refused(lambda: admin(enforcer, "IssueAction", force, OPERATOR)).code() == grpc.StatusCode.PERMISSION_DENIED
    action = admin(enforcer, "IssueAction", kill, ADMIN).action
    assert action.actor == "dev-admin"
    screen = pb.ScreenPromptRequest(
        context=pb.RequestContext(tenant="acme", account="a-1", model="claude", region=REGION),
        messages=[pb.ChatMessage(role="user", content="What is the capital of France?")],
    )

    def action_of() -> int:
        with grpc.insecure_channel(enforcer.address) as ch:
            return safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenPrompt(screen, timeout=5).decision.action

    eventually(lambda: action_of() == pb.ACTION_BLOCK, what="the kill switch")
    revoke = epb.RevokeActionRequest(action_id=action.action_id, reason="incident over")
    assert refused(lambda: admin(enforcer, "RevokeAction", revoke, OPERATOR)).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert admin(enforcer, "RevokeAction", revoke, ADMIN).revoked
    eventually(lambda: action_of() == pb.ACTION_ALLOW, what="the kill switch lifted")


def test_a_force_block_of_an_unknown_category_is_refused(mesh) -> None:
    enforcer = mesh["enforcer"]
    typo = epb.IssueActionRequest(
        kind=epb.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY, tenant="acme", category="jailbrek", reason="typo"
    )
    err = refused(lambda: admin(enforcer, "IssueAction", typo, ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown category 'jailbrek'" in err.details() and "jailbreak" in err.details()
    listed = admin(enforcer, "ListActions", epb.ListActionsRequest(tenant="acme"), VIEWER).actions
    assert not [a for a in listed if a.target.category == "jailbrek"]


def test_a_second_revoke_is_not_revoked_and_keeps_the_first(mesh) -> None:
    enforcer = mesh["enforcer"]
    account = "acct-" + uuid.uuid4().hex[:8]
    issue = epb.IssueActionRequest(
        kind=epb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, tenant="acme", account=account, reason="fraud ring 12"
    )
    action = admin(enforcer, "IssueAction", issue, OPERATOR).action
    eventually(
        lambda: action.action_id
        in [a.action_id for a in admin(enforcer, "ListActions", epb.ListActionsRequest(), VIEWER).actions],
        what="the suspension read back",
    )
    first = admin(
        enforcer, "RevokeAction", epb.RevokeActionRequest(action_id=action.action_id, reason="appeal 3"), OPERATOR
    )
    second = admin(
        enforcer, "RevokeAction", epb.RevokeActionRequest(action_id=action.action_id, reason="cleanup"), ADMIN
    )
    assert first.revoked and not second.revoked
    assert (second.revoked_by, second.revoke_reason) == ("dev-operator", "appeal 3")

    # Both revokes and the issue are in the console's audit log, each with its own actor and reason.
    def rows() -> str:
        page = audit_page(mesh)
        return page if "cleanup" in page and "appeal 3" in page and "fraud ring 12" in page else ""

    page = eventually(rows, timeout=30, what="the admin API calls in the console's audit log")
    assert re.search(r"dev-operator.*?api\.IssueAction.*?fraud ring 12", page, re.S)
    assert re.search(r"dev-operator.*?api\.RevokeAction.*?appeal 3", page, re.S)
    assert re.search(r"dev-admin.*?api\.RevokeAction.*?cleanup", page, re.S)


def test_monitor_service_needs_a_token_of_its_region_and_case_reads_are_audited(mesh) -> None:
    enforcer, monitor = mesh["enforcer"], mesh["monitor"]
    account = "acct-" + uuid.uuid4().hex[:8]
    with grpc.insecure_channel(enforcer.address) as ch:
        decision = (
            safeguards_pb2_grpc.SafeguardsServiceStub(ch)
            .ScreenPrompt(
                pb.ScreenPromptRequest(
                    context=pb.RequestContext(tenant="acme", account=account, model="claude", region=REGION),
                    messages=[pb.ChatMessage(role="user", content=JAILBREAK)],
                ),
                timeout=5,
            )
            .decision
        )
    assert decision.action == pb.ACTION_BLOCK
    get = monitor_pb2.GetCaseRequest(case_id=decision.decision_id)
    assert refused(lambda: monitor_call(monitor, "GetCase", get, None)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused(lambda: monitor_call(monitor, "GetCase", get, FOREIGN)).code() == grpc.StatusCode.PERMISSION_DENIED

    def read():
        try:
            return monitor_call(monitor, "GetCase", get, VIEWER).review_case
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    case = eventually(read, what="the case")
    assert case.case_id == decision.decision_id
    page = eventually(
        lambda: (p := audit_page(mesh)) and decision.decision_id in p and p, what="the read in the audit log"
    )
    assert re.search(rf"dev-viewer.*?api\.GetCase.*?{decision.decision_id}", page, re.S)
    assert re.search(rf"far.*?api\.GetCase.*?{decision.decision_id}", page, re.S)  # refused, audited too


def test_a_flood_of_bad_tokens_is_throttled_without_locking_out_another_caller(mesh) -> None:
    enforcer = mesh["enforcer"]
    attacker = SourceForwarder(enforcer.address, "127.0.0.7")
    try:
        codes = [
            refused(
                lambda i=i: admin(enforcer, "ListActions", epb.ListActionsRequest(), f"guess-{i}", attacker.address)
            ).code()
            for i in range(30)
        ]
        assert codes[:20] == [grpc.StatusCode.UNAUTHENTICATED] * 20
        assert set(codes[20:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        err = refused(lambda: admin(enforcer, "ListActions", epb.ListActionsRequest(), "guess-x", attacker.address))
        assert "too many failed calls" in err.details()
        admin(enforcer, "ListActions", epb.ListActionsRequest(), VIEWER)  # another caller: served
    finally:
        attacker.close()
