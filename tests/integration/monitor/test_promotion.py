"""Issue 13's detection-engineering loop, the promotion report: a candidate policy's
shadow decisions, produced to the signals topic (real Tansu) and consumed by the
monitor process (real PostgreSQL), give `python -m services.monitor.promotion report`
its per-tenant agreement, would-be blocks and allows and incomplete counts (a replay
changes nothing); a shadow model's follow-up is counted in the shadow minutes, has its
own report, and is no decision, no bucket and no case.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

from tests.integration.monitor.monitor_support import make_signal
from tests.integration.monitor.test_monitor_service import REGION as SERVICE_REGION
from tests.integration.monitor.test_monitor_service import db_rows, encoded, produce, wait_for
from tests.integration.monitor.test_monitor_service import env as service_env  # noqa: F401 - a fixture
from tests.support import ROOT

A = safeguards_pb2


def cli(module: str, *args: str, db_url: str, region: str = SERVICE_REGION) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--database-url", db_url, "--region", region],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shadowed(tenant: str, live: str, shadow: int, *, version="cand.1", incomplete="") -> signals_pb2.SafeguardSignal:
    sig = make_signal(region=SERVICE_REGION, tenant=tenant, action=live)
    sig.shadow.policy_version = version
    sig.shadow.action = shadow
    sig.shadow.incomplete = incomplete
    if shadow == A.ACTION_BLOCK:
        sig.shadow.reasons.add(code="classifier.jailbreak", detail="score 0.42")
    return sig


def model_follow_up(of: signals_pb2.SafeguardSignal, action: str, version: int = 3) -> signals_pb2.SafeguardSignal:
    sig = make_signal(region=SERVICE_REGION, tenant=of.tenant, action=action, data_policy="ZERO_RETENTION")
    sig.surface = signals_pb2.SURFACE_SHADOW_MODEL
    sig.retro_of_decision_id = of.decision_id
    sig.original_action = of.action
    sig.shadow_model = "candidate_model"
    sig.model_versions.clear()
    sig.model_versions["candidate_model"] = version
    sig.verdict = classifier_pb2.VERDICT_COMPLETENESS_FULL
    return sig


def report(db_url: str, *flags: str) -> dict:
    done = cli("services.monitor.promotion", "report", *flags, "--json", db_url=db_url, region=SERVICE_REGION)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_candidate_policy_in_shadow_gives_the_promotion_report(service_env) -> None:  # noqa: F811
    kafka, db_url, mon = service_env
    run = uuid.uuid4().hex[:6]
    acme, beta = f"acme-{run}", f"beta-{run}"
    cand = f"cand.{run}"
    signals = [
        shadowed(acme, "ALLOW", A.ACTION_BLOCK, version=cand),  # would-be block
        shadowed(acme, "ALLOW", A.ACTION_BLOCK, version=cand),  # would-be block
        shadowed(acme, "BLOCK", A.ACTION_BLOCK, version=cand),
        shadowed(acme, "BLOCK", A.ACTION_ALLOW, version=cand, incomplete="classifier_models"),  # would-be allow
        shadowed(acme, "FLAG", A.ACTION_FLAG, version="another-candidate"),
        shadowed(beta, "ALLOW", A.ACTION_ALLOW, version=cand),
        shadowed(beta, "ALLOW", A.ACTION_ALLOW, version=cand),
    ]
    live_blocked = signals[2]
    follow_ups = [model_follow_up(live_blocked, "ALLOW"), model_follow_up(signals[0], "ALLOW")]
    asyncio.run(produce(kafka.bootstrap, encoded(signals + follow_ups)))

    async def counted() -> int:
        rows = await db_rows(
            db_url,
            "SELECT coalesce(sum(count), 0) AS n FROM monitor_shadow_minutes WHERE tenant = ANY($1)",
            [acme, beta],
        )
        return rows[0]["n"]

    wait_for(lambda: asyncio.run(counted()) == len(signals) + len(follow_ups), what="the shadows counted")
    r = report(db_url, "--shadow-policy", cand, "--since", "1h")
    tenants = {t["tenant"]: t for t in r["tenants"]}
    assert set(tenants) == {acme, beta}
    a, b = tenants[acme], tenants[beta]
    assert (a["decisions"], a["agree"], a["stricter"], a["looser"]) == (4, 1, 2, 1)
    assert (a["would_block"], a["would_allow"], a["incomplete"], a["agreement"]) == (2, 1, 1, 0.25)
    assert {(m["live"], m["shadow"]): m["decisions"] for m in a["matrix"]} == {
        ("ALLOW", "BLOCK"): 2,
        ("BLOCK", "BLOCK"): 1,
        ("BLOCK", "ALLOW"): 1,
    }
    assert (b["decisions"], b["agreement"], b["would_block"], b["would_allow"]) == (2, 1.0, 0, 0)
    assert r["total"]["decisions"] == 6 and r["total"]["would_block"] == 2
    one = report(db_url, "--shadow-policy", cand, "--tenant", beta)
    assert [t["tenant"] for t in one["tenants"]] == [beta]

    # The shadow model's follow-ups: their own report, and no decision of their own.
    m = report(db_url, "--shadow-model", "candidate_model:3")
    mine = {t["tenant"]: t for t in m["tenants"]}[acme]
    assert (mine["decisions"], mine["would_allow"], mine["looser"], mine["agree"]) == (2, 1, 1, 1)
    assert m["versions_seen"] == ["3"]
    assert report(db_url, "--shadow-model", "candidate_model:4")["total"]["decisions"] == 0
    decisions = asyncio.run(
        db_rows(db_url, "SELECT sum(decisions) AS n FROM monitor_tenant_minutes WHERE tenant = ANY($1)", [acme, beta])
    )
    assert decisions[0]["n"] == len(signals)
    ids = [s.decision_id for s in follow_ups]
    assert not asyncio.run(db_rows(db_url, "SELECT 1 FROM monitor_cases WHERE case_id = ANY($1)", ids))
    assert not asyncio.run(db_rows(db_url, "SELECT 1 FROM monitor_decisions WHERE decision_id = ANY($1)", ids))

    # A replay (redelivery) changes no count.
    before = report(db_url, "--shadow-policy", cand)["total"]
    duplicates = mon.consumed("duplicate")
    asyncio.run(produce(kafka.bootstrap, encoded(signals + follow_ups)))
    n = len(signals) + len(follow_ups)
    wait_for(lambda: mon.consumed("duplicate") >= duplicates + n, what="the replay read as duplicates")
    assert report(db_url, "--shadow-policy", cand)["total"] == before

    text = cli("services.monitor.promotion", "report", "--shadow-policy", cand, db_url=db_url, region=SERVICE_REGION)
    assert text.returncode == 0 and "would-block" in text.stdout and acme in text.stdout


def test_the_report_needs_one_shadow(tmp_path) -> None:
    both = subprocess.run(
        [sys.executable, "-m", "services.monitor.promotion", "report", "--shadow-policy", "a", "--shadow-model", "b"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert both.returncode == 2 and "not allowed with" in both.stderr
