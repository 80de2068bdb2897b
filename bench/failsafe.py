"""Fail-safe screening under an adversarial mix: does load turn the safeguard off?

    .venv/bin/python -m bench.failsafe [--quick] [--duration S] [--rates 10,25,50,100,200,300] [--no-write]

Issue 11's benchmark. The whole local mesh runs as real processes, started by
bench/enforcer.py's `Mesh` (Tansu, the rate limiter, the classifier with build/models,
the enforcer with the shipped default policy: 50 ms budget, cascade classifier,
partial-verdict rules). Every tenant below has no policy file of its own, so each gets
config/policies/default.yaml.

The mix, per offered rate R (req/s), each class under its own tenant so that the
enforcer's `enforcer_decisions_total{tenant,action}` deltas give per-class block rates:

* `bench-attack`  30% of R: the short attacks of tests/e2e/failsafe_prompts.py (harmful
  requests, jailbreaks, prompt injections; 28 prompts, cycled in a seeded order);
* `bench-benign`  60% of R: short benign chat (28 prompts from the same file);
* `bench-long`, `bench-long-attack`  10% of R together: documents of 4-16 KB
  (4,096-16,000 characters, 12 sizes); every third one has a short attack hidden in
  its middle (tenant `bench-long-attack`). They arrive in **bursts**: each
  `--burst-period` (2 s) the period's share of long prompts is sent within
  `--burst-length` (0.2 s), i.e. at 10x their average rate, 10% of the time.

Why not h2load (which bench.enforcer uses): h2load sends one fixed body per process and
cannot shape bursts, and recall needs many different attack prompts at a few req/s
each. So the load comes from a small asyncio gRPC driver, this module run again as a
separate process (`--drive SPEC`): open loop (every request is sent at its scheduled
time whether or not earlier ones were answered; in-flight capped at --max-inflight,
beyond which a request is counted as shed), one HTTP/2 channel per class, requests
serialized up front. It reads every answer (gRPC code, action, verdict, reason), so
per-class verdict shares and latencies come from the answers; its schedule lateness is
reported, so a driver that could not keep up shows. Its CPU is metered (`loadgen`).

Per step the harness scrapes the enforcer's counters before and after (after = once the
step's in-flight calls and its retro-screening queue have drained, so the retro
results belong to the step): `enforcer_decisions_total` per tenant and action,
`enforcer_verdicts_total` (full / partial / none, and the reason), `enforcer_retro_jobs_total`
(queued, dropped, caught, cleared, incomplete), `enforcer_dependency_failures_total`.
Circuit-breaker opens (and seconds open) come from the enforcer's own log lines
("circuit breaker open|half_open|closed", JSON with a timestamp), since the
`enforcer_breaker_open` gauge shows only the current state.

"At rest": the same attack prompts (and the benign and long ones) sent one at a time,
nothing else of the mesh's running, before the ladder and again after it.

Aims (issue 11): at every offered rate up to saturation, <= 1% of decisions without any
classifier verdict, and the attack recall within 5 points of at rest. Saturation is the
highest offered rate that the mesh still carried: <= 1% of requests failed or shed, client
p50 within the policy's 50 ms budget, the short prompts' p99 under 1 s, the driver on
schedule, and the box's CPU (every process on it) under 95% of its cores (answered req/s
alone would not do: a mesh that fails open keeps up with any rate). Results go to
bench/RESULTS.md between this harness's markers in the "## Fail-safe screening
(adversarial mix)" section.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import harness, system
from bench.enforcer import REGION, SCREEN, Mesh, scrape
from bench.harness import REPO, log
from bench.reports.failsafe import BUDGET_MS, CLASSES, Step, false_blocks, render
from bench.results import RESULTS, publish

SECTION = "## Fail-safe screening (adversarial mix)"
HARNESS = "failsafe"
CALL_TIMEOUT_S = 10.0
LAST_RUN = Path(tempfile.gettempdir()) / "bench-failsafe-last-run.json"
LONG_SIZES = 12  # documents, 4,096..16,000 characters; every third hides an attack


# ---- the prompts ---------------------------------------------------------------------------------------------------


def prompts(seed: int = 20261124) -> dict[str, list[str]]:
    """Every prompt of the mix by class; fixed by the seed, so runs compare."""
    from tests.e2e.failsafe_prompts import ATTACKS, BENIGN, HARMFUL, INJECTIONS, long_benign

    rng = random.Random(seed)
    hidden = [*HARMFUL, *INJECTIONS]
    rng.shuffle(hidden)
    out: dict[str, list[str]] = {"attack": list(ATTACKS), "benign": list(BENIGN), "long": [], "long-attack": []}
    for i in range(LONG_SIZES):
        size = 4096 + round(i * (16_000 - 4096) / (LONG_SIZES - 1))
        doc = long_benign(size, seed + i)
        if i % 3 == 2:
            attack = hidden[i % len(hidden)]
            cut = doc.rfind(". ", 0, size // 2)
            mid = cut + 2 if cut > 0 else size // 2
            doc = (doc[:mid] + attack + " " + doc[mid:])[:size]
            out["long-attack"].append(doc)
        else:
            out["long"].append(doc)
    return out


def prompt_facts() -> dict:
    """What the report says of the prompts: how many per class, the long ones' sizes."""
    texts = prompts()
    long_sizes = sorted(len(t) for t in texts["long"] + texts["long-attack"])
    return {"prompt_counts": {c: len(v) for c, v in texts.items()}, "long_sizes": [long_sizes[0], long_sizes[-1]]}


