"""Automated enforcement rules: "an account with >= N BLOCK decisions in category C
within W minutes -> throttle (or suspend) it for T and open a review case".

A rule with `match.retro_catch: true` counts retro catches instead of decisions:
re-screens (SURFACE_RETRO_SCREEN) of decisions taken on a partial or missing
verdict whose full verdict called for a stricter action (`match.action`, BLOCK by
default) than the decision took, i.e. attacks that got through while the
classifier could not answer in time. "Suspend an account after N retro-confirmed
attacks in W minutes" is such a rule; `match.category` is then optional (empty:
any category). Decision rules never count retro catches and retro rules never
count decisions, so one attack is not counted twice.

Rules are YAML (a file or a directory of files), hot reloaded with
`ReloadingConfig`; the schema forbids unknown keys so a typo fails the load, and a
rejected file leaves the last good set live.

Evaluation runs inside the consumer's batch transaction (`Store.apply(after=...)`),
for the (tenant, account) pairs of the batch's *new* decisions only, so a replay
evaluates nothing. Counts come from `monitor_account_decisions` (keyed by decision
id, so a redelivered decision never counts twice). A rule fires once per (rule,
tenant, account) while an action it fired is live, and at most
`max_per_tenant_hour` live actions per tenant per hour (beyond: suppressed,
counted, logged), both checked under a per-tenant advisory lock so replicas agree.

A live firing is written to `monitor_rule_actions` (an outbox) in that same
transaction, with its review case; after the commit `flush()` produces the pending
actions to `safeguards.actions.<region>` (acks=all, waiting for the ack) and marks
them produced. Kafka down: the rows stay pending and the next batch or the periodic
flush retries them; the consumer's offsets can move on because the outbox is
durable. A dry-run firing is stored (mode 'dry_run', never produced), logged and
counted, and nothing else happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import asyncpg
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safeguards.v1 import enforcement_pb2

from services.actions.keys import action_key
from services.actions.sink import ActionSink
from services.common.errors import ConfigError
from services.common.pbtime import timestamp
from services.common.reloader import ReloadingConfig, yaml_files
from services.common.topics import actions_topic
from services.monitor.decisions import ACTIONS, Decision
from services.monitor.outbox import Outbox
from services.monitor.store import utc

log = logging.getLogger("safeguards.monitor.rules")

K = enforcement_pb2
ACTOR = "automation"
ACTION_CODES = {name: code for code, name in ACTIONS.items()}
KINDS = {
    "THROTTLE_ACCOUNT": K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT,
    "SUSPEND_ACCOUNT": K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT,
}
MAX_EVIDENCE = 100
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
#: The live actions not yet acknowledged by the actions topic.
OUTBOX = Outbox(
    what="automated action",
    table="monitor_rule_actions",
    id_column="action_id",
    done_column="produced_at",
    columns=("record_key", "record"),
    order_by="fired_at",
    where="mode = 'live'",
)


# ---- schema ---------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    category: str = Field(
        "", max_length=128, description="decision category, e.g. jailbreak, pii (retro_catch rules: optional, any)"
    )
    action: Literal["ALLOW", "FLAG", "REDACT", "THROTTLE", "BLOCK"] = "BLOCK"
    tenant: str = Field("", max_length=256, description="only this tenant's accounts (default: every tenant)")
    retro_catch: bool = Field(False, description="count retro catches (re-screens calling for `action`), not decisions")

    @model_validator(mode="after")
    def _category(self) -> Match:
        if not self.category and not self.retro_catch:
            raise ValueError("category is required (only retro_catch rules may match any category)")
        return self

    def accepts(self, d: Decision) -> bool:
        if d.retro_catch != self.retro_catch or ACTION_CODES[self.action] != d.action:
            return False
        if self.category and self.category not in d.categories:
            return False
        return not self.tenant or self.tenant == d.tenant


class Threshold(_Strict):
    count: int = Field(ge=1, le=100_000)
    window_minutes: float = Field(gt=0, le=24 * 60)


class Enforce(_Strict):
    kind: Literal["THROTTLE_ACCOUNT", "SUSPEND_ACCOUNT"]
    ttl_minutes: float = Field(gt=0, le=30 * 24 * 60)
    requests_per_minute: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _rpm(self) -> Enforce:
        if self.kind == "THROTTLE_ACCOUNT" and self.requests_per_minute is None:
            raise ValueError("THROTTLE_ACCOUNT needs requests_per_minute")
        if self.kind == "SUSPEND_ACCOUNT" and self.requests_per_minute is not None:
            raise ValueError("requests_per_minute only applies to THROTTLE_ACCOUNT")
        return self


class Rule(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    match: Match
    threshold: Threshold
    enforce: Enforce
    dry_run: bool = Field(description="true: log, count and store the would-be action; produce nothing")
    open_case: bool = True

    @property
    def mode(self) -> str:
        return "dry_run" if self.dry_run else "live"


class RuleFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for r in rules:
            if r.name in seen:
                raise ValueError(f"duplicate rule name {r.name!r}")
            seen.add(r.name)
        return rules


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]


def parse_rules(text: str, source: str) -> list[Rule]:
    """One file's rules; raises ConfigError naming the file and the bad field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not YAML: {exc}") from None
    if raw is None:
        return []
    try:
        return RuleFile.model_validate(raw).rules
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_rules(path: Path) -> RuleSet:
    rules: dict[str, tuple[Rule, str]] = {}
    for file in yaml_files(path):
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"{file.name}: cannot read: {exc}") from None
        for rule in parse_rules(text, file.name):
            if rule.name in rules:
                raise ConfigError(f"{file.name}: duplicate rule {rule.name!r} (also in {rules[rule.name][1]})")
            rules[rule.name] = (rule, file.name)
    return RuleSet(tuple(r for r, _ in rules.values()))


