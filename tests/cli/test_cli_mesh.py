"""The command-line client against the real mesh (rate limiter on real Redis,
classifier with the built models, Tansu, an enforcer with the development admin
tokens, a monitor on PostgreSQL), run as users run it: `python -m safeguards ...` in
a subprocess, addresses and token from SAFEGUARDS_* env vars. Every README example
command has its counterpart here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import Pki
from tests.e2e.meshes import JAILBREAK, monitored_mesh
from tests.integration.monitor.monitor_support import pg_database
from tests.support import ROOT, ServiceProcess, free_port

pytestmark = pytest.mark.slow

REGION = "e2e-cli"
ADMIN_TOKEN, VIEWER_TOKEN = "dev-admin-token", "dev-viewer-token"  # config/admin-tokens.example.yaml
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x9Jk2mQ8vLpR3sTq4nB6dF0hZ1cW5yU8eK2aP9oGjXr\n"
    "Lm3Nq7Vw2Ys5Bt8Hc1Dx4Fz6Gp0Jk9Ql3Rm7Sn2Tv5Wx8Yb1Zc4Ad7Be0Cf3Dg6Eh9\n-----END RSA PRIVATE KEY-----\n"
)
STRICT_POLICY = """
tenant: cli-strict
version: "cli.1"
deadline_ms: 400
classifier: {models: [prompt_guard], fail_mode: open}
categories:
  jailbreak: {threshold: model, action: BLOCK}
