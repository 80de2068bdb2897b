"""The rate-limit service's report (bench.ratelimit's block in bench/RESULTS.md): its
load steps, the raw EVALSHA limit, and the tables rendered from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.grpc_load import METHOD
from bench.reports import num

TARGET_RPS = 10_000
TARGET_P99_MS = 5.0


@dataclass
class Step:
    kind: str  # sweep | rate | tenants | knob
    service: str
    workers: int
    event_loop: str
    inflight: int
    loadgen: str  # h2load | python
    python: str = ""  # the service's Python version
    gc_freeze: bool = False
    clients: int = 0
    streams: int = 0
    target_rps: int = 0
    tenants: int = 1
    duration_s: float = 0.0
    client_req_per_s: float = 0.0
    decisions_per_s: float = 0.0
    degraded: int = 0
    non_ok: int = 0
    cancelled: int = 0
    grpc_codes: dict[str, int] = field(default_factory=dict)
    client_failures: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    mean_batch: float = float("nan")
    redis_rtt_ms: float = float("nan")
    redis_errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    worker_cpu: list[int] = field(default_factory=list)  # per worker process, when there are several
    other_before: float = float("nan")  # % of a core used by other processes just before the step

    @property
    def cpu_service(self) -> str:
        total = f"{self.cpu.get('service')}%"
        return total + (f" ({'+'.join(map(str, self.worker_cpu))})" if len(self.worker_cpu) > 1 else "")

    @property
    def clean(self) -> bool:
        """Every answer was a real decision: no fail-open fallback, no gRPC error."""
        return self.degraded == 0 and self.non_ok == 0 and self.client_failures == 0

    @property
    def cpu_us(self) -> float:
        """Service CPU per decision (or per answer for the floor), microseconds."""
        if not self.decisions_per_s or "service" not in self.cpu:
            return float("nan")
        return self.cpu["service"] / 100 * 1e6 / self.decisions_per_s

    def default_settings(self, python: str) -> bool:
        """The service's default settings (uvloop, 4 pipelines in flight, no gc.freeze) under `python`."""
        return self.event_loop == "uvloop" and self.inflight == 4 and not self.gc_freeze and self.python == python

    @property
    def level(self) -> str:
        if self.loadgen == "python":
            return f"py x{self.clients}"
        return f"{self.clients}x{self.streams}"


@dataclass
class RawResult:
    pipeline: int
    keys: str
    clients: int
    requests: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    command: str


def cell(v: float, digits: int = 2) -> str:
    return num(v, digits, missing="–", grouping=False)


def best_clean(steps: list[Step]) -> Step | None:
    clean = [s for s in steps if s.clean and s.decisions_per_s > 0]
    return max(clean, key=lambda s: s.decisions_per_s) if clean else None