def schedule(rate: float, duration_s: float, burst_period_s: float, burst_len_s: float, seed: int) -> list:
    """[(t_s, class, prompt index)] for one open-loop step: short classes evenly spaced
    (interleaved by phase), the long classes in bursts."""
    counts = {c: len(v) for c, v in prompts().items()}
    rng = random.Random(seed)
    out: list[tuple[float, str, int]] = []

    def order(cls: str, n: int) -> list[int]:
        idx: list[int] = []
        while len(idx) < n:
            block = list(range(counts[cls]))
            rng.shuffle(block)
            idx += block
        return idx[:n]

    for phase, cls in enumerate(("attack", "benign")):
        r = rate * CLASSES[cls][1]
        n = round(r * duration_s)
        for k, i in enumerate(order(cls, n)):
            out.append(((k + (phase + 1) / 3) / r, cls, i))
    n_long = round(rate * CLASSES["long"][1] * duration_s)
    if n_long:
        periods = max(1, round(duration_s / burst_period_s))
        # long-attack documents are 1/3 of the long ones: interleave them in that ratio
        kinds = ["long" if k % 3 != 2 else "long-attack" for k in range(n_long)]
        idx = {c: iter(order(c, kinds.count(c))) for c in ("long", "long-attack")}
        per: dict[int, list[str]] = collections.defaultdict(list)
        for k, kind in enumerate(kinds):
            per[k * periods // n_long].append(kind)
        for p, members in per.items():
            start = p * burst_period_s + burst_period_s / 4
            for j, kind in enumerate(members):
                out.append((start + j * burst_len_s / len(members), kind, next(idx[kind])))
    out.sort()
    return out


def request_bytes(cls: str, i: int, text: str, label: str) -> bytes:
    from safeguards.v1 import safeguards_pb2 as pb

    tenant = CLASSES[cls][0]
    req = pb.ScreenPromptRequest(
        context=pb.RequestContext(
            tenant=tenant, account=f"{tenant}-account", model="claude", region=REGION,
            request_id=f"{label}:{cls}:{i}",
        ),
        messages=[pb.ChatMessage(role="user", content=text)],
    )  # fmt: skip
    return req.SerializeToString()


# ---- the driver (a separate process) -------------------------------------------------------------------------------


async def drive(spec: dict) -> dict:
    """Send the spec's schedule (open loop) or its sequence (one at a time); return every
    answer: [class, index, scheduled s, lateness ms, latency ms, code, action, verdict, reason, answered_by]."""
    import grpc
    from safeguards.v1 import classifier_pb2
    from safeguards.v1 import safeguards_pb2 as pb

    texts = prompts()
    label = spec["label"]
    bodies = {c: [request_bytes(c, i, t, label) for i, t in enumerate(v)] for c, v in texts.items()}
    channels = {c: grpc.aio.insecure_channel(spec["target"]) for c in texts}
    calls = {
        c: ch.unary_unary(SCREEN, request_serializer=None, response_deserializer=pb.ScreenPromptResponse.FromString)
        for c, ch in channels.items()
    }
    for ch in channels.values():
        await asyncio.wait_for(ch.channel_ready(), 10)
    verdict_name = classifier_pb2.VerdictCompleteness.Name
    action_name = pb.Action.Name
    records: list[list] = []
    loop = asyncio.get_running_loop()

    async def one(cls: str, i: int, t_sched: float, late_ms: float) -> None:
        t0 = time.perf_counter()
        try:
            resp = await calls[cls](bodies[cls][i], timeout=spec["timeout_s"])
        except grpc.aio.AioRpcError as exc:
            lat = (time.perf_counter() - t0) * 1000
            records.append([cls, i, t_sched, late_ms, lat, exc.code().name, "", "", "", ""])
            return
        lat = (time.perf_counter() - t0) * 1000
        d = resp.decision
        records.append([
            cls, i, t_sched, late_ms, lat, "OK", action_name(d.action).removeprefix("ACTION_"),
            verdict_name(d.verdict).removeprefix("VERDICT_COMPLETENESS_"), d.verdict_reason, d.answered_by,
        ])  # fmt: skip

    shed = 0
    start = time.perf_counter()
    if spec.get("sequence"):
        for cls, i in spec["sequence"]:
            await one(cls, i, time.perf_counter() - start, 0.0)
    else:
        pending: set[asyncio.Task] = set()
        t0 = loop.time() + 0.1
        start = time.perf_counter() + 0.1
        for t, cls, i in spec["schedule"]:
            delay = t0 + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= spec["max_inflight"]:
                shed += 1
                continue
            task = loop.create_task(one(cls, i, t, max(0.0, (loop.time() - t0 - t) * 1000)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=spec["timeout_s"] + 5)
    elapsed = time.perf_counter() - start
    for ch in channels.values():
        await ch.close()
    return {"records": records, "shed": shed, "elapsed_s": elapsed}


def drive_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["out"]).write_text(json.dumps(harness.run_async(drive(spec))))
    return 0


# ---- the enforcer's counters and log -------------------------------------------------------------------------------


def counters(port: int) -> dict[str, float]:
    """The fail-safe counters of the enforcer (bench.enforcer.scrape has the gRPC codes)."""
    out: dict[str, float] = collections.defaultdict(float)
    for s in harness.samples(port):
        lb = s.labels
        if s.name == "enforcer_decisions_total":
            out[f"decisions:{lb['tenant']}:{lb['action']}"] += s.value
        elif s.name == "enforcer_verdicts_total":
            out[f"verdict:{lb['verdict']}"] += s.value
            if lb["verdict"] != "full":
                out[f"reason:{lb['verdict']}:{lb['reason'] or '-'}"] += s.value
        elif s.name == "enforcer_retro_jobs_total":
            out[f"retro:{lb['result']}"] += s.value
        elif s.name == "enforcer_retro_queue_depth":
            out["retro_depth"] = s.value
        elif s.name == "enforcer_breaker_open":
            out[f"breaker:{lb['dependency']}"] = s.value
        elif s.name == "enforcer_dependency_failures_total":
            out[f"depfail:{lb['dependency']}/{lb['reason']}"] += s.value
    return dict(out)


def _ts(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


def read_log(path: Path, offset: int) -> tuple[list[dict], int]:
    """The enforcer's JSON log lines from byte `offset` on, and the new offset."""
    out = []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    for raw in data.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"level": "RAW", "msg": raw.decode(errors="replace")[:200]})
    return out, offset + len(data)


