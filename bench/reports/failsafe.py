"""The fail-safe screening report (bench.failsafe's block in bench/RESULTS.md): per offered
rate, the verdict shares, attack recall against at rest, false blocks, latency, breaker
opens and retro jobs, held to issue 11's aims up to saturation."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from bench.harness import percentile
from bench.reports import num

NONE_AIM = 0.01  # share of decisions without any classifier verdict
RECALL_AIM_PTS = 5.0  # attack recall under load vs at rest, percentage points
BUDGET_MS = 50.0  # config/policies/default.yaml deadline_ms (checked at start)
SATURATION_P99_MS = 1000.0
SATURATION_BOX_CPU = 0.95  # share of all cores

# class -> (tenant, share of the offered rate); the two long classes share 10% and are bursty.
CLASSES = {
    "attack": ("bench-attack", 0.30),
    "benign": ("bench-benign", 0.60),
    "long": ("bench-long", 0.10),  # long benign documents and long-attack together
    "long-attack": ("bench-long-attack", 0.0),
}


@dataclass
class Step:
    label: str
    rate: float  # offered req/s; 0 = at rest (one at a time)
    duration_s: float
    records: list[list] = field(default_factory=list, repr=False)
    shed: int = 0
    elapsed_s: float = 0.0
    diff: dict[str, float] = field(default_factory=dict)
    codes: dict[str, float] = field(default_factory=dict)
    breakers: dict[str, tuple[int, float]] = field(default_factory=dict)
    log_errors: collections.Counter = field(default_factory=collections.Counter)
    retro_left: float = 0.0  # retro jobs still queued when the step was closed
    cpu: dict[str, float] = field(default_factory=dict)
    restarted: bool = False

    # -- from the answers --
    def of(self, *classes: str) -> list[list]:
        return [r for r in self.records if r[0] in classes] if classes else self.records

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r[5] != "OK")

    def share(self, classes: tuple[str, ...], col: int, value: str) -> float:
        rows = self.of(*classes)
        return sum(1 for r in rows if r[col] == value) / len(rows) if rows else float("nan")

    def lat(self, q: float, *classes: str) -> float:
        return percentile(sorted(r[4] for r in self.of(*classes) if r[5] == "OK"), q)

    @property
    def answered_per_s(self) -> float:
        return sum(1 for r in self.records if r[5] == "OK") / self.elapsed_s if self.elapsed_s else float("nan")

    @property
    def late_p99_ms(self) -> float:
        return percentile(sorted(r[3] for r in self.records), 99)

    # -- from the enforcer's counters --
    def blocked(self, cls: str) -> float:
        return self.diff.get(f"decisions:{CLASSES[cls][0]}:BLOCK", 0.0)

    def decided(self, cls: str) -> float:
        tenant = CLASSES[cls][0]
        return sum(v for k, v in self.diff.items() if k.startswith(f"decisions:{tenant}:"))

    def recall(self, cls: str = "attack") -> float:
        """Blocked (enforcer counter) / sent (driver)."""
        n = len(self.of(cls))
        return self.blocked(cls) / n if n else float("nan")

    @property
    def decisions(self) -> float:
        return sum(self.diff.get(f"verdict:{v}", 0.0) for v in ("full", "partial", "none"))

    def verdict_share(self, v: str) -> float:
        return self.diff.get(f"verdict:{v}", 0.0) / self.decisions if self.decisions else float("nan")

    def carried(self, cores: int) -> bool:
        """The mesh kept up: few failures, median within the budget, short prompts' p99
        under 1 s, the driver on schedule, and CPU left on the box."""
        bad = self.errors + self.shed
        return (
            self.sent > 0 and bad <= 0.01 * (self.sent + self.shed) and self.lat(50) <= BUDGET_MS
            and self.lat(99, "attack", "benign") <= SATURATION_P99_MS and self.late_p99_ms <= 50
            and self.box_cpu < SATURATION_BOX_CPU * 100 * cores
        )  # fmt: skip

    @property
    def box_cpu(self) -> float:
        """% of one core the whole box used (every group, the driver and the rest)."""
        return float(sum(self.cpu.values()))

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d | {"breakers": {k: list(v) for k, v in self.breakers.items()}, "log_errors": dict(self.log_errors)}

    @classmethod
    def from_json(cls, d: dict) -> Step:
        d = d | {"breakers": {k: tuple(v) for k, v in d["breakers"].items()}}
        return cls(**d | {"log_errors": collections.Counter(d["log_errors"])})


def false_blocks(st: Step) -> float:
    n = len(st.of("benign", "long"))
    return (st.blocked("benign") + st.blocked("long")) / n if n else float("nan")


def _pct(v: float, digits: int = 1) -> str:
    return "n/a" if v != v else f"{v * 100:.{digits}f}%"


def _ms(v: float) -> str:
    return num(v, 0)


def saturation(ladder: list[Step], cores: int) -> float | None:
    """The highest offered rate carried, every lower rate carried too."""
    best = None
    for st in sorted(ladder, key=lambda s: s.rate):
        if not st.carried(cores):
            break
        best = st.rate
    return best


def render(run: dict) -> str:
    rest: list[Step] = run["rest"]
    ladder: list[Step] = run["ladder"]
    m = run["machine"]
    cores = int(m["nproc"])
    sat = saturation(ladder, cores)
    # The reference is the pass before the ladder; the pass after it shows whether the mesh
    # came back (its retro-screening backlog, if any, competes with live requests).
    rest_recall = rest[0].recall() if rest else float("nan")
    counts = run["prompt_counts"]
    long_sizes = run["long_sizes"]
    lines = [
        f"Run: {m['date']}, {m['nproc']} cores ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, Python "
        f"{m['python']}. Load average before / after: {run['load_before']} / {m['loadavg']} (`uptime`; the box is "
        f"shared: busiest other processes at the start: {run['busy_before']}). Mode: "
        f"{'quick' if run['quick'] else 'full'}, {run['duration']:g} s per rate. Git: {run['git']}.",
        "",
        "**How measured.** The whole mesh as processes (bench/enforcer.py's `Mesh`: Tansu, rate limiter, "
        "classifier with build/models, enforcer with the shipped default policy: 50 ms budget, cascade "
        "classifier, partial verdicts decided on their scores with FLAG in the uncertain band). An open-loop "
        "asyncio gRPC driver in its own process (h2load sends one body per process and cannot burst) sends "
        f"ScreenPrompt: 30% short attacks ({counts['attack']} jailbreaks, injections and harmful requests "
        f"from tests/e2e/failsafe_prompts.py, tenant `bench-attack`), 60% short benign chat "
        f"({counts['benign']} prompts, `bench-benign`), 10% long prompts of {long_sizes[0]:,}–"
        f"{long_sizes[-1]:,} characters ({counts['long']} benign documents, `bench-long`, and "
        f"{counts['long-attack']} with a short attack hidden in the middle, `bench-long-attack`) arriving in "
        f"bursts: each {run['burst_period']:g} s, that period's long prompts within {run['burst_length']:g} s. "
        "Verdict shares are the deltas of `enforcer_verdicts_total`, recall and false blocks those of "
        '`enforcer_decisions_total{tenant,action="BLOCK"}` over what the driver sent (the driver reads every '
        "answer too; both agree unless noted). Retro counts are taken once the step's retro queue drained. "
        "Breaker opens from the enforcer's log. *At rest*: the same prompts one at a time, nothing else of "
        f"the mesh running (attacks ×{run['rest_repeat']}); measured before the ladder and again after it. "
        "*Saturation*: the highest offered rate still carried: ≤ 1% failed or shed, client p50 within the "
        f"{BUDGET_MS:g} ms budget, short prompts' p99 ≤ {SATURATION_P99_MS:,.0f} ms, the driver on schedule "
        f"(lateness p99 ≤ 50 ms) and the box's CPU under {SATURATION_BOX_CPU:.0%} of its {cores} cores (all "
        "processes, other sessions' included; answered req/s alone would not do, since failing open keeps up "
        "with any rate): " + (f"**{sat:g} req/s**." if sat is not None else "**none of the rates tried**."),
        "",
        f"Aims (issue 11), at every rate up to saturation: **none ≤ {NONE_AIM:.0%}** of decisions without any "
        f"classifier verdict (ratio to the limit in brackets); **attack recall within {RECALL_AIM_PTS:g} points "
        f"of at rest** ({_pct(rest_recall)}, the pass before the ladder; Δ in points, ratio "
        "to the allowance in brackets). Rates past "
        "saturation are shown in italics and not held to the aims.",
        "",
        "| offered req/s | answered req/s | decisions | full | partial | none (aim ≤ 1%) | attack recall "
        "(Δ vs rest, aim ≤ 5 pts) | hidden-attack recall (long) | benign false blocks | p50 / p99 ms "
        "(short) | p99 ms (long) | breaker opens (s open) | retro queued / dropped / caught / cleared | "
        "failed / shed | CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    misses: list[str] = []
    for st in [*rest[:1], *ladder, *rest[1:]]:
        if st.rate == 0:
            name = "at rest (before)" if st is rest[0] else "at rest (after)"
        else:
            name = f"{st.rate:g}"
        past = st.rate > 0 and (sat is None or st.rate > sat)
        none = st.verdict_share("none")
        rec = st.recall()
        delta = (rec - rest_recall) * 100
        none_s = f"{_pct(none, 2)} ({none / NONE_AIM:.2f}×)" if none == none else "n/a"
        rec_s = f"{_pct(rec)}" + (
            f" ({delta:+.1f} pts, {abs(min(0.0, delta)) / RECALL_AIM_PTS:.2f}×)"
            if st is not rest[0] and delta == delta
            else ""
        )
        if st.rate and not past:
            if none > NONE_AIM:
                misses.append(f"{name} req/s: {_pct(none, 2)} without a verdict")
            if delta < -RECALL_AIM_PTS:
                misses.append(f"{name} req/s: recall {delta:+.1f} pts")
        br = sum(n for n, _ in st.breakers.values())
        br_s = sum(s for _, s in st.breakers.values())
        br_txt = f"{br} ({br_s:.1f})" + (
            " [" + ", ".join(f"{d} {n}" for d, (n, _) in st.breakers.items() if n) + "]" if br else ""
        )
        d = st.diff
        retro = "/".join(f"{d.get(f'retro:{k}', 0):.0f}" for k in ("queued", "dropped", "caught", "cleared"))
        if st.retro_left:
            retro += f" ({st.retro_left:.0f} left)"
        cpu = "/".join(str(st.cpu.get(g, 0)) for g in ("enforcer", "classifier", "ratelimit", "loadgen", "other"))
        answered = f"{st.answered_per_s:,.1f}" if st.rate else "–"
        row = (
            f"| {name} | {answered} | {st.decisions:,.0f} | {_pct(st.verdict_share('full'))} | "
            f"{_pct(st.verdict_share('partial'))} | **{none_s}** | **{rec_s}** | {_pct(st.recall('long-attack'))} | "
            f"{_pct(false_blocks(st))} | {_ms(st.lat(50, 'attack', 'benign'))} / {_ms(st.lat(99, 'attack', 'benign'))}"
            f" | {_ms(st.lat(99, 'long', 'long-attack'))} | {br_txt} | {retro} | {st.errors} / {st.shed} | {cpu} |"
        )
        if past:
            row = "| " + " | ".join(f"*{c.strip()}*" if c.strip() else c for c in row.strip("|").split("|")) + " |"
        lines.append(row)
    in_scope = [s for s in ladder if sat is not None and s.rate <= sat]
    if sat is None:
        verdict = "**Aims not assessable: no rate tried was carried.**"
    elif misses:
        verdict = f"**Aims not met** up to saturation ({sat:g} req/s): " + "; ".join(misses) + "."
    else:
        verdict = f"**Both aims met** at every rate up to saturation ({', '.join(f'{s.rate:g}' for s in in_scope)})."
    lines += [
        "",
        verdict,
        "",
        "CPU: % of one core, enforcer/classifier/ratelimit/loadgen/other (other = the rest of the box, e.g. "
        "other sessions' jobs). Latency is the driver's, per answered call. A FLAG (uncertain band of a partial "
        "verdict) counts as not blocked. Retro *(N left)*: jobs still queued when the wait for the queue "
        f"({run['retro_drain']:g} s) ran out; their results count in the next row, and they compete with its "
        "live requests.",
        "",
        "Per class (from the answers): verdict full / partial / none, share blocked and flagged, latency.",
        "",
        "| offered req/s | class | sent | full / partial / none | BLOCK | FLAG | p50 / p99 ms | non-full reasons "
        "| answered by |",
        "|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for st in [*rest[:1], *ladder, *rest[1:]]:
        name = f"{st.rate:g}" if st.rate else ("rest (before)" if st is rest[0] else "rest (after)")
        for cls in CLASSES:
            rows = st.of(cls)
            if not rows:
                continue
            v = "/".join(_pct(st.share((cls,), 7, x), 0) for x in ("FULL", "PARTIAL", "NONE"))
            reasons = collections.Counter(r[8] or r[5] for r in rows if r[7] != "FULL")
            rs = ", ".join(f"{k or '?'} {n}" for k, n in reasons.most_common(3)) or "–"
            by = collections.Counter(r[9] for r in rows if r[9])
            bs = ", ".join(f"{k} {n}" for k, n in by.most_common(2)) or "–"
            lines.append(
                f"| {name} | {cls} | {len(rows)} | {v} | {_pct(st.share((cls,), 6, 'BLOCK'))} | "
                f"{_pct(st.share((cls,), 6, 'FLAG'))} | {_ms(st.lat(50, cls))} / {_ms(st.lat(99, cls))} | {rs} | {bs} |"
            )
    lat_ok = [s for s in ladder if s.sent]
    late = max((s.late_p99_ms for s in lat_ok), default=float("nan"))
    fails = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run["failures"].items()) if v) or "none"
    lines += [
        "",
        f"Driver schedule lateness p99, worst step: {_ms(late)} ms. Dependency failures the enforcer counted "
        f"over the whole run: {fails}.",
    ]
    if run["restarts"]:
        lines.append(f"**The classifier stopped answering and was restarted before: {', '.join(run['restarts'])}.**")
    if run["errors"]:
        top = "; ".join(f"{k} ×{v}" for k, v in run["errors"].most_common(4))
        lines.append(f"Enforcer log errors: {top}.")
    lines += [
        "",
        "Reproduce: `make bench-failsafe` (or `.venv/bin/python -m bench.failsafe [--quick] [--duration S] "
        f"[--rates ...] [--no-write]`; this run: `{run['command']}`).",
    ]
    return "\n".join(lines)