def render(run: dict) -> str:
    m = run["machine"]
    steps: list[Step] = run["steps"]
    raw: list[RawResult] = run["raw"]
    raw1 = next(r for r in raw if r.pipeline == 1 and r.keys == "1")
    raw16 = next(r for r in raw if r.pipeline == 16 and r.keys == "1")
    L = []
    L.append(
        f"Measured {m['date']} on `{m['nproc']}` cores ({m['cpu']}, {m['memory']} RAM, kernel {m['kernel']}), "
        f"Python {m['python']}, {run['versions']['redis']}, {run['versions']['h2load']}. "
        f"Load average before the run: {m['loadavg']}. Busiest other processes just before: "
        + (", ".join(f"{n} {p:.0f}%" for n, p in run["others"]) or "none")
        + ". Everything shares the same cores: the service (1 process, or 1 parent + N workers), "
        "redis-server (1 thread), the load generator (h2load, 1 thread; or the Python driver, 1 process), plus "
        "whatever else the box ran (column *other*). CPU columns are % of one core over the step "
        f"({int(m['nproc']) * 100}% = the whole box)."
    )
    L.append("")
    L.append(
        f"Each load step: {run['duration']:g} s. *decisions/s* counts only answers that were gRPC OK **and** decided "
        "in Redis (service metrics `ratelimit_within_limit` + `ratelimit_over_limit`); *degraded* counts fail-open "
        "answers the service gave without Redis (`ratelimit_degraded_decisions`, e.g. after a Redis timeout), which "
        "look like OK to any client and are excluded. *client req/s* is what h2load counted (HTTP 200). "
        "*non-OK*: gRPC codes other than OK in `grpc_server_handled_total`, not counting up to c×m CANCELLED "
        "(h2load resets the streams still in flight when its duration ends). "
        "Latencies are per request from h2load's `--log-file` (p50/p99 computed by the harness)."
    )
    L.append("")
    L.append(f"Sanity (Python gRPC client, same request): {run['sanity']}.")
    L.append("")

    # headline
    L.append("### Headline")
    L.append("")
    L.append(
        "| workers | max decisions/s (no degraded, no errors) | at c×m | p50 ms | p99 ms "
        "| p99 ms @1000/s | p99 ms @5000/s (achieved/s) | raw EVALSHA -P 1 | ratio | raw EVALSHA -P 16 | ratio "
        "| service CPU µs/decision | CPU other |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for w in run["workers"]:
        # Sweep steps, plus the knob row with the same (default) settings: same service, same load kind.
        ws = [
            s
            for s in steps
            if s.workers == w and (s.kind == "sweep" or (s.kind == "knob" and s.default_settings(m["python"])))
        ]
        b = best_clean(ws)
        rates = {s.target_rps: s for s in steps if s.kind == "rate" and s.workers == w}
        r1, r5 = rates.get(1000), rates.get(5000)
        if b is None:
            L.append(f"| {w} | none clean | | | | | | {raw1.ops_per_s:.0f} | | {raw16.ops_per_s:.0f} | | | |")
            continue
        L.append(
            f"| {w} | **{b.decisions_per_s:,.0f}** | {b.level} | {cell(b.p50_ms)} | {cell(b.p99_ms)} "
            f"| {cell(r1.p99_ms) if r1 else '–'} "
            f"| {(cell(r5.p99_ms) + f' ({r5.decisions_per_s:,.0f})') if r5 else '–'} "
            f"| {raw1.ops_per_s:,.0f} | {b.decisions_per_s / raw1.ops_per_s:.2f} "
            f"| {raw16.ops_per_s:,.0f} | {b.decisions_per_s / raw16.ops_per_s:.2f} "
            f"| {cell(b.cpu_us, 0)} | {b.cpu.get('other')}% |"
        )
        ok_steps = [s for s in ws + list(rates.values()) if s.clean and s.p99_ms < TARGET_P99_MS]
        best_ok = max(ok_steps, key=lambda s: s.decisions_per_s, default=None)
        met = best_ok is not None and best_ok.decisions_per_s >= TARGET_RPS
        verdicts.append(
            f"{w} worker(s): {'MET' if met else 'NOT MET'}"
            + (
                f" (most decisions/s with p99 < {TARGET_P99_MS:g} ms: {best_ok.decisions_per_s:,.0f} at "
                f"{best_ok.level}{' @' + str(best_ok.target_rps) + '/s' if best_ok.target_rps else ''}, "
                f"p99 {best_ok.p99_ms:.2f} ms)"
                if best_ok
                else f" (no step had p99 < {TARGET_P99_MS:g} ms)"
            )
        )
    L.append("")
    L.append(f"Target ≥{TARGET_RPS:,} decisions/s with p99 < {TARGET_P99_MS:g} ms: " + "; ".join(verdicts) + ".")
    L.append("")

    L.append("### Limit: raw Redis EVALSHA of the same gcra.lua (redis-benchmark, 50 clients)")
    L.append("")
    L.append("| pipeline (-P) | distinct keys | ops/s | p50 ms | p99 ms |")
    L.append("|---|---|---|---|---|")
    for r in raw:
        L.append(f"| {r.pipeline} | {r.keys} | {r.ops_per_s:,.0f} | {r.p50_ms} | {r.p99_ms} |")
    L.append("")
    L.append(
        "The service pipelines concurrent decisions into one round trip, so -P 16 is the ceiling it could "
        "approach and -P 1 what one EVALSHA per round trip gives. With 5000 keys each bucket has expired "
        "between hits (the bench limit leaves microseconds of debt, so the PEXPIRE is ~2 ms) and is re-created."
    )
    L.append("")

    L.append("### Concurrency sweep (h2load; c = connections, m = streams per connection)")
    L.append("")
    L.append(
        "| service | c×m | decisions/s | client req/s | degraded | non-OK | p50 ms | p99 ms | max ms "
        "| batch/round trip | Redis RTT ms | CPU service | service CPU µs/decision | CPU redis | CPU h2load "
        "| CPU other |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in (s for s in steps if s.kind == "sweep"):
        L.append(_row(s))
    L.append("")
    L.append("### Fixed rate (h2load --rps; 4 connections × 32 streams)")
    L.append("")
    L.append(
        "| service | target/s | decisions/s | degraded | non-OK | p50 ms | p99 ms | max ms "
        "| batch/round trip | CPU service | CPU redis | CPU h2load | CPU other |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in (s for s in steps if s.kind == "rate"):
        L.append(
            f"| {s.service} | {s.target_rps:,} | {s.decisions_per_s:,.0f} | {s.degraded} | {s.non_ok} "
            f"| {cell(s.p50_ms)} | {cell(s.p99_ms)} | {cell(s.max_ms)} | {cell(s.mean_batch, 1)} "
            f"| {s.cpu_service} | {s.cpu.get('redis')}% | {s.cpu.get('loadgen')}% | {s.cpu.get('other')}% |"
        )
    L.append("")
    tenant_steps = [s for s in steps if s.kind == "tenants"]
    if tenant_steps:
        L.append("### One tenant vs many (Python gRPC driver, bench.grpc_load)")
        L.append("")
        L.append(
            "h2load sends one body, so one tenant. The Python driver cycles through pre-serialized requests for "
            "N tenants (N GCRA buckets) and checks every answer's overall_code; it burns far more CPU per call "
            "than h2load on the same 2 cores, so compare its rows with each other only."
        )
        L.append("")
        L.append(
            "| service | tenants | in flight | decisions/s | client-checked failures | degraded | p50 ms | p99 ms "
            "| CPU service | CPU redis | CPU driver | CPU other |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in tenant_steps:
            L.append(
                f"| {s.service} | {s.tenants:,} | {s.clients} | {s.decisions_per_s:,.0f} | {s.client_failures} "
                f"| {s.degraded} | {cell(s.p50_ms)} | {cell(s.p99_ms)} | {s.cpu_service} "
                f"| {s.cpu.get('redis')}% | {s.cpu.get('loadgen')}% | {s.cpu.get('other')}% |"
            )
        L.append("")
    knob_steps = [s for s in steps if s.kind == "knob"]
    if knob_steps:
        L.append(f"### Knobs (h2load {run['knob_level']}, same load for every row)")
        L.append("")
        L.append(
            "| workers | python | event loop | --redis-pipeline-inflight | gc.freeze (bench hook) | decisions/s "
            "| degraded | p50 ms | p99 ms "
            "| batch/round trip | Redis RTT ms | CPU service | service CPU µs/decision | CPU redis | CPU other |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in knob_steps:
            L.append(
                f"| {s.workers} | {s.python} | {s.event_loop} | {s.inflight} | {'yes' if s.gc_freeze else 'no'} "
                f"| {s.decisions_per_s:,.0f} | {s.degraded} "
                f"| {cell(s.p50_ms)} | {cell(s.p99_ms)} | {cell(s.mean_batch, 1)} | {cell(s.redis_rtt_ms)} "
                f"| {s.cpu_service} | {cell(s.cpu_us, 0)} | {s.cpu.get('redis')}% | {s.cpu.get('other')}% |"
            )
        L.append("")
    floor_steps = [s for s in steps if s.kind == "floor"]
    if floor_steps:
        L.append("### Floor: bare grpc.aio server, constant OK answer (bench.grpc_floor; no Redis, no interceptor)")
        L.append("")
        L.append(
            "| server | c×m | answers/s | p50 ms | p99 ms | service decisions/s at the same c×m and processes "
            "| service / floor | CPU server | server CPU µs/answer | service CPU µs/decision | CPU h2load | CPU other |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in floor_steps:
            same = [
                s
                for s in steps
                if s.kind in ("sweep", "knob")
                and s.workers == f.workers
                and s.default_settings(m["python"])
                and (s.clients, s.streams) == (f.clients, f.streams)
            ]
            svc = same[-1] if same else None
            L.append(
                f"| {f.service} | {f.level} | {f.client_req_per_s:,.0f} | {cell(f.p50_ms)} | {cell(f.p99_ms)} "
                f"| {f'{svc.decisions_per_s:,.0f}' if svc else '–'} "
                f"| {f'{svc.decisions_per_s / f.client_req_per_s:.2f}' if svc and f.client_req_per_s else '–'} "
                f"| {f.cpu_service} | {cell(f.cpu_us, 0)} | {cell(svc.cpu_us, 0) if svc else '–'} "
                f"| {f.cpu.get('loadgen')}% | {f.cpu.get('other')}% |"
            )
        L.append("")
    if run.get("profile"):
        for label, p in run["profile"].items():
            if "error" in p:
                L.append(f"py-spy on {label}: failed ({p['error']})")
                continue
            L.append(
                f"### Where one worker's CPU goes (py-spy --native, {label}, {p.get('busy_samples')} busy of "
                f"{p['samples']} samples)"
            )
            L.append("")
            if p.get("threads"):
                L.append(
                    "Thread CPU over the profile (/proc, % of one core): "
                    + ", ".join(f"{k} {v}%" for k, v in p["threads"])
                    + ". Shares below are of busy samples (threads blocked in epoll/poll left out)."
                )
                L.append("")
            L.append("| share of samples | where (innermost frame) |")
            L.append("|---|---|")
            for name, pct in p["buckets"]:
                L.append(f"| {pct:.0f}% | {name} |")
            L.append("")
            L.append("Top self frames: " + "; ".join(f"`{k}` {v:.0f}%" for k, v in p["leaves"][:6]) + ".")
            L.append("")
    L.append("### Reproduce")
    L.append("")
    L.append("```sh")
    L.append("apt-get install -y nghttp2-client          # h2load (redis-benchmark ships with redis-server)")
    L.append(f"{run['command']}")
    L.append("# one step by hand (service from the harness's argv, body = 0x00 + be32 length + RateLimitRequest):")
    L.append(
        "h2load -c 4 -m 8 -D 5 -d body.bin -H 'content-type: application/grpc' -H 'te: trailers' "
        f"--log-file lat.log http://127.0.0.1:PORT{METHOD}"
    )
    L.append(
        "redis-benchmark -n 150000 -c 50 -P 1 EVALSHA <sha of gcra.lua> 1 'bench:rl:{raw}:g' "
        + " ".join(a or "''" for a in run["gcra_args"])
    )
    L.append("# with ghz (uses server reflection, no protos): see bench/ghz/ratelimit.json")
    L.append("ghz --config bench/ghz/ratelimit.json")
    L.append("```")
    L.append("")
    L.append(f"Harness wall time: {run['wall_s']:.0f} s.")
    return "\n".join(L)


def _row(s: Step) -> str:
    return (
        f"| {s.service} | {s.level} | {s.decisions_per_s:,.0f} | {s.client_req_per_s:,.0f} | {s.degraded} "
        f"| {s.non_ok} | {cell(s.p50_ms)} | {cell(s.p99_ms)} | {cell(s.max_ms)} | {cell(s.mean_batch, 1)} "
        f"| {cell(s.redis_rtt_ms)} | {s.cpu_service} | {cell(s.cpu_us, 0)} | {s.cpu.get('redis')}% "
        f"| {s.cpu.get('loadgen')}% | {s.cpu.get('other')}% |"
    )
