"""Benchmark of the monitor (services/monitor): how many signals/s one monitor
process sustains with its consumer lag flat, how fast it drains a backlog, what
CPU it spends per 1k signals, and the time from an automated rule's trigger to
the enforcer blocking the account.

(a) Throughput. Tansu (tools.embedded.EmbeddedKafka, the region's topics from
tools.run_mesh.create_topics), a fresh PostgreSQL database on 127.0.0.1:5432
(dropped afterwards), one monitor process with the default (dry-run) rules and its
default batch settings. Signals are built exactly as the enforcer builds them
(services.enforcer.signals.build_signal: ALLOW / FLAG / BLOCK mix, 8 tenants, 400
accounts, 3 categories, 3 models), each with its own decision id. First a backlog
is produced before the monitor starts and the drain rate is timed from the
monitor's own counter (safeguards_monitor_signals_total{result="new"}) = max
throughput; then an open-loop asyncio producer in this harness runs a ladder of
rates (fractions of the drain rate) and the monitor's counter and lag gauge
(safeguards_monitor_consumer_lag) are sampled every second. A step is "flat" when
the monitor consumed >= 95% of what was produced and the backlog at the end is
under one second of produce.

(b) Trigger -> block. Rate limiter (real Redis), classifier (built ONNX models),
Tansu, one enforcer and one monitor with a live rule (3 blocked jailbreaks of an
account within 10 minutes -> suspend it). Per round a new account sends 3
jailbreaks through ScreenPrompt; then ScreenPrompt is polled for that account
every 10 ms until it answers enforcement.suspended. Reported: first
blocked-by-enforcement answer - answer of the triggering (3rd) decision.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

import asyncpg

from bench import harness, system
from bench.harness import REPO
from bench.reports.monitor import render
from bench.results import RESULTS, publish
from services.common.topics import signals_topic

SECTION = "## Monitor"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REGION = "bench-mon"


log = harness.stamped_log("bench.monitor")


# ---- signals -------------------------------------------------------------------------------------------------------


def signal_templates(n: int = 600):
    """Signals as the enforcer builds them, a realistic mix; decision ids are set per record later."""
    from safeguards.v1 import signals_pb2

    from services.common.privacy import RegionalKey
    from services.enforcer.decision import CategoryScore, Outcome, Reason
    from services.enforcer.policy import Action, parse_policy
    from services.enforcer.signals import SignalInput, build_signal

    key = RegionalKey.from_bytes("bench-1", b"bench-monitor-key-" + b"m" * 40)
    tenants = [f"tenant-{i}" for i in range(8)]
    policies = {
        t: parse_policy(
            f"tenant: {t}\nversion: b.1\ndata_policy: {('STANDARD', 'METADATA_ONLY', 'ZERO_RETENTION')[i % 3]}\n"
            "categories:\n  jailbreak: {threshold: 0.5, action: BLOCK}\n  harmful: {threshold: 0.5, action: FLAG}\n"
            "  prompt_injection: {threshold: 0.5, action: BLOCK}\n",
            f"{t}.yaml",
        )
        for i, t in enumerate(tenants)
    }
    # 80% ALLOW, 12% FLAG, 8% BLOCK (jailbreak / prompt_injection)
    kinds = ["ALLOW"] * 20 + ["FLAG"] * 3 + ["BLOCK_JB", "BLOCK_PI"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        tenant = tenants[i % len(tenants)]
        cat = {"BLOCK_JB": "jailbreak", "BLOCK_PI": "prompt_injection", "FLAG": "harmful"}.get(kind, "jailbreak")
        act = {"ALLOW": Action.ALLOW, "FLAG": Action.FLAG}.get(kind, Action.BLOCK)
        reasons = () if kind == "ALLOW" else (Reason(f"classifier.{cat}", "score 0.9"),)
        outcome = Outcome(
            action=act,
            reasons=reasons,
            scores=(CategoryScore(cat, 0.1 if kind == "ALLOW" else 0.9, 0.5, act),),
            redact=False,
            degraded=False,
            failed_dependencies=(),
        )
        sig = build_signal(
            SignalInput(
                decision_id="x",
                time_s=time.time(),
                region=REGION,
                tenant=tenant,
                account_hmac=key.account(tenant, f"acct-{i % 400}"),
                project="proj-1",
                model=f"model-{i % 3}",
                request_id=f"req-{i}",
                surface=signals_pb2.SURFACE_SCREEN_PROMPT,
                text=f"benchmark prompt number {i} with some words in it",
                messages=1,
                findings=(),
                outcome=outcome,
                policy=policies[tenant],
                latencies={"total": 0.01},
                model_versions={"prompt_guard": 1},
            ),
            key,
            snippet_chars=280,
        )
        out.append(sig)
    return out


def records(templates, n: int) -> list[tuple[bytes, bytes]]:
    """n serialized signals (key, value), each with a fresh decision id and time."""
    out = []
    now = time.time()
    for i in range(n):
        t = templates[i % len(templates)]
        t.decision_id = uuid.uuid4().hex
        t.time.FromNanoseconds(int(now * 1e9))
        out.append((t.tenant.encode(), t.SerializeToString()))
    return out


async def produce(bootstrap: str, recs: list[tuple[bytes, bytes]], rate: float = 0.0) -> float:
    """Produce recs (open loop at `rate`/s, or as fast as possible when 0); returns seconds taken."""
    from aiokafka import AIOKafkaProducer

    topic = signals_topic(REGION)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    futs = []
    try:
        t0 = time.monotonic()
        sent = 0
        while sent < len(recs):
            due = len(recs) if rate <= 0 else min(len(recs), int(rate * (time.monotonic() - t0)) + 1)
            while sent < due:
                k, v = recs[sent]
                futs.append(await producer.send(topic, v, key=k))
                sent += 1
            if rate > 0:
                await asyncio.sleep(0.01)
        await asyncio.gather(*futs)
        return time.monotonic() - t0
    finally:
        await producer.stop()


# ---- the monitor's metrics ------------------------------------------------------------------------------------------


def _pick(s) -> str | None:
    if s.name == "safeguards_monitor_signals_total":
        return s.labels["result"]
    return {"safeguards_monitor_consumer_lag": "lag", "safeguards_monitor_batches_committed_total": "batches"}.get(
        s.name
    )


def scrape(port: int) -> dict[str, float]:
    """Signals by result (new / duplicate / invalid), the consumer's lag and the batches committed."""
    return harness.scrape(port, _pick)