def breaker_events(lines: list[dict], t_end: float) -> dict[str, tuple[int, float]]:
    """{dependency: (opens, seconds open or half-open)} from 'circuit breaker <state>' lines."""
    opens: dict[str, int] = collections.Counter()
    open_s: dict[str, float] = collections.defaultdict(float)
    since: dict[str, float] = {}
    for ln in lines:
        msg = ln.get("msg", "")
        if not msg.startswith("circuit breaker ") or "ts" not in ln:
            continue
        dep, state, ts = ln.get("dependency", "?"), msg.rsplit(" ", 1)[1], _ts(ln["ts"])
        if state == "open":
            opens[dep] += 1
            since.setdefault(dep, ts)
        elif state == "closed" and dep in since:
            open_s[dep] += ts - since.pop(dep)
    for dep, ts in since.items():
        open_s[dep] += max(0.0, t_end - ts)
    return {d: (opens[d], open_s[d]) for d in set(opens) | set(open_s)}


# ---- one step ------------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, mesh: Mesh, workdir: Path) -> None:
        self.args = args
        self.mesh = mesh
        self.workdir = workdir
        self.steps: list[Step] = []
        self.restarts: list[str] = []
        self.log_offset = 0
        self.error_samples: collections.Counter = collections.Counter()
        self._n = 0

    def settle(self, timeout_s: float) -> float:
        """Wait until the retro queue is empty, the services are quiet and no breaker is
        open (bounded); returns the retro jobs still queued."""
        port = self.mesh.metrics_port
        pids = [*self.mesh.procs["enforcer"].pids, *self.mesh.procs["classifier"].pids]
        deadline = time.monotonic() + timeout_s
        c = counters(port)
        while time.monotonic() < deadline:
            c0 = sum(system.cpu_seconds(p) for p in pids)
            time.sleep(1.0)
            busy = (sum(system.cpu_seconds(p) for p in pids) - c0) * 100
            c = counters(port)
            breakers = sum(v for k, v in c.items() if k.startswith("breaker:"))
            if c.get("retro_depth", 0) == 0 and busy < 20 and not breakers:
                break
        return c.get("retro_depth", 0.0)

    def run(self, rate: float, *, sequence: list | None = None, duration_s: float = 0, name: str = "") -> Step:
        d = duration_s or self.args.duration
        label = f"{name or f'r{rate:g}'}-{self._n}"
        self._n += 1
        st = Step(label, rate, d)
        if self.mesh.revive_classifier():
            log(f"classifier stopped answering before {label}: restarted it")
            self.restarts.append(label)
            st.restarted = True
        spec = {
            "target": self.mesh.procs["enforcer"].address,
            "label": label,
            "timeout_s": CALL_TIMEOUT_S,
            "max_inflight": self.args.max_inflight,
            "out": str(self.workdir / f"{label}.json"),
        }
        if sequence is not None:
            spec["sequence"] = sequence
        else:
            spec["schedule"] = schedule(rate, d, self.args.burst_period, self.args.burst_length, seed=self._n)
        spec_path = self.workdir / f"{label}.spec.json"
        spec_path.write_text(json.dumps(spec))
        enf_log = self.mesh.procs["enforcer"].log_path
        _, self.log_offset = read_log(enf_log, self.log_offset)  # skip what came before
        before = counters(self.mesh.metrics_port)
        codes0 = scrape(self.mesh.metrics_port)
        # The driver is a waited-for child: the window counts its CPU as the load generator's.
        window = harness.Window(self.mesh.cpu_groups()).start()
        driver = subprocess.Popen([sys.executable, "-m", "bench.failsafe", "--drive", str(spec_path)], cwd=REPO)
        driver.wait(timeout=d + CALL_TIMEOUT_S + 120 if sequence is None else None)
        st.cpu = harness.mesh_cpu(window.stop())
        t_end = time.time()
        if driver.returncode != 0:
            raise RuntimeError(f"driver failed (rc={driver.returncode}) in {label}")
        result = json.loads(Path(spec["out"]).read_text())
        st.records, st.shed, st.elapsed_s = result["records"], result["shed"], result["elapsed_s"]
        st.retro_left = self.settle(self.args.retro_drain)
        after = counters(self.mesh.metrics_port)
        codes1 = scrape(self.mesh.metrics_port)
        st.diff = harness.delta(before, after)
        st.codes = harness.codes_of(harness.delta(codes0, codes1), "code:ScreenPrompt:")
        lines, self.log_offset = read_log(enf_log, self.log_offset)
        st.breakers = breaker_events(lines, t_end)
        for ln in lines:
            if ln.get("level") in ("ERROR", "CRITICAL", "RAW"):
                st.log_errors[ln.get("msg", "")[:80]] += 1
                self.error_samples[ln.get("msg", "")[:120]] += 1
        self.log_step(st)
        self.steps.append(st)
        return st

    def log_step(self, st: Step) -> None:
        br = ", ".join(f"{d} {n}x/{s:.1f}s" for d, (n, s) in st.breakers.items()) or "none"
        log(
            f"  {st.label:<14} sent {st.sent} shed {st.shed} err {st.errors} ans {st.answered_per_s:.1f}/s "
            f"p50 {st.lat(50):.0f} p99 {st.lat(99):.0f} ms late p99 {st.late_p99_ms:.0f} ms | "
            f"full {st.verdict_share('full'):.1%} partial {st.verdict_share('partial'):.1%} "
            f"none {st.verdict_share('none'):.1%} | recall {st.recall():.1%} hidden {st.recall('long-attack'):.1%} "
            f"fp {false_blocks(st):.1%} | breakers {br} | retro q{st.diff.get('retro:queued', 0):.0f} "
            f"d{st.diff.get('retro:dropped', 0):.0f} c{st.diff.get('retro:caught', 0):.0f} left {st.retro_left:.0f}"
            f" | codes {st.codes} | cpu {st.cpu} | log errors {sum(st.log_errors.values())}"
        )
        # Cross-check: the counters against the answers the driver read.
        for cls in ("attack", "long-attack"):
            ans = sum(1 for r in st.of(cls) if r[6] == "BLOCK")
            if ans != st.blocked(cls):
                log(f"    note: {cls} blocked per counter {st.blocked(cls):.0f}, per answers {ans}")


