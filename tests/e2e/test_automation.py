"""Automated enforcement end to end: ratelimit (real Redis), classifier (real ONNX
models), Tansu, one enforcer and one monitor (real PostgreSQL) with live rules.
Blocked jailbreaks from one account reach the monitor as signals; its rule produces
an action to the actions topic; the enforcer then answers that account with
enforcement.suspended (or throttles it) while other accounts of the tenant pass.
Prints the time from the rule's trigger (the last blocked request) to the enforcer
blocking the account."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc

from tests.e2e.meshes import JAILBREAK, monitored_mesh
from tests.integration.monitor.monitor_support import pg_database
from tests.support import ServiceProcess

REGION = "e2e-auto"
N = 3
RULES = f"""
rules:
  - name: suspend-jailbreakers
    match: {{category: jailbreak, action: BLOCK, tenant: acme}}
    threshold: {{count: {N}, window_minutes: 10}}
    enforce: {{kind: SUSPEND_ACCOUNT, ttl_minutes: 30}}
    dry_run: false
  - name: throttle-jailbreakers
    match: {{category: jailbreak, action: BLOCK, tenant: beta}}
    threshold: {{count: {N}, window_minutes: 10}}
    enforce: {{kind: THROTTLE_ACCOUNT, requests_per_minute: 1, ttl_minutes: 30}}
    dry_run: false
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("automation")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "rules.yaml").write_text(RULES)
    rules = ["--rules", str(tmp / "rules"), "--actions-flush-seconds", "0.3"]
    with pg_database("monauto") as db_url, monitored_mesh(
        tmp, REGION, db_url, enforcer_args=["--throttle-domain", "e2e"], monitor_args=rules
    ) as m:
        yield m


def screen(enforcer: ServiceProcess, tenant: str, account: str, text: str = "What is the capital of France?"):
    with grpc.insecure_channel(enforcer.address) as ch:
        req = pb.ScreenPromptRequest(
            context=pb.RequestContext(tenant=tenant, account=account, model="claude", region=REGION),
            messages=[pb.ChatMessage(role="user", content=text)],
        )
        return safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenPrompt(req, timeout=5).decision


def codes(d: pb.Decision) -> list[str]:
    return [r.code for r in d.reasons]


def acct() -> str:
    return "acct-" + uuid.uuid4().hex[:10]


def jailbreak_n_times(enforcer: ServiceProcess, tenant: str, account: str) -> float:
    for _ in range(N):
        d = screen(enforcer, tenant, account, JAILBREAK)
        assert d.action == pb.ACTION_BLOCK and "classifier.jailbreak" in codes(d)
    return time.monotonic()


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.1)
    return time.monotonic()


def test_n_blocked_jailbreaks_get_the_account_suspended_while_others_pass(mesh) -> None:
    enf = mesh["enforcer"]
    abuser, bystander = acct(), acct()
    assert screen(enf, "acme", abuser).action == pb.ACTION_ALLOW
    triggered = jailbreak_n_times(enf, "acme", abuser)
    blocked = wait_until(
        lambda: codes(screen(enf, "acme", abuser)) == ["enforcement.suspended"], what="the automated suspension"
    )
    print(f"\nrule trigger -> enforcer blocks the account: {blocked - triggered:.2f}s")
    d = screen(enf, "acme", abuser)
    assert d.action == pb.ACTION_BLOCK and codes(d) == ["enforcement.suspended"]
    assert screen(enf, "acme", bystander).action == pb.ACTION_ALLOW
    # The same account id in another tenant is another account.
    assert screen(enf, "other", abuser).action == pb.ACTION_ALLOW
    assert abuser not in mesh["monitor"].logs()


def test_n_blocked_jailbreaks_get_the_account_throttled_while_others_pass(mesh) -> None:
    enf = mesh["enforcer"]
    abuser, bystander = acct(), acct()
    jailbreak_n_times(enf, "beta", abuser)
    wait_until(lambda: screen(enf, "beta", abuser).action == pb.ACTION_THROTTLE, what="the automated throttle (1 rpm)")
    d = screen(enf, "beta", abuser)
    assert d.action == pb.ACTION_THROTTLE and codes(d) == ["enforcement.throttled"]
    assert all(screen(enf, "beta", bystander).action == pb.ACTION_ALLOW for _ in range(3))