def consumed(m: dict[str, float]) -> float:
    return m.get("new", 0.0) + m.get("duplicate", 0.0)


# ---- (a) throughput ------------------------------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def throughput(args, workdir: Path) -> dict:
    from tests.support import ServiceProcess, free_port
    from tools.embedded import EmbeddedKafka
    from tools.run_mesh import create_topics

    db = f"benchmon_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{db}"'))
    kafka = EmbeddedKafka().start()
    monitor = None
    res: dict = {"steps": []}
    try:
        asyncio.run(create_topics(kafka.bootstrap, REGION))
        log("building signals")
        templates = signal_templates()
        backlog = records(templates, args.backlog)
        log(f"pre-filling a backlog of {args.backlog} signals")
        res["prefill_s"] = asyncio.run(produce(kafka.bootstrap, backlog))
        mport = free_port()
        monitor = ServiceProcess(
            "services.monitor",
            [
                "--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{mport}",
                "--region", REGION, "--kafka-bootstrap", kafka.bootstrap,
                "--database-url", PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}", "--spool-dir", str(workdir / "spool"),
                "--rules", str(REPO / "config" / "monitor-rules" / "default.yaml"), "--insecure-dev-action-key",
            ],
        ).start(timeout=60)  # fmt: skip
        pid = monitor.proc.pid
        kpid = kafka.proc.pid
        # drain: from the first consumed signal to the whole backlog
        deadline = time.monotonic() + args.drain_timeout
        while consumed(scrape(mport)) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0, c0, cpu0 = time.monotonic(), consumed(scrape(mport)), system.cpu_seconds(pid)
        pg0, k0 = {p: system.cpu_seconds(p) for p in system.pids_named("postgres")}, system.cpu_seconds(kpid)
        while consumed(m := scrape(mport)) < args.backlog and time.monotonic() < deadline:
            time.sleep(0.1)
        t1, c1, cpu1 = time.monotonic(), consumed(m), system.cpu_seconds(pid)
        n = c1 - c0
        res["drain"] = {
            "n": n,
            "seconds": t1 - t0,
            "rate": n / (t1 - t0),
            "cpu_pct": (cpu1 - cpu0) * 100 / (t1 - t0),
            "cpu_ms_per_1k": (cpu1 - cpu0) * 1000 / n * 1000,
            # PostgreSQL: every postgres process, including backends born during the drain
            "pg_pct": sum(system.cpu_seconds(p) - pg0.get(p, 0.0) for p in system.pids_named("postgres"))
            * 100
            / (t1 - t0),
            "kafka_pct": (system.cpu_seconds(kpid) - k0) * 100 / (t1 - t0),
            "complete": c1 >= args.backlog,
            "new": m.get("new", 0.0),
            "duplicate": m.get("duplicate", 0.0),
            "invalid": m.get("invalid", 0.0),
            "batches": m.get("batches", 0.0),
        }
        drain = res["drain"]["rate"]
        log(f"drained {n:.0f} signals in {t1 - t0:.1f}s = {drain:.0f}/s, monitor CPU {res['drain']['cpu_pct']:.0f}%")
        time.sleep(1.0)
        for frac in args.fractions:
            rate = max(50, round(drain * frac / 50) * 50)
            recs = records(templates, int(rate * args.step))
            before = scrape(mport)
            cpu0, tt0 = system.cpu_seconds(pid), time.monotonic()
            samples = []

            async def step(recs=recs, rate=rate, samples=samples, base=consumed(before)):
                async def sample():
                    s0 = time.monotonic()
                    while True:
                        await asyncio.sleep(1.0)
                        m = await asyncio.to_thread(scrape, mport)
                        samples.append((time.monotonic() - s0, consumed(m) - base, m.get("lag", 0.0)))

                task = asyncio.create_task(sample())
                try:
                    return await produce(kafka.bootstrap, recs, rate)
                finally:
                    task.cancel()

            took = asyncio.run(step())
            tt1 = time.monotonic()
            after = scrape(mport)
            cpu = system.cpu_seconds(pid) - cpu0
            got = consumed(after) - consumed(before)
            produced = len(recs)
            backlog_end = produced - got
            flat = got >= 0.95 * produced and backlog_end < rate
            st = {
                "target": rate,
                "produced_rate": produced / took,
                "consumed_rate": got / (tt1 - tt0),
                "backlog_end": backlog_end,
                "lag_gauge_end": after.get("lag", 0.0),
                "lag_max": max((s[2] for s in samples), default=0.0),
                "cpu_pct": cpu * 100 / (tt1 - tt0),
                "cpu_ms_per_1k": cpu * 1000 / max(1, got) * 1000,
                "flat": flat,
            }
            res["steps"].append(st)
            log(
                f"step {rate}/s: produced {st['produced_rate']:.0f}/s consumed {st['consumed_rate']:.0f}/s "
                f"backlog at end {backlog_end:.0f} lag max {st['lag_max']:.0f} flat={flat}"
            )
            # let any backlog drain before the next step
            dl = time.monotonic() + 60
            while consumed(scrape(mport)) < consumed(before) + produced and time.monotonic() < dl:
                time.sleep(0.2)
    finally:
        if monitor is not None:
            monitor.stop()
        kafka.close()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return res


