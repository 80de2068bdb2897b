"""What a signed-in operator may see and do in this region: the operators' console's
domain, free of HTTP (the web layer in `services.monitor.console` only renders it).

- Reads: the overview (per minute: decisions, blocks, verdict completeness, retro
  catches, latency; top tenants and accounts), review cases, stored decisions (how
  they were decided, their retro-screen result), an account's cases / decisions /
  actions in force / action history, the actions in force, blocks and block rates
  per minute, alerts, the audit log. The overview and decision reads are audited.
- Writes: a case's review verdict; issuing and revoking enforcement actions, automated
  ones included ("reverse"). Actions go through the shared admin domain
  (`services.actions.admin.ActionAdmin`, the enforcer's admin API's too): the same validation, the same
  acks=all produce to `safeguards.actions.<region>` (an unreachable Kafka answers
  Unavailable and nothing changes) and the same SURFACE_ADMIN audit signal.
- Every write, allowed or refused, is also kept in the in-region `monitor_audit`
  table (who, role, what, target, why), which the console shows.

Authorisation is per call, by the one role matrix every operator front door shares
(`services.actions.authz`): the operator's region scope must include this region
(a reviewer of `us` reads nothing of `eu`), and the role must be allowed the
operation: viewer reads; reviewer also reviews cases and suspends / unsuspends /
throttles accounts; admin also kill switches and force-blocks categories.

The audit log (`monitor_audit`) is the one place every operator call of this region
lands: the console's and MonitorService's here, the enforcers' admin API calls from
their SURFACE_ADMIN signals (`store_audit_signals`, called by the signal consumer).

Action history comes from the actions topic itself: the monitor's replica of the
enforcement state (`services.actions.consumer`) reports every record it applies, and
`ActionHistory` appends them to `monitor_action_history`, idempotent by partition,
offset and record digest, so re-reading the topic at each start adds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from safeguards.v1 import enforcement_pb2, safeguards_pb2, signals_pb2

from services.actions.admin import MAX_REASON, ActionAdmin, IssueRequest, RevokeResult
from services.actions.authz import Operation, Operator, action_operation, authorize
from services.actions.consumer import ObservedRecord
from services.actions.keys import parse_key
from services.actions.projection import ActionTable
from services.common.errors import InvalidArgument, NotFound
from services.common.privacy import RegionalKey, is_pseudonym
from services.monitor.alerts import AlertRow
from services.monitor.decisions import MAX_ID_CHARS, clean
from services.monitor.overview import MinuteTotals
from services.monitor.store import (
    CASE_ACTIONED,
    CASE_DISMISSED,
    CaseFilter,
    CaseRow,
    DecisionRow,
    Store,
    TopRow,
    minute_of,
)

log = logging.getLogger("safeguards.monitor.operations")

K = enforcement_pb2
KINDS = {
    "SUSPEND_ACCOUNT": K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT,
    "THROTTLE_ACCOUNT": K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT,
    "FORCE_BLOCK_CATEGORY": K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY,
    "KILL_SWITCH": K.ENFORCEMENT_KIND_KILL_SWITCH,
}
KIND_LABELS = {v: k for k, v in KINDS.items()}
VERDICTS = {"approve": CASE_ACTIONED, "dismiss": CASE_DISMISSED}
AUTOMATION = "automation"
MAX_LIST = 500
#: The actor prefix of actions and audit signals the console produces.
CONSOLE_ACTOR = "console:"
#: Rows in each of the overview's top tables, and retro catches listed.
TOP_N = 10


@dataclass(frozen=True)
class ActionView:
    action_id: str
    kind: str
    tenant: str
    account_hmac: str
    model: str
    category: str
    actor: str
    reason: str
    issued_at: datetime | None
    expires_at: datetime | None
    requests_per_minute: int
    evidence: tuple[str, ...]
    automated: bool

    @classmethod
    def of(cls, a: enforcement_pb2.EnforcementAction) -> ActionView:
        return cls(
            action_id=a.action_id,
            kind=KIND_LABELS.get(a.kind, str(a.kind)),
            tenant=a.target.tenant,
            account_hmac=a.target.account_hmac,
            model=a.target.model,
            category=a.target.category,
            actor=a.actor,
            reason=a.reason,
            issued_at=a.issued_at.ToDatetime(tzinfo=UTC) if a.HasField("issued_at") else None,
            expires_at=a.expires_at.ToDatetime(tzinfo=UTC) if a.HasField("expires_at") else None,
            requests_per_minute=a.requests_per_minute,
            evidence=tuple(a.evidence),
            automated=a.actor == AUTOMATION,
        )


@dataclass(frozen=True)
class HistoryRow:
    at: datetime
    event: str  # "issued" | "revoked"
    action: ActionView
    #: Who did it and why: the issuer's for "issued", the revoke's own for "revoked"
    #: (empty when the tombstone did not say).
    actor: str = ""
    reason: str = ""

    @classmethod
    def of(cls, r: asyncpg.Record) -> HistoryRow:
        action = ActionView.of(_history_action(r))
        if r["event"] == "revoked":
            return cls(r["at"], r["event"], action, r["revoked_by"] or "", r["revoke_reason"] or "")
        return cls(r["at"], r["event"], action, action.actor, action.reason)


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    operator: str
    role: str
    what: str
    target: str
    reason: str
    ok: bool


@dataclass(frozen=True)
class CaseView:
    case: CaseRow
    account_cases: list[CaseRow]
    live: list[ActionView]
    audit: list[AuditRow]
    #: How the case's decision was taken and its retro-screen result (None: a rule's
    #: case, or a decision stored before the monitor kept decisions).
    decision: DecisionRow | None = None


@dataclass(frozen=True)
class AccountView:
    tenant: str
    account_hmac: str
    cases: list[CaseRow]
    live: list[ActionView]
    history: list[HistoryRow]
    #: Stored decisions (cases, partial or missing verdicts), newest first.
    decisions: list[DecisionRow] = field(default_factory=list)


@dataclass(frozen=True)
class DecisionView:
    decision: DecisionRow
    #: The review case of this decision, when it has one.
    case: CaseRow | None


@dataclass(frozen=True)
class OverviewView:
    """The last `minutes` minutes, every one of them (zeros where nothing happened)."""

    since: datetime
    minutes: list[tuple[datetime, MinuteTotals]]
    totals: MinuteTotals
    top_tenants_by_blocks: list[TopRow]
    top_tenants_by_retro: list[TopRow]
    top_accounts_by_blocks: list[TopRow]
    top_accounts_by_retro: list[TopRow]
    recent_retro_catches: list[DecisionRow]


@dataclass(frozen=True)
class SeriesPoint:
    minute: datetime
    key: str
    blocked: int
    total: int


class ActionHistory:
    """Appends the records the enforcement state applies to `monitor_action_history`
    (the state's observer is synchronous; a task writes what it queued)."""

    def __init__(self, pool: asyncpg.Pool, region: str, flush_interval_s: float = 0.5) -> None:
        self.pool = pool
        self.region = region
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple] = []
        #: The last action seen per key: what a tombstone revoked.
        self._last: dict[str, enforcement_pb2.EnforcementAction] = {}
        self._task: asyncio.Task | None = None

    def observe(self, rec: ObservedRecord) -> None:
        issued = rec.action is not None
        if issued:
            self._last[rec.key] = rec.action
            action = rec.action
        else:
            action = self._last.pop(rec.key, None)
        record = action.SerializeToString() if action is not None else None
        if action is not None:
            kind, target, action_id = action.kind, action.target, action.action_id
        else:
            parsed = parse_key(rec.key)
            if parsed is None:
                return
            (kind, target), action_id = parsed, ""
        digest = hashlib.sha256(rec.key.encode() + b"\0" + (record if issued else b""))
        self._pending.append(
            (
                self.region,
                rec.partition,
                rec.offset,
                digest.hexdigest()[:32],
                datetime.fromtimestamp(rec.timestamp_ms / 1000, UTC),
                "issued" if issued else "revoked",
                action_id,
                kind,
                target.tenant,
                target.account_hmac,
                target.model,
                target.category,
                record,
                rec.revocation.actor if rec.revocation else None,
                rec.revocation.reason if rec.revocation else None,
            )
        )

    async def flush(self) -> int:
        rows, self._pending = self._pending, []
        if not rows:
            return 0
        try:
            await self.pool.executemany(
                "INSERT INTO monitor_action_history (region, partition, record_offset, digest, at, event, action_id, "
                "kind, tenant, account_hmac, model, category, record, revoked_by, revoke_reason) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT DO NOTHING",
                rows,
            )
        except (OSError, asyncpg.PostgresError):
            self._pending[:0] = rows  # keep them for the next try
            raise
        return len(rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("action history not written; retrying", extra={"error": type(exc).__name__})

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="action-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.flush()
        except (OSError, asyncpg.PostgresError):
            pass


#: How audit rows of the enforcers' admin API are named in `monitor_audit.what`.
API_PREFIX = "api."


async def store_audit_signals(pool: asyncpg.Pool, region: str, signals: Sequence[signals_pb2.SafeguardSignal]) -> int:
    """Keep the SURFACE_ADMIN signals of other front doors (the enforcers' admin API)
    in `monitor_audit`, once each (their ids join the processed-ids table, so a
    redelivery adds nothing). The console's own (`console:` actors) are skipped: it
    wrote its row when it acted. Returns the rows added."""
    rows: dict[str, tuple] = {}
    for sig in signals:
        a = sig.audit
        if a.actor.startswith(CONSOLE_ACTOR) or not sig.decision_id or len(sig.decision_id) > MAX_ID_CHARS:
            continue
        at = sig.time.ToDatetime(tzinfo=UTC) if sig.HasField("time") else datetime.now(UTC)
        rows[sig.decision_id] = (
            region,
            at,
            clean(a.actor, 256) or "(no valid token)",
            clean(a.role, 32),
            clean(API_PREFIX + a.method, 64),
            clean(a.action_id or a.case_id or sig.tenant, 256),
            clean(a.reason, MAX_REASON),
            a.allowed,
        )
    if not rows:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        new = await conn.fetch(
            "INSERT INTO monitor_processed (decision_id) SELECT unnest($1::text[]) "
            "ON CONFLICT DO NOTHING RETURNING decision_id",
            list(rows),
        )
        await conn.executemany(
            "INSERT INTO monitor_audit (region, at, operator, role, what, target, reason, ok) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [rows[r["decision_id"]] for r in new],
        )
    return len(new)


class StoredCatalog:
    """The monitor's `Catalog` (services.actions.admin): what an action issued from the
    console may name, from this region's stored data, each cached for `ttl_s`:
    categories the classifier scored in stored cases (a case's scores name every
    category its policy evaluated), and the tenants and models of the decisions in the
    aggregate buckets (kept for the buckets' retention). The monitor has no classifier
    connection: a label never scored in a case here is not offered (issue it through an
    enforcer's admin API)."""

    QUERIES = {
        "categories": "SELECT DISTINCT s->>0 AS name FROM (SELECT scores FROM monitor_cases WHERE region = $1 "
        "ORDER BY decided_at DESC LIMIT 5000) r, jsonb_array_elements(r.scores) s",
        "tenants": "SELECT DISTINCT tenant AS name FROM monitor_buckets WHERE region = $1",
        "models": "SELECT DISTINCT model AS name FROM monitor_buckets WHERE region = $1",
    }

    def __init__(self, pool: asyncpg.Pool, region: str, ttl_s: float = 60.0) -> None:
        self.pool = pool
        self.region = region
        self.ttl_s = ttl_s
        self._cached: dict[str, tuple[float, frozenset[str]]] = {}

    async def _names(self, what: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._cached.get(what)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        rows = await self.pool.fetch(self.QUERIES[what], self.region)
        found = frozenset(r["name"] for r in rows if r["name"])
        if found:  # nothing known yet (a new region) is asked again next time
            self._cached[what] = (now, found)
        return found

    async def categories(self) -> frozenset[str]:
        return await self._names("categories")

    async def tenants(self) -> frozenset[str]:
        return await self._names("tenants")

    async def models(self) -> frozenset[str]:
        return await self._names("models")


class Operations:
    def __init__(
        self,
        *,
        store: Store,
        state: ActionTable,
        admin: ActionAdmin,
        key: RegionalKey | None,
        alerts: Callable[..., Awaitable[list[AlertRow]]] | None = None,
    ) -> None:
        self.store = store
        self.region = store.region
        self.state = state
        self.admin = admin
        self.key = key
        #: `async (pool, region, *, limit) -> list[AlertRow]` (services.monitor.alerts.list_alerts)
        self._alerts = alerts

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    # ---- authorisation -------------------------------------------------------------------
    def _check(self, op: Operator, operation: Operation = Operation.READ) -> None:
        authorize(op, operation, self.region)

    @staticmethod
    def _caller(op: Operator) -> Operator:
        """The operator as the admin domain names it: `console:<name>` (the consumer
        does not store these SURFACE_ADMIN signals again: the console wrote its row)."""
        return Operator(f"{CONSOLE_ACTOR}{op.name}", op.role, op.regions)

    # ---- audit ---------------------------------------------------------------------------
    async def record(
        self, op: Operator | str, role: str, what: str, target: str = "", reason: str = "", ok: bool = True
    ) -> None:
        """Keep one audit row (the web layer's own events too: sign-in, sign-out)."""
        name = op.name if isinstance(op, Operator) else op
        await self.pool.execute(
            "INSERT INTO monitor_audit (region, operator, role, what, target, reason, ok) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.region,
            name[:256],
            role[:32],
            what[:64],
            target[:256],
            reason[:MAX_REASON],
            ok,
        )
        log.info("operator action", extra={"operator": name, "what": what, "target": target[:80], "ok": ok})

    async def _audited(self, op: Operator, what: str, target: str, reason: str, run):
        ok = False
        try:
            result = await run()
            ok = True
            return result
        finally:
            await self.record(op, op.role.value, what, target, reason, ok)

    async def audit_log(self, op: Operator, limit: int = 100, target: str = "") -> list[AuditRow]:
        self._check(op)
        rows = await self.pool.fetch(
            "SELECT at, operator, role, what, target, reason, ok FROM monitor_audit WHERE region = $1 "
            "AND ($2 = '' OR target = $2) ORDER BY at DESC, id DESC LIMIT $3",
            self.region,
            target,
            _limit(limit),
        )
        return [AuditRow(**dict(r)) for r in rows]

    # ---- cases -----------------------------------------------------------------------------
    async def list_cases(
        self, op: Operator, f: CaseFilter, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[CaseRow], str]:
        self._check(op)
        try:
            return await self.store.list_cases(f, _limit(page_size), page_token)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument("page_token is not one this console issued") from exc

    async def case(self, op: Operator, case_id: str) -> CaseView:
        self._check(op)
        case = await self.store.get_case(case_id)
        others: list[CaseRow] = []
        live: list[ActionView] = []
        if case.account_hmac:
            others = [
                c for c in await self.store.account_cases(case.tenant, case.account_hmac, 21) if c.case_id != case_id
            ][:20]
            live = self._live_for(case.tenant, case.account_hmac)
        decision = await self.store.find_decision(case_id)
        return CaseView(case, others, live, await self.audit_log(op, 50, target=case_id), decision)

    async def decision(self, op: Operator, decision_id: str) -> DecisionView:
        """A stored decision: which stage answered, the verdict and why it was partial or
        missing, the surface, request id and latency, and the retro-screen result."""

        async def run() -> DecisionView:
            self._check(op)
            if not decision_id or len(decision_id) > MAX_ID_CHARS:
                raise InvalidArgument("a decision id (at most 256 characters) is required")
            row = await self.store.get_decision(decision_id)
            case = None
            try:
                case = await self.store.get_case(decision_id)
            except NotFound:
                pass
            return DecisionView(row, case)

        return await self._audited(op, "read.decision", decision_id[:MAX_ID_CHARS], "", run)

    # ---- the overview ----------------------------------------------------------------------
    async def overview(self, op: Operator, minutes: int = 60, top: int = TOP_N) -> OverviewView:
        """Per minute of the last `minutes`: decisions, blocks, verdict completeness,
        retro catches, latency; the top tenants and accounts by blocks and by retro
        catches; the latest retro catches (decisions an operator can open). Audited."""

        async def run() -> OverviewView:
            self._check(op)
            if not 1 <= minutes <= 24 * 60:
                raise InvalidArgument("minutes must be within 1..1440")
            last = minute_of(datetime.now(UTC))
            since = last - timedelta(minutes=minutes - 1)
            stop = last + timedelta(minutes=1)
            rows = await self.store.overview_minutes(since, stop)
            axis = [since + timedelta(minutes=i) for i in range(minutes)]
            per_minute = [(m, rows.get(m) or MinuteTotals()) for m in axis]
            totals = MinuteTotals()
            for _, r in per_minute:
                totals.merge(r)
            n = _limit(top)
            return OverviewView(
                since=since,
                minutes=per_minute,
                totals=totals,
                top_tenants_by_blocks=await self.store.top_tenants(since, stop, "blocked", n),
                top_tenants_by_retro=await self.store.top_tenants(since, stop, "retro_catches", n),
                top_accounts_by_blocks=await self.store.top_accounts(since, stop, "blocked", n),
                top_accounts_by_retro=await self.store.top_accounts(since, stop, "retro_catches", n),
                recent_retro_catches=await self.store.recent_retro_catches(since, n),
            )

        return await self._audited(op, "read.overview", "", f"last {minutes} min", run)

    async def overview_minutes(self, op: Operator, minutes: int = 60) -> list[tuple[datetime, MinuteTotals]]:
        """The overview's per-minute rows only (the live charts poll this: not audited,
        like the other chart data; the page that shows them is)."""
        self._check(op)
        if not 1 <= minutes <= 24 * 60:
            raise InvalidArgument("minutes must be within 1..1440")
        last = minute_of(datetime.now(UTC))
        since = last - timedelta(minutes=minutes - 1)
        rows = await self.store.overview_minutes(since, last + timedelta(minutes=1))
        return [(m, rows.get(m) or MinuteTotals()) for m in (since + timedelta(minutes=i) for i in range(minutes))]

    async def review(self, op: Operator, case_id: str, verdict: str, note: str) -> CaseRow:
        status = VERDICTS.get(verdict)
        if status is None:
            raise InvalidArgument(f"verdict must be one of {', '.join(VERDICTS)}")
        note = _reason(note, "a note")

        async def run() -> CaseRow:
            self._check(op, Operation.REVIEW_CASE)
            row = await self.store.set_case_status(case_id, status)
            self.admin.audit("ReviewCase", self._caller(op), row.tenant, "", note, True, case_id=case_id)
            return row

        return await self._audited(op, f"review.{verdict}", case_id, note, run)

    # ---- accounts ------------------------------------------------------------------------
    def pseudonym(self, tenant: str, account: str) -> str:
        """A raw account id's regional pseudonym; a pseudonym is taken as it is."""
        account = account.strip()
        if is_pseudonym(account):
            return account
        if not account:
            raise InvalidArgument("an account id (or its pseudonym) is required")
        if self.key is None:
            raise InvalidArgument(
                "this monitor has no regional key (--hmac-key-file): look accounts up by their pseudonym"
            )
        return self.key.account(tenant, account)

    def _live_for(self, tenant: str, account_hmac: str) -> list[ActionView]:
        return [
            ActionView.of(a)
            for a in self.state.actions(tenant)
            if a.target.account_hmac == account_hmac or (not a.target.account_hmac and not a.target.category)
        ]

    async def account(self, op: Operator, tenant: str, account: str) -> AccountView:
        self._check(op)
        if not tenant.strip():
            raise InvalidArgument("tenant is required")
        account_hmac = self.pseudonym(tenant, account)
        cases = await self.store.account_cases(tenant, account_hmac, 50)
        rows = await self.pool.fetch(
            "SELECT at, event, record, action_id, kind, tenant, account_hmac, model, category, revoked_by, "
            "revoke_reason FROM monitor_action_history WHERE region = $1 AND tenant = $2 AND account_hmac = $3 "
            "ORDER BY at DESC, record_offset DESC LIMIT 100",
            self.region,
            tenant,
            account_hmac,
        )
        history = [HistoryRow.of(r) for r in rows]
        decisions = await self.store.account_decisions(tenant, account_hmac, 50)
        return AccountView(tenant, account_hmac, cases, self._live_for(tenant, account_hmac), history, decisions)

    # ---- actions ---------------------------------------------------------------------------
    async def categories(self, op: Operator) -> list[str]:
        """What a force-block may name here (the console's dropdown)."""
        self._check(op)
        return sorted(await self.admin.catalog.categories())

    async def names(self, op: Operator) -> tuple[list[str], list[str]]:
        """The tenants and models an action may name here (the console's suggestions)."""
        self._check(op)
        return sorted(await self.admin.catalog.tenants()), sorted(await self.admin.catalog.models())

    async def live_actions(self, op: Operator, tenant: str = "") -> list[ActionView]:
        self._check(op)
        return [ActionView.of(a) for a in self.state.actions(tenant)]

    async def issue(
        self,
        op: Operator,
        *,
        kind: str,
        tenant: str,
        account: str = "",
        account_hmac: str = "",
        model: str = "",
        category: str = "",
        reason: str,
        ttl_seconds: float = 0,
        requests_per_minute: int = 0,
        evidence: Sequence[str] = (),
        case_id: str = "",
        idempotency_key: str = "",
    ) -> ActionView:
        code = KINDS.get(kind)
        target = case_id or account_hmac or tenant or model

        async def run() -> ActionView:
            if code is None:
                raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}")
            self._check(op, action_operation(code))
            if ttl_seconds < 0:
                raise InvalidArgument("the duration must not be negative")
            if case_id:
                await self.store.get_case(case_id)  # exists, in this region
            if account and account_hmac:
                raise InvalidArgument("give the account or its pseudonym, not both")
            req = IssueRequest(
                kind=code,
                tenant=tenant,
                account_hmac=self.pseudonym(tenant, account) if account else account_hmac,
                model=model,
                category=category,
                reason=reason,
                ttl_s=float(int(ttl_seconds)),
                requests_per_minute=requests_per_minute,
                evidence=tuple(evidence),
                idempotency_key=idempotency_key,
            )
            action = await self.admin.issue(self._caller(op), req)
            if case_id:
                await self.store.set_case_status(case_id, CASE_ACTIONED)
            return ActionView.of(action)

        return await self._audited(op, f"action.issue.{kind.lower()}"[:64], target, reason, run)

    async def revoke(self, op: Operator, action_id: str, reason: str) -> RevokeResult:
        """Revoke an action in force; one already revoked answers `revoked=False` (with
        the first revoke when this monitor made it) and changes nothing."""

        async def run() -> RevokeResult:
            self._check(op)
            live = self.state.find(action_id) if action_id else None
            if live is not None:
                self._check(op, action_operation(live.action.kind))
            elif not (self.admin.revocation(action_id) or self.state.was_revoked(action_id)):
                raise NotFound(f"no action {action_id[:64]!r} in force in region {self.region}")
            return await self.admin.revoke(self._caller(op), action_id, reason)

        return await self._audited(op, "action.revoke", action_id, reason, run)

    # ---- charts and alerts ---------------------------------------------------------------
    async def block_rates(self, op: Operator, by: str, minutes: int = 60) -> list[SeriesPoint]:
        """Per minute and per category (or tenant): BLOCK decisions and all decisions.
        Counts are decision-category counts (a decision in two categories counts in both).
        Per category, only the blocks mean something: a decision is in a category
        (other than "none") only when a reason of that category fired, so its
        "rate" would read ~100%; the console charts blocks per category."""
        self._check(op)
        if by not in ("category", "tenant"):
            raise InvalidArgument("by must be 'category' or 'tenant'")
        if not 1 <= minutes <= 24 * 60:
            raise InvalidArgument("minutes must be within 1..1440")
        since = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        rows = await self.pool.fetch(
            f"SELECT minute, {by} AS key, "  # by is one of two column names, checked above
            "sum(count) FILTER (WHERE action = $3)::bigint AS blocked, sum(count)::bigint AS total "
            f"FROM monitor_buckets WHERE region = $1 AND minute >= $2 GROUP BY minute, {by} ORDER BY minute, {by}",
            self.region,
            since,
            safeguards_pb2.ACTION_BLOCK,
        )
        return [SeriesPoint(r["minute"], r["key"], r["blocked"] or 0, r["total"]) for r in rows]

    async def alerts(self, op: Operator, limit: int = 100) -> list[AlertRow]:
        self._check(op)
        if self._alerts is None:
            return []
        return await self._alerts(self.pool, self.region, limit=_limit(limit))


def _limit(n: int) -> int:
    if not 1 <= n <= MAX_LIST:
        raise InvalidArgument(f"a page holds 1..{MAX_LIST} rows")
    return n


def _reason(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise InvalidArgument(f"{what} is required")
    if len(text) > MAX_REASON:
        raise InvalidArgument(f"{what} is longer than {MAX_REASON} characters")
    return text


def _history_action(r: asyncpg.Record) -> enforcement_pb2.EnforcementAction:
    if r["record"] is not None:
        return enforcement_pb2.EnforcementAction.FromString(r["record"])
    return enforcement_pb2.EnforcementAction(
        action_id=r["action_id"],
        kind=r["kind"],
        target=enforcement_pb2.EnforcementTarget(
            tenant=r["tenant"], account_hmac=r["account_hmac"], model=r["model"], category=r["category"]
        ),
    )
