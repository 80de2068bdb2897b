"""The monitor as a real process: real Tansu broker (3 partitions), real PostgreSQL,
real gRPC and /metrics. Signals are built as the enforcer builds them.

Proves: replaying the same signals changes no aggregate and no case; a monitor
stopped mid-stream and started again counts everything exactly once; a
ZERO_RETENTION tenant's cases hold no content; the global rollup holds nothing but
counts; /metrics shows the aggregates with bounded tenant labels; bad query input
is INVALID_ARGUMENT. MonitorService answers only a token of its --api-tokens file
(the admin API's format) whose regions include the monitor's, audits every call
(reads of cases too) in the operators' audit log, keeps the enforcers' admin audit
signals there too, and throttles a caller's failures without locking out others.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from safeguards.v1 import monitor_pb2, monitor_pb2_grpc
from safeguards.v1 import safeguards_pb2 as spb

from services.actions.authz import hash_token
from tests.integration.monitor.monitor_support import KEY, admin_signal, make_signal, pg_database
from tests.support import EmbeddedKafka, ServiceProcess, SourceForwarder, free_port
from tools.run_mesh import create_topics

REGION = "mon-1"
TOPIC = f"safeguards.signals.{REGION}"
ROLLUP = "safeguards.rollup.global"
MARKER = "okapi-marmalade-" + uuid.uuid4().hex[:8]  # must never be stored for ZERO_RETENTION
ZERO_REQUEST_ID = "zero-req-" + uuid.uuid4().hex[:8]
VIEWER = "mon-viewer-" + uuid.uuid4().hex[:8]
ELSEWHERE = "mon-elsewhere-" + uuid.uuid4().hex[:8]  # a viewer of another region only
OLD = time.time() - 1200  # 20 minutes ago: its 1m and 5m windows are closed


def tokens_file(tmp) -> object:
    f = tmp / "api-tokens.yaml"
    f.write_text(
        "tokens:\n"
        f"  {hash_token(VIEWER)}: {{name: vic, role: viewer, regions: [{REGION}]}}\n"
        f"  {hash_token(ELSEWHERE)}: {{name: elsa, role: admin, regions: [other-region]}}\n"
    )
    return f


class Monitor:
    """The monitor process of this module; restartable with the same group and database."""

    def __init__(self, kafka: EmbeddedKafka, db_url: str, tmp) -> None:
        self.metrics_port = free_port()
        self.args = [
            "--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--region", REGION, "--kafka-bootstrap", kafka.bootstrap, "--database-url", db_url,
            "--group-id", f"mon-test-{uuid.uuid4().hex[:6]}", "--batch-wait-ms", "50",
            "--metrics-refresh-seconds", "0.3", "--metrics-top-tenants", "2",
            "--rollup-interval-seconds", "0.5", "--rollup-grace-seconds", "1",
            "--spool-dir", str(tmp / "spool"), "--drain-grace-seconds", "2",
            "--api-tokens", str(tokens_file(tmp)),
        ]  # fmt: skip
        self.proc: ServiceProcess | None = None

    def start(self) -> Monitor:
        self.proc = ServiceProcess("services.monitor", self.args).start(timeout=60)
        return self

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def consumed(self, result: str) -> float:
        return self.metrics().get(("safeguards_monitor_signals_total", (("result", result),)), 0.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    kafka = EmbeddedKafka().start()
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        with pg_database("monsvc") as db_url:
            mon = Monitor(kafka, db_url, tmp).start()
            try:
                yield kafka, db_url, mon
            finally:
                mon.stop()
    finally:
        kafka.close()


async def produce(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(TOPIC, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def encoded(signals) -> list[tuple[bytes, bytes]]:
    return [(s.tenant.encode(), s.SerializeToString()) for s in signals]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Authed:
    """A MonitorService stub whose calls carry `authorization: Bearer <token>`."""

    def __init__(self, address: str, token: str | None) -> None:
        self._stub = monitor_pb2_grpc.MonitorServiceStub(grpc.insecure_channel(address))
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, timeout=10, **kw)


def stub(mon: Monitor, token: str | None = VIEWER, address: str = "") -> Authed:
    return Authed(address or mon.proc.address, token)


async def db_rows(db_url: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def db_snapshot(db_url: str):
    buckets = asyncio.run(db_rows(db_url, "SELECT * FROM monitor_buckets ORDER BY 1, 2, 3, 4, 5, 6"))
    cases = asyncio.run(db_rows(db_url, "SELECT row_to_json(c)::text AS j FROM monitor_cases c ORDER BY case_id"))
    return [tuple(r) for r in buckets], [r["j"] for r in cases]


BATCH_A = (
    [make_signal(region=REGION, tenant="acme", action="BLOCK", text=f"{MARKER} std", request_id="acme-req")
     for _ in range(3)]
    + [make_signal(region=REGION, tenant="acme", action="ALLOW") for _ in range(2)]
    + [make_signal(region=REGION, tenant="acme", action="FLAG", model="model-b")]
    + [make_signal(region=REGION, tenant="acme", action="BLOCK", time_s=OLD) for _ in range(2)]
    + [make_signal(region=REGION, tenant="meta", data_policy="METADATA_ONLY", action="BLOCK", text=MARKER)
       for _ in range(2)]
    + [make_signal(region=REGION, tenant="zero", data_policy="ZERO_RETENTION", action=a, text=f"x {MARKER} y",
                   account="zero-account-raw", request_id=ZERO_REQUEST_ID, project="zero-project")
       for a in ("BLOCK", "BLOCK_PII", "FLAG", "ALLOW")]
)  # fmt: skip
# A ZERO_RETENTION signal from a misbehaving producer that carried content anyway.
HOSTILE = make_signal(
    region=REGION, tenant="zero", data_policy="ZERO_RETENTION", action="BLOCK", text="t", account="zero-account-raw"
)
HOSTILE.content.redacted_snippet = f"leaked {MARKER}"
HOSTILE.content.text_hmac = KEY.text(MARKER)
HOSTILE.content.characters = 99
HOSTILE.request_id = ZERO_REQUEST_ID
BATCH_A.append(HOSTILE)
DECISIONS_A = len(BATCH_A)
EXTRA_A = [admin_signal(REGION, "acme")]  # audit: not a decision
GARBAGE = [(b"acme", b"\xff\x00 not a protobuf")]


def restamp_now(signals) -> None:
    """The batches are built when the module is imported, which in a full run is minutes
    before this module's tests: stamp the "now" signals now, or they miss the current 5m
    window (the OLD ones stay old)."""
    now_ns = time.time_ns()
    for s in signals:
        if s.time.seconds > OLD + 60:
            s.time.FromNanoseconds(now_ns)


def test_signals_are_counted_and_a_replay_changes_no_aggregate_and_no_case(env) -> None:
    kafka, db_url, mon = env
    restamp_now(BATCH_A + EXTRA_A)  # once: the replay below sends the very same records
    asyncio.run(produce(kafka.bootstrap, encoded(BATCH_A + EXTRA_A) + GARBAGE))
    wait_for(lambda: mon.consumed("new") == DECISIONS_A, what="batch A counted")
    assert mon.consumed("audit") == 1 and mon.consumed("invalid") == 1

    resp = stub(mon).QueryAggregates(monitor_pb2.QueryAggregatesRequest(window=monitor_pb2.WINDOW_5M, tenant="acme"))
    counts = {(r.category, r.action, r.model): r.count for r in resp.rows}
    assert counts == {
        ("jailbreak", spb.ACTION_BLOCK, "model-a"): 3,
        ("none", spb.ACTION_ALLOW, "model-a"): 2,
        ("harmful", spb.ACTION_FLAG, "model-b"): 1,
    }
    hour = stub(mon).QueryAggregates(monitor_pb2.QueryAggregatesRequest(window=monitor_pb2.WINDOW_1H, tenant="acme"))
    assert sum(r.count for r in hour.rows if r.action == spb.ACTION_BLOCK) == 5  # the 2 old ones too
    cases = stub(mon).ListCases(monitor_pb2.ListCasesRequest(tenant="acme"))
    assert len(cases.cases) == 3 + 1 + 2  # BLOCK and FLAG: 3 now, 1 flag, 2 old blocks
    before = db_snapshot(db_url)

    asyncio.run(produce(kafka.bootstrap, encoded(BATCH_A + EXTRA_A)))  # the very same records again
    wait_for(lambda: mon.consumed("duplicate") == DECISIONS_A, what="the replay consumed")
    assert mon.consumed("new") == DECISIONS_A
    assert db_snapshot(db_url) == before


def test_zero_retention_cases_hold_no_content(env) -> None:
    _, db_url, mon = env
    rows = asyncio.run(db_rows(db_url, "SELECT tenant, row_to_json(c)::text AS j FROM monitor_cases c"))
    zero = [r["j"] for r in rows if r["tenant"] == "zero"]
    std = [r["j"] for r in rows if r["tenant"] == "acme"]
    assert len(zero) == 4  # BLOCK, BLOCK_PII, FLAG, and the hostile BLOCK (ALLOW opens none)
    assert any(MARKER in j for j in std), "positive control: a STANDARD case keeps its snippet"
    for j in zero:
        for needle in (MARKER, ZERO_REQUEST_ID, "zero-account-raw", "zero-project", KEY.text(MARKER)):
            assert needle not in j, needle
    got = stub(mon).ListCases(monitor_pb2.ListCasesRequest(tenant="zero")).cases
    assert len(got) == 4
    for c in got:
        assert c.content == type(c.content)(), c.content
        assert c.account_hmac == KEY.account("zero", "zero-account-raw")
    meta = stub(mon).ListCases(monitor_pb2.ListCasesRequest(tenant="meta")).cases
    assert meta and all(not c.content.redacted_snippet and c.content.characters == len(MARKER) for c in meta)


def test_global_rollup_holds_nothing_but_counts(env) -> None:
    kafka, _, _ = env
    old_minute = int(OLD) // 60 * 60
    records = asyncio.run(read_rollup(kafka.bootstrap, until_window_start=old_minute))
    forbidden = [MARKER, ZERO_REQUEST_ID, "acme-req", "zero-account-raw", "zero-project", "model-a", "model-b"]
    for s in BATCH_A:
        forbidden += [s.account_hmac, s.decision_id] + ([s.content.text_hmac] if s.content.text_hmac else [])
    tenants = {s.tenant for s in BATCH_A}
    for key, value, rec in records:
        for needle in forbidden:
            assert needle.encode() not in value and needle.encode() not in key, needle
        assert {f.name for f, _ in rec.ListFields()} <= {"region", "window", "window_start", "window_end", "counts"}
        assert rec.region == REGION and rec.window in (1, 2, 3)
        assert key.decode() == f"{REGION}/{ {1: '1m', 2: '5m', 3: '1h'}[rec.window] }/{rec.window_start.seconds}"
        for c in rec.counts:
            assert {f.name for f, _ in c.ListFields()} <= {"tenant", "category", "action", "count"}
            assert c.tenant in tenants and c.count > 0
        # Re-encoding the decoded record gives the same bytes: no unknown fields hide in it.
        assert rec.SerializeToString() == value
    old = [rec for _, _, rec in records if rec.window == 1 and rec.window_start.seconds == old_minute]
    assert len(old) == 1
    assert [(c.tenant, c.category, c.action, c.count) for c in old[0].counts] == [
        ("acme", "jailbreak", spb.ACTION_BLOCK, 2)
    ]


async def read_rollup(bootstrap: str, until_window_start: int, timeout: float = 30.0):
    consumer = AIOKafkaConsumer(
        ROLLUP, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    out.append((r.key, r.value, monitor_pb2.RollupRecord.FromString(r.value)))
            if any(rec.window == 1 and rec.window_start.seconds == until_window_start for _, _, rec in out):
                await asyncio.sleep(0.5)  # take what else is there
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.key, r.value, monitor_pb2.RollupRecord.FromString(r.value)) for r in records]
                return out
        raise AssertionError(f"no rollup of the old window; got {[(k, rec) for k, _, rec in out]}")
    finally:
        await consumer.stop()


def test_metrics_show_the_aggregates_with_bounded_tenant_labels(env) -> None:
    _, db_url, mon = env
    time.sleep(0.7)  # one refresh after the last test's writes
    samples = mon.metrics()
    series = {
        dict(labels)["tenant"]: value
        for (name, labels), value in samples.items()
        if name == "safeguards_monitor_decisions"
        and dict(labels)["window"] == "5m"
        and dict(labels)["category"] == "jailbreak"
        and dict(labels)["action"] == "BLOCK"
    }
    assert series["acme"] == 3
    hour = [
        (dict(labels)["tenant"], v)
        for (name, labels), v in samples.items()
        if name == "safeguards_monitor_decisions" and dict(labels)["window"] == "1h"
    ]
    named = {t for t, _ in hour} - {"_other"}
    assert len(named) <= 2 and "_other" in {t for t, _ in hour}
    total = asyncio.run(db_rows(db_url, "SELECT sum(count) AS n FROM monitor_buckets"))[0]["n"]
    assert sum(v for _, v in hour) == total  # every decision counted, under its tenant or _other


def test_bad_query_input_is_invalid_argument(env) -> None:
    _, _, mon = env
    s = stub(mon)
    bad = [
        lambda: s.QueryAggregates(monitor_pb2.QueryAggregatesRequest()),
        lambda: s.QueryAggregates(monitor_pb2.QueryAggregatesRequest(window=7)),
        lambda: s.QueryAggregates(monitor_pb2.QueryAggregatesRequest(window=1, action=42)),
        lambda: s.QueryAggregates(monitor_pb2.QueryAggregatesRequest(window=1, tenant="t" * 1000)),
        lambda: s.ListCases(monitor_pb2.ListCasesRequest(page_size=5000)),
        lambda: s.ListCases(monitor_pb2.ListCasesRequest(page_token="garbage!")),
        lambda: s.ListCases(monitor_pb2.ListCasesRequest(status=9)),
        lambda: s.GetCase(monitor_pb2.GetCaseRequest()),
    ]
    for call in bad:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        s.GetCase(monitor_pb2.GetCaseRequest(case_id="no-such-case"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    one = s.ListCases(monitor_pb2.ListCasesRequest(tenant="acme")).cases[0]
    assert s.GetCase(monitor_pb2.GetCaseRequest(case_id=one.case_id)).review_case == one


def test_a_consumer_restarted_mid_stream_loses_nothing(env) -> None:
    kafka, db_url, mon = env
    first = [make_signal(region=REGION, tenant=f"restart-{i % 3}", action="BLOCK") for i in range(60)]
    second = [make_signal(region=REGION, tenant=f"restart-{i % 3}", action="BLOCK") for i in range(60)]
    asyncio.run(produce(kafka.bootstrap, encoded(first)))
    assert mon.stop() == 0  # SIGTERM while (or before) the first part is being consumed: drains cleanly
    asyncio.run(produce(kafka.bootstrap, encoded(second)))
    mon.start()
    ids = [s.decision_id for s in first + second]

    def all_processed() -> bool:
        rows = asyncio.run(
            db_rows(db_url, "SELECT count(*) AS n FROM monitor_processed WHERE decision_id = ANY($1)", ids)
        )
        return rows[0]["n"] == len(ids)

    wait_for(all_processed, what="every signal of both parts processed")
    rows = asyncio.run(db_rows(db_url, "SELECT sum(count) AS n FROM monitor_buckets WHERE tenant LIKE 'restart-%'"))
    assert rows[0]["n"] == 120  # each counted exactly once
    cases = asyncio.run(db_rows(db_url, "SELECT count(*) AS n FROM monitor_cases WHERE tenant LIKE 'restart-%'"))
    assert cases[0]["n"] == 120


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.details()
    return err.value.code()


def audit_rows(db_url: str, what: str) -> list:
    return asyncio.run(
        db_rows(
            db_url,
            "SELECT operator, role, what, target, reason, ok FROM monitor_audit WHERE region = $1 AND what = $2 "
            "ORDER BY id",
            REGION,
            what,
        )
    )


def test_monitor_service_needs_a_token_of_this_region_and_audits_every_read(env) -> None:
    _, db_url, mon = env
    req = monitor_pb2.ListCasesRequest(tenant="acme")
    assert code_of(lambda: stub(mon, None).ListCases(req)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub(mon, "not-a-token").ListCases(req)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub(mon, ELSEWHERE).ListCases(req)) == grpc.StatusCode.PERMISSION_DENIED
    one = stub(mon).ListCases(req).cases[0]
    assert stub(mon).GetCase(monitor_pb2.GetCaseRequest(case_id=one.case_id)).review_case == one
    rows = [tuple(r.values()) for r in audit_rows(db_url, "api.GetCase")]
    assert ("vic", "viewer", "api.GetCase", one.case_id, "", True) in rows
    refused = [(r["operator"], r["ok"]) for r in audit_rows(db_url, "api.ListCases")]
    assert ("(no valid token)", False) in refused and ("elsa", False) in refused and ("vic", True) in refused


def test_admin_api_audit_signals_land_in_the_audit_log_once(env) -> None:
    kafka, db_url, _ = env
    sig = admin_signal(REGION, "acme")
    sig.audit.action_id, sig.audit.reason = "act-" + uuid.uuid4().hex[:8], "abuse\x00 report 7"
    asyncio.run(produce(kafka.bootstrap, encoded([sig, sig])))  # a redelivery adds nothing
    wait_for(lambda: any(r["target"] == sig.audit.action_id for r in audit_rows(db_url, "api.IssueAction")))
    time.sleep(1)
    got = [tuple(r.values()) for r in audit_rows(db_url, "api.IssueAction") if r["target"] == sig.audit.action_id]
    assert got == [("op@example", "admin", "api.IssueAction", sig.audit.action_id, "abuse report 7", True)]


def test_a_flood_of_bad_tokens_is_throttled_without_locking_out_another_caller(env) -> None:
    _, db_url, mon = env
    attacker = SourceForwarder(mon.proc.address, "127.0.0.9")
    try:
        codes = [
            code_of(lambda i=i: stub(mon, f"guess-{i}", attacker.address).ListCases(monitor_pb2.ListCasesRequest()))
            for i in range(40)
        ]
        assert codes[:20] == [grpc.StatusCode.UNAUTHENTICATED] * 20
        assert set(codes[20:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # Even its valid token is refused from there, for now ...
        refused = lambda: stub(mon, VIEWER, attacker.address).ListCases(monitor_pb2.ListCasesRequest())  # noqa: E731
        assert code_of(refused) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... while another caller with a valid token is served.
        assert stub(mon).ListCases(monitor_pb2.ListCasesRequest(tenant="acme")).cases
    finally:
        attacker.close()
    assert len(audit_rows(db_url, "api.ListCases.throttled")) == 1