# ---- metrics --------------------------------------------------------------------------------
class RuleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.matches = Counter(
            "safeguards_monitor_rule_matches",
            "Automated rule firings by rule and mode (live: an action was queued; dry_run: only recorded).",
            ["rule", "mode"],
            registry=registry,
        )
        self.suppressed = Counter(
            "safeguards_monitor_rule_suppressed",
            "Rule firings suppressed because the tenant reached its hourly cap of automated actions.",
            ["rule"],
            registry=registry,
        )
        self.produced = Counter(
            "safeguards_monitor_rule_actions_produced",
            "Automated actions acknowledged by the actions topic.",
            registry=registry,
        )
        self.produce_errors = Counter(
            "safeguards_monitor_rule_produce_errors",
            "Attempts to produce pending automated actions that failed (retried).",
            registry=registry,
        )
        self.pending = Gauge(
            "safeguards_monitor_rule_actions_pending",
            "Automated actions stored but not yet acknowledged by Kafka.",
            registry=registry,
        )
        self.loads = Counter(
            "safeguards_monitor_rules_loads", "Rule file loads by result (ok, error).", ["result"], registry=registry
        )
        self.rules = Gauge("safeguards_monitor_rules", "Rules live, by mode.", ["mode"], registry=registry)


# ---- the engine -----------------------------------------------------------------------------
class RuleEngine:
    def __init__(
        self,
        *,
        region: str,
        rules: ReloadingConfig[RuleSet] | RuleSet | None,
        sink: ActionSink | None,
        metrics: RuleMetrics,
        max_per_tenant_hour: int,
        case_retention_s,
        flush_interval_s: float = 1.0,
        keep_s: float = 48 * 3600.0,
        clock=time.time,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self.region = region
        self._rules = rules
        self.sink = sink
        self.metrics = metrics
        self.max_per_tenant_hour = max_per_tenant_hour
        self.case_retention_s = case_retention_s  # data_policy -> seconds
        self.flush_interval_s = flush_interval_s
        self.keep_s = keep_s
        self._clock = clock
        #: The periodic flush and purge (`start`) use it; `flush(pool)` may be called without.
        self._pool = pool
        self._task: asyncio.Task | None = None
        self._flush_lock = asyncio.Lock()
        self._uncommitted: list[tuple[Rule, str, str, int]] = []
        self.topic = actions_topic(region)

    @property
    def rules(self) -> tuple[Rule, ...]:
        r = self._rules
        if isinstance(r, ReloadingConfig):
            r = r.current
        return r.rules if r is not None else ()

    # ---- evaluation (inside the batch transaction) ----
    async def after_apply(self, conn: asyncpg.Connection, new: Sequence[Decision]) -> None:
        """Record the new decisions (and retro catches) per account and fire the rules
        they complete. A retro follow-up that caught nothing is not recorded."""
        self._uncommitted = []
        with_account = [d for d in new if d.account_hmac and (not d.is_retro or d.retro_catch)]
        if not with_account:
            return
        await conn.executemany(
            "INSERT INTO monitor_account_decisions (decision_id, region, tenant, account_hmac, action, categories, "
            "decided_at, retro_catch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (decision_id) DO NOTHING",
            [
                (
                    d.decision_id, self.region, d.tenant, d.account_hmac, d.action, list(d.categories),
                    utc(d.time_s), d.retro_catch,
                )
                for d in with_account
            ],
        )  # fmt: skip
        rules = self.rules
        if not rules:
            return
        # (rule, tenant, account) -> the newest matching decision of this batch
        touched: dict[tuple[str, str], list[tuple[Rule, Decision]]] = {}
        for d in with_account:
            for rule in rules:
                if not rule.match.accepts(d):
                    continue
                touched.setdefault((d.tenant, d.account_hmac), []).append((rule, d))
        for tenant, account in sorted(touched):
            newest: dict[str, tuple[Rule, Decision]] = {}
            for rule, d in touched[(tenant, account)]:
                if rule.name not in newest or d.time_s > newest[rule.name][1].time_s:
                    newest[rule.name] = (rule, d)
            # One writer per tenant at a time: the live-action check and the cap hold across replicas.
            await conn.execute("SELECT pg_advisory_xact_lock(5406, hashtext($1))", tenant)
            for name in sorted(newest):
                rule, d = newest[name]
                await self._evaluate(conn, rule, d)

    async def _evaluate(self, conn: asyncpg.Connection, rule: Rule, d: Decision) -> None:
        now = self._clock()
        end = min(d.time_s, now)
        start = end - rule.threshold.window_minutes * 60
        rows = await conn.fetch(
            "SELECT decision_id FROM monitor_account_decisions WHERE region = $1 AND tenant = $2 "
            "AND account_hmac = $3 AND action = $4 AND ($5 = '' OR $5 = ANY(categories)) AND decided_at >= $6 "
            "AND decided_at <= $7 AND retro_catch = $9 ORDER BY decided_at DESC, decision_id LIMIT $8",
            self.region,
            d.tenant,
            d.account_hmac,
            ACTION_CODES[rule.match.action],
            rule.match.category,
            _dt(start),
            _dt(end + 0.001),
            max(rule.threshold.count, MAX_EVIDENCE),
            rule.match.retro_catch,
        )
        if len(rows) < rule.threshold.count:
            return
        live = await conn.fetchval(
            "SELECT true FROM monitor_rule_actions WHERE region = $1 AND rule = $2 AND tenant = $3 "
            "AND account_hmac = $4 AND mode = $5 AND expires_at > $6 LIMIT 1",
            self.region,
            rule.name,
            d.tenant,
            d.account_hmac,
            rule.mode,
            _dt(now),
        )
        if live:
            return
        fired = await conn.fetchval(
            "SELECT count(*) FROM monitor_rule_actions WHERE region = $1 AND tenant = $2 AND mode = $3 "
            "AND fired_at > $4",
            self.region,
            d.tenant,
            rule.mode,
            _dt(now - 3600),
        )
        if fired >= self.max_per_tenant_hour:
            self.metrics.suppressed.labels(rule.name).inc()
            log.warning(
                "rule suppressed: tenant reached its hourly cap of automated actions",
                extra={"rule": rule.name, "tenant": d.tenant, "mode": rule.mode, "cap": self.max_per_tenant_hour},
            )
            return
        evidence = [r["decision_id"] for r in rows][:MAX_EVIDENCE]
        action = self._action(rule, d, now, len(rows), evidence)
        key = action_key(action.kind, action.target)
        await conn.execute(
            "INSERT INTO monitor_rule_actions (action_id, region, rule, mode, tenant, account_hmac, kind, evidence, "
            "record, record_key, fired_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            action.action_id,
            self.region,
            rule.name,
            rule.mode,
            d.tenant,
            d.account_hmac,
            action.kind,
            evidence,
            action.SerializeToString(),
            key,
            _dt(now),
            _dt(action.expires_at.ToNanoseconds() / 1e9),
        )
        if not rule.dry_run and rule.open_case:
            await self._open_case(conn, rule, d, action, len(rows), now)
        self._uncommitted.append((rule, d.tenant, action.action_id, len(rows)))

    def rolled_back(self) -> None:
        """The batch transaction failed: its firings never happened."""
        self._uncommitted = []

    def committed(self) -> None:
        """The batch transaction committed: count and log its firings (a rolled-back
        batch is evaluated again on its retry and must not count twice)."""
        fired, self._uncommitted = self._uncommitted, []
        for rule, tenant, action_id, n in fired:
            self.metrics.matches.labels(rule.name, rule.mode).inc()
            log.info(
                "rule fired" if not rule.dry_run else "rule matched (dry run: nothing produced)",
                extra={
                    "rule": rule.name,
                    "mode": rule.mode,
                    "tenant": tenant,
                    "action_id": action_id,
                    "kind": rule.enforce.kind,
                    "decisions": n,
                },
            )

    def _action(self, rule: Rule, d: Decision, now: float, n: int, evidence: list[str]) -> K.EnforcementAction:
        e = rule.enforce
        m = rule.match
        what = (
            f"{n} retro-confirmed {m.action} catches (re-screens of partial or missing verdicts)"
            if m.retro_catch
            else f"{n} {m.action} decisions"
        )
        action = K.EnforcementAction(
            action_id=uuid.uuid4().hex,
            kind=KINDS[e.kind],
            target=K.EnforcementTarget(tenant=d.tenant, account_hmac=d.account_hmac),
            actor=ACTOR,
            reason=(
                f"rule {rule.name}: {what} in category {m.category or 'any'} "
                f"within {rule.threshold.window_minutes:g} min (threshold {rule.threshold.count})"
            ),
            issued_at=timestamp(now),
            expires_at=timestamp(now + e.ttl_minutes * 60),
            evidence=evidence,
            region=self.region,
        )
        if e.requests_per_minute is not None:
            action.requests_per_minute = e.requests_per_minute
        return action

    async def _open_case(
        self, conn: asyncpg.Connection, rule: Rule, d: Decision, action: K.EnforcementAction, n: int, now: float
    ) -> None:
        await conn.execute(
            "INSERT INTO monitor_cases (case_id, region, tenant, account_hmac, model, action, categories, reasons, "
            "scores, data_policy, snippet, characters, messages, text_hmac, request_id, policy_version, surface, "
            "status, decided_at, expires_at) VALUES ($1, $2, $3, $4, '', $5, $6, $7::jsonb, '[]'::jsonb, $8, '', 0, "
            "0, '', '', '', 0, 1, $9::timestamptz, $9::timestamptz + make_interval(secs => $10)) "
            "ON CONFLICT (case_id) DO NOTHING",
            f"rule-{action.action_id}",
            self.region,
            d.tenant,
            d.account_hmac,
            ACTION_CODES[rule.match.action],
            [rule.match.category] if rule.match.category else list(d.categories),
            json.dumps(
                [
                    [
                        f"automation.{rule.name}",
                        f"{rule.enforce.kind} action {action.action_id}; "
                        f"{n} {'retro catches' if rule.match.retro_catch else 'decisions'}",
                    ]
                ]
            ),
            d.data_policy,
            _dt(now),
            float(self.case_retention_s(d.data_policy)),
        )

    # ---- the outbox ----
    async def flush(self, pool: asyncpg.Pool) -> int:
        """Produce the pending live actions (acks=all) and mark them produced; returns
        how many were produced. Kafka failures leave them pending for the next try."""
        if self.sink is None:
            return 0

        async def send(r: asyncpg.Record) -> None:
            await self.sink.send(self.topic, r["record_key"].encode(), bytes(r["record"]))
            log.info("automated action produced", extra={"action_id": r["action_id"]})

        async with self._flush_lock:
            done = await OUTBOX.flush(pool, self.region, send, channel="kafka")
            self.metrics.produced.inc(done.sent)
            self.metrics.produce_errors.inc(done.failed)
            self.metrics.pending.set(await OUTBOX.pending(pool, self.region))
            return done.sent

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="rule-outbox")

    async def _flush_loop(self) -> None:
        assert self._pool is not None, "RuleEngine(pool=...) first"
        last_purge = 0.0
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush(self._pool)
                if self._clock() - last_purge > 60:
                    last_purge = self._clock()
                    async with self._pool.acquire() as conn:
                        deleted = await purge(conn, self.region, _dt(last_purge - self.keep_s))
                    if any(deleted.values()):
                        log.info("rule state purged", extra=deleted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the flusher die (PostgreSQL away: next round)
                log.warning("outbox flush failed", extra={"error": type(exc).__name__})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.sink is not None:
            await self.sink.close()


def _dt(seconds: float) -> datetime:
    return utc(seconds)


async def purge(conn: asyncpg.Connection, region: str, before: datetime) -> dict[str, int]:
    """Delete per-account decisions older than `before` and actions expired before it."""
    a = await conn.execute(
        "DELETE FROM monitor_account_decisions WHERE region = $1 AND decided_at < $2", region, before
    )
    b = await conn.execute(
        "DELETE FROM monitor_rule_actions WHERE region = $1 AND expires_at < $2 "
        "AND (produced_at IS NOT NULL OR mode <> 'live')",
        region,
        before,
    )
    return {"account_decisions": int(a.rsplit(" ", 1)[-1]), "rule_actions": int(b.rsplit(" ", 1)[-1])}


def rules_config(path: str, metrics: RuleMetrics, poll_seconds: float) -> ReloadingConfig[RuleSet]:
    def on_load(result: str, value: RuleSet | None) -> None:
        metrics.loads.labels(result).inc()
        if value is not None:
            for mode in ("live", "dry_run"):
                metrics.rules.labels(mode).set(sum(1 for r in value.rules if r.mode == mode))

    return ReloadingConfig(
        Path(path),
        load_rules,
        poll_seconds=poll_seconds,
        on_load=on_load,
        describe=lambda v: {"rules": len(v.rules), "live": sum(1 for r in v.rules if not r.dry_run)},
    )