# ---- (b) rule trigger -> enforcer blocks ---------------------------------------------------------------------------

POLICY = """
version: "bench.auto"
deadline_ms: 400
classifier: {models: [prompt_guard], fail_mode: open}
ratelimit: {domain: benchmon, fail_mode: open, descriptors: [{entries: [tenant]}]}
categories:
  jailbreak: {threshold: model, action: BLOCK}
"""
RATELIMIT = """
domain: benchmon
descriptors:
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 10000000}
"""
N_JAILBREAKS = 3
RULES = f"""
rules:
  - name: suspend-jailbreakers
    match: {{category: jailbreak, action: BLOCK}}
    threshold: {{count: {N_JAILBREAKS}, window_minutes: 10}}
    enforce: {{kind: SUSPEND_ACCOUNT, ttl_minutes: 30}}
    dry_run: false
"""


def trigger_to_block(args, workdir: Path) -> dict:
    import grpc
    from safeguards.v1 import safeguards_pb2 as pb
    from safeguards.v1 import safeguards_pb2_grpc

    from tests.e2e.meshes import JAILBREAK, backends
    from tests.support import ServiceProcess

    region = REGION + "-auto"
    tmp = workdir / "auto"
    (tmp / "policies").mkdir(parents=True)
    (tmp / "policies" / "default.yaml").write_text("tenant: default\n" + POLICY)
    (tmp / "rl").mkdir()
    (tmp / "rl" / "benchmon.yaml").write_text(RATELIMIT)
    (tmp / "rules").mkdir()
    (tmp / "rules" / "rules.yaml").write_text(RULES)
    key = tmp / "hmac.key"
    key.write_bytes(b"bench-monitor-auto-key-" + b"z" * 40)
    db = f"benchmon_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{db}"'))
    out: dict = {"rounds": []}
    try:
        with backends(tmp, tmp / "rl", topics_region=region) as b:
            enforcer = b.enforcer(
                [*b.enforcer_args(region=region, policies=tmp / "policies", key=key),
                 "--throttle-domain", "benchmon", "--actions-catchup-timeout-seconds", "20",
                 "--insecure-dev-action-key"]
            )  # fmt: skip
            monitor = ServiceProcess(
                "services.monitor",
                [
                    "--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--region", region,
                    "--kafka-bootstrap", b.kafka.bootstrap,
                    "--database-url", PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}",
                    "--spool-dir", str(tmp / "monitor-spool"), "--rules", str(tmp / "rules"),
                    "--max-automated-actions-per-tenant-per-hour", "1000", "--drain-grace-seconds", "2",
                    "--insecure-dev-action-key",
                ],
            ).start(timeout=60)  # fmt: skip
            b.procs.append(monitor)
            ch = grpc.insecure_channel(enforcer.address)
            stub = safeguards_pb2_grpc.SafeguardsServiceStub(ch)

            def screen(account: str, text: str):
                req = pb.ScreenPromptRequest(
                    context=pb.RequestContext(tenant="acme", account=account, model="claude", region=region),
                    messages=[pb.ChatMessage(role="user", content=text)],
                )
                return stub.ScreenPrompt(req, timeout=5).decision

            screen("warm-up", "What is the capital of France?")
            for i in range(args.rounds):
                account = "acct-" + uuid.uuid4().hex[:10]
                for _ in range(N_JAILBREAKS):
                    d = screen(account, JAILBREAK)
                    if d.action != pb.ACTION_BLOCK:
                        raise RuntimeError(f"the jailbreak was answered {pb.Action.Name(d.action)}")
                triggered = time.monotonic()
                polls = 0
                while True:
                    d = screen(account, "What is the capital of France?")
                    polls += 1
                    if [r.code for r in d.reasons] in (["enforcement.suspended"], ["enforcement.throttled"]):
                        blocked = time.monotonic()
                        break
                    if time.monotonic() - triggered > 30:
                        raise RuntimeError("the account was not blocked within 30 s")
                    time.sleep(0.01)
                out["rounds"].append(blocked - triggered)
                log(f"round {i + 1}: trigger -> block {blocked - triggered:.3f}s ({polls} polls)")
                time.sleep(0.2)
            ch.close()
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return out