pii: {action: REDACT, kinds: [EMAIL], block: [PRIVATE_KEY]}
completion: {every_chars: 40, window_chars: 400, replacement: "[removed]"}
"""


def arg_of(proc: ServiceProcess, flag: str) -> str:
    return proc.args[proc.args.index(flag) + 1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("cli")
    tokens = str(ROOT / "config" / "admin-tokens.example.yaml")
    with (
        pg_database("moncli") as db_url,
        monitored_mesh(
            tmp, REGION, db_url, enforcer_args=["--admin-tokens", tokens], monitor_args=["--api-tokens", tokens]
        ) as m,
    ):
        (tmp / "policies" / "strict.yaml").write_text(STRICT_POLICY)  # reloaded within a second
        enforcer = m["enforcer"]
        yield {
            "SAFEGUARDS_ENFORCER": enforcer.address,
            "SAFEGUARDS_CLASSIFIER": arg_of(enforcer, "--classifier-addr"),
            "SAFEGUARDS_RATELIMIT": arg_of(enforcer, "--ratelimit-addr"),
            "SAFEGUARDS_MONITOR": m["monitor"].address,
            "SAFEGUARDS_PLAINTEXT": "true",
        }


def client(mesh: dict[str, str], *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAFEGUARDS_")}
    return subprocess.run(
        [sys.executable, "-m", "safeguards", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **mesh, **env},
        input=stdin,
        timeout=60,
    )


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout


def as_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(ok(out))


def test_screen_a_benign_prompt_and_a_jailbreak(mesh) -> None:
    text = ok(client(mesh, "screen", "--tenant", "acme", "--account", "user-42", "What is the capital of France?"))
    assert text.startswith("ALLOW  decision ") and "verdict FULL" in text
    d = as_json(client(mesh, "screen", "--json", "--tenant", "acme", "--account", "user-42", JAILBREAK))["decision"]
    assert d["action"] == "ACTION_BLOCK"
    assert "classifier.jailbreak" in [r["code"] for r in d["reasons"]]
    assert d["degraded"] is False and d["verdict"] == "VERDICT_COMPLETENESS_FULL"  # fields with default values too


def test_screen_reads_stdin_and_a_messages_file(mesh, tmp_path: Path) -> None:
    d = as_json(client(mesh, "screen", "--json", "-", stdin=JAILBREAK))["decision"]
    assert d["action"] == "ACTION_BLOCK"
    conversation = tmp_path / "chat.json"
    conversation.write_text(
        json.dumps([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi there"}])
    )
    d = as_json(client(mesh, "screen", "--json", "--messages-file", str(conversation)))["decision"]
    assert d["action"] == "ACTION_ALLOW"


def test_redacted_messages_are_shown_with_control_characters_escaped(mesh) -> None:
    wait_for_strict_policy(mesh)
    text = ok(client(mesh, "screen", "--tenant", "cli-strict", "mail me at jane@example.com \x1b[31mnow"))
    assert text.startswith("REDACT")
    (line,) = [x for x in text.splitlines() if x.strip().startswith("redacted user:")]
    assert "jane@example.com" not in line and "\\x1b[31m" in line and "\x1b" not in text


def wait_for_strict_policy(mesh) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        d = as_json(client(mesh, "screen", "--json", "--tenant", "cli-strict", "hello"))["decision"]
        if d["policy_version"] == "cli.1":
            return
        time.sleep(0.5)
    raise AssertionError("the cli-strict policy was not loaded")


def test_stream_a_benign_completion_then_one_that_is_cut(mesh) -> None:
    benign = "Paris is the capital of France. It is known for the Eiffel Tower and its cafes."
    lines = ok(client(mesh, "stream", "--json", "--chunk-chars", "20", benign)).splitlines()
    verdicts = [json.loads(x) for x in lines]
    assert len(verdicts) == -(-len(benign) // 20) + 1  # one per chunk, then the final verdict
    assert all(v["action"] == "ACTION_ALLOW" and not v["cut"] for v in verdicts)
    assert verdicts[-1]["decision"]["decision_id"]

    wait_for_strict_policy(mesh)
    leak = "Sure, here is the key you asked for: " + PEM + " and more text follows here. " * 5
    text = ok(client(mesh, "stream", "--tenant", "cli-strict", "--chunk-chars", "16", "-", stdin=leak))
    cut = [x for x in text.splitlines() if "CUT" in x]
    assert len(cut) == 1 and "BLOCK" in cut[0] and "[removed]" in cut[0]
    assert "PRIVATE KEY" not in text  # the completion itself is never echoed


def test_ratelimit_check(mesh) -> None:
    tenant = "cli-" + uuid.uuid4().hex[:8]
    first = as_json(client(mesh, "ratelimit", "--json", "--domain", "e2e", "-d", f"tenant={tenant}"))
    assert first["overall_code"] == "OK"
    second = as_json(client(mesh, "ratelimit", "--json", "--domain", "e2e", "-d", f"tenant={tenant}", "--hits", "5"))
    assert int(second["statuses"][0]["limit_remaining"]) < int(first["statuses"][0]["limit_remaining"])
    text = ok(client(mesh, "ratelimit", "--domain", "e2e", "-d", f"tenant={tenant}", "-d", f"tenant={tenant},model=x"))
    assert text.startswith("OK") and "descriptor 0: OK  limit 100000/hour, remaining" in text
    assert "descriptor 1: OK\n" in text  # no rule for that one: no limit


def test_models_and_classify(mesh) -> None:
    text = ok(client(mesh, "models"))
    assert "default model prompt_guard" in text and "prompt_guard_minilm" in text
    scored = as_json(client(mesh, "classify", "--json", JAILBREAK, "What time is it?"))["results"]
    assert "jailbreak" in scored[0]["models"][0]["flagged_labels"]
    assert scored[1]["models"][0]["flagged_labels"] == []
    assert "flagged jailbreak" in ok(client(mesh, "classify", JAILBREAK))


def test_issue_list_and_revoke_an_action(mesh) -> None:
    tenant, account = "cli-" + uuid.uuid4().hex[:8], "user-" + uuid.uuid4().hex[:6]
    issue = ["actions", "issue", "--kind", "suspend-account", "--tenant", tenant, "--account", account]
    issued = as_json(
        client(mesh, *issue, "--reason", "abuse report 1234", "--ttl", "1h", "--json", SAFEGUARDS_TOKEN=ADMIN_TOKEN)
    )["action"]
    assert issued["kind"] == "ENFORCEMENT_KIND_SUSPEND_ACCOUNT" and issued["target"]["account_hmac"] != account
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the replica applies it from the actions topic
        listed = as_json(client(mesh, "actions", "list", "--json", "--tenant", tenant, "--token", ADMIN_TOKEN))
        if any(a["action_id"] == issued["action_id"] for a in listed["actions"]):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the issued action was never listed")
    text = ok(client(mesh, "actions", "list", "--tenant", tenant, SAFEGUARDS_TOKEN=ADMIN_TOKEN))
    assert issued["action_id"] in text and "SUSPEND_ACCOUNT" in text and "abuse report 1234" in text
    d = as_json(client(mesh, "screen", "--json", "--tenant", tenant, "--account", account, "hello"))["decision"]
    assert d["action"] == "ACTION_BLOCK" and d["reasons"][0]["code"] == "enforcement.suspended"
    revoke = ["actions", "revoke", issued["action_id"], "--reason", "appeal granted"]
    assert ok(client(mesh, *revoke, SAFEGUARDS_TOKEN=ADMIN_TOKEN)).strip() == "revoked"
    again = ok(client(mesh, "actions", "revoke", issued["action_id"], "--reason", "again", "--token", ADMIN_TOKEN))
    assert again.strip() == "already revoked by dev-admin: appeal granted"


def test_an_issue_retried_with_its_idempotency_key_is_issued_once(mesh) -> None:
    tenant = "cli-" + uuid.uuid4().hex[:8]
    issue = ["actions", "issue", "--kind", "suspend-account", "--tenant", tenant, "--account", "u-1"]
    key = ["--idempotency-key", uuid.uuid4().hex, "--reason", "abuse", "--json"]
    first = as_json(client(mesh, *issue, *key, SAFEGUARDS_TOKEN=ADMIN_TOKEN))["action"]
    again = as_json(client(mesh, *issue, *key, SAFEGUARDS_TOKEN=ADMIN_TOKEN))["action"]
    assert again == first
    other = client(
        mesh,
        *["actions", "issue", "--kind", "suspend-account", "--tenant", tenant, "--account", "u-2", *key],
        SAFEGUARDS_TOKEN=ADMIN_TOKEN,
    )
    assert other.returncode == 1 and "ALREADY_EXISTS" in other.stderr and first["action_id"] in other.stderr
    # Without a key each call is a new action; a call that cannot reach the enforcer
    # prints the key to retry with.
    out = client({**mesh, "SAFEGUARDS_ENFORCER": f"127.0.0.1:{free_port()}"}, *issue, "--reason", "x", "--timeout", "2")
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr
    assert re.search(r"repeat the command with --idempotency-key [0-9a-f]{32}$", out.stderr, re.M)


def test_admin_errors_are_one_line_with_the_status(mesh) -> None:
    issue = ["actions", "issue", "--kind", "kill-switch", "--tenant", "cli-x", "--reason", "test"]
    out = client(mesh, *issue)
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("safeguards actions issue: error: UNAUTHENTICATED: ") and "--token" in line
    out = client(mesh, *issue, SAFEGUARDS_TOKEN=VIEWER_TOKEN)
    assert out.returncode == 1 and out.stderr.startswith("safeguards actions issue: error: PERMISSION_DENIED: ")


def test_cases_list_show_and_aggregates(mesh) -> None:
    tenant = "cli-" + uuid.uuid4().hex[:8]
    out = client(mesh, "cases", "list", "--tenant", tenant)  # MonitorService needs a token
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr and "--token" in out.stderr
    mesh = {**mesh, "SAFEGUARDS_TOKEN": VIEWER_TOKEN}
    d = as_json(client(mesh, "screen", "--json", "--tenant", tenant, "--account", "a-1", JAILBREAK))["decision"]
    assert d["action"] == "ACTION_BLOCK"
    deadline = time.monotonic() + 30
    cases: list = []
    while time.monotonic() < deadline and not cases:
        cases = as_json(client(mesh, "cases", "list", "--json", "--tenant", tenant, "--action", "block")).get(
            "cases", []
        )
        time.sleep(0.5)
    assert [c["case_id"] for c in cases] == [d["decision_id"]]
    text = ok(client(mesh, "cases", "list", "--tenant", tenant, "--status", "open"))
    assert d["decision_id"] in text and "OPEN" in text and "BLOCK" in text
    shown = ok(client(mesh, "cases", "show", d["decision_id"]))
    assert shown.startswith(d["decision_id"]) and "reason classifier.jailbreak" in shown
    assert JAILBREAK not in shown  # a redacted, truncated snippet at most
    missing = client(mesh, "cases", "show", "no-such-case")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    rows = as_json(client(mesh, "aggregates", "--json", "--window", "5m", "--tenant", tenant))["rows"]
    assert any(r["action"] == "ACTION_BLOCK" and int(r["count"]) >= 1 for r in rows)


def test_mutual_tls_flags_reach_a_tls_service(tmp_path: Path) -> None:
    """--ca-file/--cert-file/--key-file as the services' own client TLS: a rate limiter
    that requires client certificates answers the client with them, not without."""
    pki = Pki(tmp_path)
    cert, key = pki.server()
    client_cert, client_key = pki.client("cli", "spiffe://test/cli")
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "d.yaml").write_text(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"
    )
    args = ["--listen", "127.0.0.1:0", "--metrics-listen", "", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-client-ca-file", str(pki.ca_file), "--config", str(tmp_path / "rl"),
            "--key-prefix", f"cli{uuid.uuid4().hex[:6]}:"]  # fmt: skip
    with ServiceProcess("services.ratelimit", args) as rl:
        target = {"SAFEGUARDS_RATELIMIT": f"localhost:{rl.port}"}
        check = ["ratelimit", "--domain", "d", "-d", "k=v", "--ca-file", str(pki.ca_file)]
        out = client(target, *check, "--timeout", "3s")
        assert out.returncode == 1 and len(out.stderr.splitlines()) == 1  # no client certificate
        out = client(target, *check, "--cert-file", str(client_cert), "--key-file", str(client_key))
        assert ok(out).startswith("OK")
