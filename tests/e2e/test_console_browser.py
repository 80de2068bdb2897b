"""The operators' console in a real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright), over the whole mesh: ratelimit (real Redis), classifier (real
ONNX models), Tansu, an enforcer and the monitor (real PostgreSQL) serving its
console.

A jailbreak gets BLOCKed, so the monitor opens a case; a reviewer signs in in the
browser, lands on the overview (the hour's decisions and blocks, its live charts
drawn), opens the case from the review queue (it says how the decision was taken),
suspends the account with a reason;
the enforcer (a real ScreenPrompt call) then blocks that account's next benign
request while another account passes; the audit log page shows the suspension and
the blocks-per-category chart has been drawn by the page's script, its time axis
labelled HH:MM."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid

import asyncpg
import grpc
import pytest
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc

from services.monitor.console.users import hash_password
from tests.e2e.meshes import JAILBREAK, monitored_mesh
from tests.integration.monitor.monitor_support import pg_database
from tests.support import ServiceProcess

CHROMIUM = "/usr/bin/chromium"
REGION = "e2e-console"
TENANT = "acme"
REVIEWER, PASSWORD = "rosa", "rosa-" + uuid.uuid4().hex[:12]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed (`make` installs Debian's chromium)"
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-e2e")
    users = tmp / "users.yaml"
    users.write_text(
        f'users:\n  - {{name: {REVIEWER}, password_hash: "{hash_password(PASSWORD)}", role: reviewer, '
        f"regions: [{REGION}]}}\n"
    )
    with pg_database("moncone2e") as db_url, monitored_mesh(
        tmp,
        REGION,
        db_url,
        monitor_args=[
            "--hmac-key-file", str(tmp / "hmac.key"),
            "--console-listen", "127.0.0.1:0", "--console-users", str(users),
        ],
    ) as m:  # fmt: skip
        console = next(x for x in m["monitor"].stdout_lines if x.startswith("console serving ")).split()[2]
        yield {**m, "console": console.rstrip("/"), "db": db_url}


def screen(enforcer: ServiceProcess, account: str, text: str) -> pb.Decision:
    with grpc.insecure_channel(enforcer.address) as ch:
        req = pb.ScreenPromptRequest(
            context=pb.RequestContext(tenant=TENANT, account=account, model="claude", region=REGION),
            messages=[pb.ChatMessage(role="user", content=text)],
        )
        return safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenPrompt(req, timeout=5).decision


def wait_for_case(db_url: str, decision_id: str, timeout: float = 30.0) -> None:
    async def poll() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            deadline = time.monotonic() + timeout
            while not await conn.fetchval("SELECT 1 FROM monitor_cases WHERE case_id = $1", decision_id):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no case for decision {decision_id} within {timeout}s")
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    asyncio.run(poll())


def test_reviewer_suspends_an_account_from_the_browser_and_the_enforcer_blocks_it(mesh) -> None:
    from playwright.sync_api import expect, sync_playwright

    enforcer, console = mesh["enforcer"], mesh["console"]
    abuser, bystander = "acct-" + uuid.uuid4().hex[:10], "acct-" + uuid.uuid4().hex[:10]
    benign = "What is the capital of France?"
    assert screen(enforcer, abuser, benign).action == pb.ACTION_ALLOW
    blocked = screen(enforcer, abuser, JAILBREAK)
    assert blocked.action == pb.ACTION_BLOCK
    wait_for_case(mesh["db"], blocked.decision_id)
    reason = "jailbreak attempts, case reviewed " + uuid.uuid4().hex[:6]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{console}/cases")
            expect(page).to_have_url(f"{console}/signin")  # not signed in yet
            page.fill("input[name=name]", REVIEWER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button:text('Sign in')")
            expect(page.locator("h1")).to_have_text("Overview, last hour")  # the landing page
            expect(page.locator("header .who")).to_have_text(f"{REVIEWER} (reviewer)")
            assert int(page.locator("#total-decisions").inner_text()) >= 2
            assert int(page.locator("#total-blocks").inner_text()) >= 1
            expect(page.locator("#chart-volume")).to_have_attribute("data-updated", re.compile("."))
            expect(page.locator("#legend-volume li").first).to_contain_text("decisions: ")
            expect(page.locator("#chart-latency text.time-tick").first).to_have_text(re.compile(r"^\d\d:\d\d$"))
            page.click("nav a:text('Review queue')")
            expect(page.locator("h1")).to_have_text("Review queue")

            page.fill("form.filters input[name=tenant]", TENANT)
            page.select_option("form.filters select[name=action]", "BLOCK")
            page.click("form.filters button")
            page.click(f"a[href='/cases/{blocked.decision_id}']")
            expect(page.locator("h1")).to_contain_text(blocked.decision_id)
            expect(page.locator("dd.decision")).to_have_text("BLOCK")
            expect(page.locator("table.scores tr.over td").first).to_have_text("jailbreak")
            expect(page.locator("dl.how-decided dd.surface")).to_have_text("screen_prompt")

            page.fill("#suspend-form input[name=reason]", reason)
            page.click("#suspend-form button")
            expect(page.locator("h1 .status")).to_have_text("ACTIONED")
            live = page.locator("table.actions tbody tr").filter(has_text="SUSPEND_ACCOUNT")
            expect(live).to_have_count(1)
            expect(live).to_contain_text(reason)
            expect(live.locator("button")).to_have_text("Unsuspend")

            # The enforcer, over real gRPC, now blocks the account's next benign request.
            deadline = time.monotonic() + 30
            while True:
                d = screen(enforcer, abuser, benign)
                if [r.code for r in d.reasons] == ["enforcement.suspended"]:
                    break
                assert time.monotonic() < deadline, "the enforcer did not apply the suspension within 30s"
                time.sleep(0.2)
            assert d.action == pb.ACTION_BLOCK
            assert screen(enforcer, bystander, benign).action == pb.ACTION_ALLOW

            page.click("nav a:text('Audit log')")
            row = page.locator("#audit-log tbody tr").filter(has_text="action.issue.suspend_account")
            expect(row).to_have_count(1)
            expect(row).to_contain_text(REVIEWER)
            expect(row).to_contain_text(reason)
            expect(row.locator("td").last).to_have_text("yes")

            page.click("nav a:text('Blocks')")
            expect(page.locator("#chart-category")).to_have_attribute("data-updated", re.compile("."))
            legend = page.locator("#legend-category li")
            expect(legend.filter(has_text="jailbreak")).to_have_text("jailbreak: 1 blocked", timeout=15_000)
            expect(legend.filter(has_text="enforcement")).to_have_text(
                "enforcement: 1 blocked", timeout=15_000  # the suspended request, redrawn within 5 s
            )
            expect(page.locator("#chart-category text.time-tick").first).to_have_text(re.compile(r"^\d\d:\d\d$"))
            expect(page.locator("#chart-tenant circle").first).to_be_attached()
            assert not errors, errors  # no CSP violation or script error in the console
        finally:
            browser.close()
    assert abuser not in mesh["monitor"].logs()