# ---- main ----------------------------------------------------------------------------------------------------------


def _git() -> str:
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "services"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "n/a"
    return head.stdout.strip()[:7] + (" (services/ has uncommitted changes)" if dirty.stdout.strip() else "")


def load_run(path: Path) -> dict:
    run = json.loads(path.read_text())
    if "prompt_counts" not in run:  # saved before the report was its own module
        run |= prompt_facts()
    return run | {
        "rest": [Step.from_json(s) for s in run["rest"]],
        "ladder": [Step.from_json(s) for s in run["ladder"]],
        "errors": collections.Counter(run["errors"]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--drive"]:
        return drive_main(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short steps, two rates (checks the harness works)")
    p.add_argument("--duration", type=float, default=0, help="seconds per offered rate (default 30, quick 6)")
    p.add_argument("--rates", default="", help="offered req/s ladder (default 10,25,50,100,200,300; quick 10,50)")
    p.add_argument("--burst-period", type=float, default=2.0, help="seconds between bursts of long prompts")
    p.add_argument("--burst-length", type=float, default=0.2, help="seconds each burst of long prompts lasts")
    p.add_argument("--rest-repeat", type=int, default=0, help="times each attack is sent at rest (default 3, quick 1)")
    p.add_argument("--max-inflight", type=int, default=1000, help="driver's cap on calls in flight (beyond: shed)")
    p.add_argument(
        "--retro-drain", type=float, default=0, help="max s to wait for the retro queue after a step (150, quick 20)"
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--keep", action="store_true", help="keep the work folder (processes' logs) after a good run")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing bench/RESULTS.md")
    p.add_argument("--from-run", type=Path, help="render a saved run (see the log) instead of measuring")
    args = p.parse_args(argv)
    if args.from_run:
        publish(render(load_run(args.from_run)), SECTION, HARNESS, no_write=args.no_write, path=RESULTS, log=log)
        return 0
    args.duration = args.duration or (6.0 if args.quick else 30.0)
    args.rest_repeat = args.rest_repeat or (1 if args.quick else 3)
    args.retro_drain = args.retro_drain or (20.0 if args.quick else 150.0)
    rates = [float(r) for r in (args.rates or ("10,50" if args.quick else "10,25,50,100,200,300")).split(",") if r]
    budget = yaml.safe_load((REPO / "config" / "policies" / "default.yaml").read_text()).get("deadline_ms")
    if budget != BUDGET_MS:
        log(f"note: the default policy's budget is {budget} ms, not {BUDGET_MS:g}: saturation still uses 50 ms")
    if not (REPO / "build" / "models" / "prompt_guard").exists():
        log("no classifier models in build/models: run `make setup` (or `make models`) first")
        return 2
    with harness.work_folder("bench-failsafe-", log=log, keep=args.keep) as workdir:
        load_before = system.loadavg()
        git = _git()  # the code the mesh runs: others may commit while it runs
        busy = ", ".join(f"{n} {c:.0f}%" for n, c in system.busy_processes({os.getpid()}, top=3)) or "none"
        mesh = Mesh(workdir, args.redis_url)
        try:
            mesh.start()
            runner = Runner(args, mesh, workdir)
            texts = prompts()
            everything = [(c, i) for c in CLASSES for i in range(len(texts[c]))]
            log("warm-up: every prompt once, then 10 req/s")
            runner.run(0, sequence=everything, name="warmup")
            runner.run(10, duration_s=3, name="warmup")
            runner.steps.clear()
            rest_seq = [("attack", i) for _ in range(args.rest_repeat) for i in range(len(texts["attack"]))]
            rest_seq += [(c, i) for c in ("benign", "long", "long-attack") for i in range(len(texts[c]))]
            log("at rest (before)")
            rest = [runner.run(0, sequence=rest_seq, name="rest")]
            ladder = []
            for r in rates:
                log(f"offered {r:g} req/s")
                ladder.append(runner.run(r))
            left = runner.settle(args.retro_drain)
            log(f"at rest (after){f': {left:.0f} retro jobs still queued' if left else ''}")
            rest.append(runner.run(0, sequence=rest_seq, name="rest"))
            failures = {
                k.split(":", 1)[1]: v for k, v in counters(mesh.metrics_port).items() if k.startswith("depfail:")
            }
            run = {
                "rest": rest,
                "ladder": ladder,
                "machine": system.machine(),
                "load_before": load_before,
                "busy_before": busy,
                "quick": args.quick,
                "duration": args.duration,
                "burst_period": args.burst_period,
                "burst_length": args.burst_length,
                "rest_repeat": args.rest_repeat,
                "retro_drain": args.retro_drain,
                "restarts": runner.restarts,
                "errors": runner.error_samples,
                "failures": failures,
                "git": git,
                "command": harness.command_line("bench.failsafe", argv),
                **prompt_facts(),
            }
            saved = {**run, "rest": [s.to_json() for s in rest], "ladder": [s.to_json() for s in ladder]}
            LAST_RUN.write_text(json.dumps(saved | {"errors": dict(runner.error_samples)}))
            log(f"run data saved to {LAST_RUN} (re-render with --from-run)")
            publish(render(run), SECTION, HARNESS, no_write=args.no_write, path=RESULTS, log=log)
        finally:
            mesh.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