# ---- report --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small backlog, short steps, 3 rounds (checks the harness)")
    p.add_argument("--backlog", type=int, default=0, help="backlog drained (default 50000, quick 5000)")
    p.add_argument("--step", type=float, default=0, help="seconds per ladder step (default 20, quick 5)")
    p.add_argument("--fractions", default="", help="ladder rates as fractions of the drain rate (default .25,.5,.75,1)")
    p.add_argument("--rounds", type=int, default=0, help="trigger -> block rounds (default 10, quick 3)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="longest wait for the backlog to drain")
    p.add_argument("--only", choices=["throughput", "trigger"], help="run one part only")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing bench/RESULTS.md")
    args = p.parse_args(argv)
    args.backlog = args.backlog or (5000 if args.quick else 50000)
    args.step = args.step or (5.0 if args.quick else 20.0)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.fractions = [float(f) for f in (args.fractions or ("0.5,1" if args.quick else "0.25,0.5,0.75,1")).split(",")]
    with harness.work_folder("bench-monitor-", log=log) as workdir:
        load_before = system.loadavg()
        busy = ", ".join(f"{n} {c:.0f}%" for n, c in system.busy_processes(set(), top=3))
        run = {"machine": system.machine(), "load_before": load_before, "busy_before": busy, "quick": args.quick}
        run["step"] = args.step
        run["n_jailbreaks"] = N_JAILBREAKS
        if args.only != "trigger":
            run["throughput"] = throughput(args, workdir)
        if args.only != "throughput":
            log("trigger -> block")
            run["trigger"] = trigger_to_block(args, workdir)
        run["load_after"] = system.loadavg()
        publish(render(run), SECTION, "monitor", no_write=args.no_write, path=RESULTS, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
