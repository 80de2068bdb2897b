"""The operators' web console: aiohttp, server-rendered Jinja2 pages (autoescaped),
a little vanilla JS for the live charts. A thin layer over `Operations`: it signs
operators in, checks the session, CSRF and region scope, turns forms into
Operations calls, and maps domain errors to 400/403/404/503 pages. Who may do what
is decided by Operations (defence in depth: pages only hide the buttons).

Security: server-side sessions (sessions.py) in an HttpOnly, SameSite=Strict
cookie (Secure with --console-secure-cookies); every POST carries the session's
synchronizer token and must come from an allowed Origin (or Referer); sign-in is
protected by a double-submit token and the attempt limit (per client address and
per address and name, reserved before the password is checked: sessions.py);
passwords are checked off the event loop, a bounded few at a time
(users.PasswordChecker); every response has a
CSP without inline script, X-Frame-Options DENY and nosniff. Raw account ids only
ever travel in POST bodies (the lookup form) and are never logged; there is no
access log (paths hold case ids and account pseudonyms, not for a log line).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from aiohttp import web
from safeguards.v1 import monitor_pb2, signals_pb2

from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.reloader import ReloadingConfig
from services.common.settings import split_host_port
from services.monitor.console.sessions import Session, Sessions
from services.monitor.console.users import Account, PasswordChecker
from services.monitor.decisions import ACTIONS, SURFACES, VERDICTS
from services.monitor.operations import Operations, Operator
from services.monitor.overview import MinuteTotals
from services.monitor.store import CaseFilter

log = logging.getLogger("safeguards.monitor.console")

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PRE_COOKIE = "sgconsole_signin"
MAX_FORM_BYTES = 64 * 1024
PAGE_SIZE = 50
#: Display names of the proto enums the case rows hold as numbers.
STATUSES = {v: n.removeprefix("CASE_STATUS_") for n, v in monitor_pb2.CaseStatus.items() if v}
DATA_POLICIES = {v: n.removeprefix("DATA_POLICY_") for n, v in signals_pb2.DataPolicy.items() if v}
#: Most keys drawn in one chart (the ones with the most blocks); the rest are left out.
CHART_KEYS = 8
CHART_MINUTES = 60
#: The time axis is labelled every this many minutes.
TICK_MINUTES = 10
#: Where a signed-in operator lands.
LANDING = "/overview"
ERROR_STATUS: dict[type[ServiceError], int] = {
    InvalidArgument: 400,
    AlreadyExists: 409,
    PermissionDenied: 403,
    NotFound: 404,
    ResourceExhausted: 429,
    Unavailable: 503,
}
TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many requests",
}

OPERATOR = web.AppKey("operator", Operator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cookie_name(secure: bool) -> str:
    # The __Host- prefix makes the browser refuse the cookie unless Secure, path=/ and host-only.
    return "__Host-sgconsole" if secure else "sgconsole"


class Console:
    """The web app and its HTTP listener; `start`/`stop` are the monitor's lifecycle hooks."""

    def __init__(
        self,
        *,
        ops: Operations,
        sessions: Sessions,
        users: ReloadingConfig[dict[str, Account]],
        region: str,
        listen: str,
        secure_cookies: bool = False,
        allowed_origins: list[str] | None = None,
        passwords: PasswordChecker | None = None,
        trusted_proxies: list[str] | None = None,
    ) -> None:
        self.ops = ops
        self.sessions = sessions
        self.passwords = passwords or PasswordChecker()
        self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies or ())
        self.users = users
        self.region = region
        self.listen = listen
        self.secure = secure_cookies
        self.cookie = cookie_name(secure_cookies)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins or ())
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["hhmm"] = _hhmm
        self.templates.filters["pct"] = _pct
        self.templates.filters["ms"] = _ms
        self.templates.globals.update(
            ACTIONS=ACTIONS, STATUSES=STATUSES, DATA_POLICIES=DATA_POLICIES, VERDICTS=VERDICTS, SURFACES=SURFACES
        )
        self.app = self._build()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.users.start()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = split_host_port(self.listen)
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        log.info("console serving", extra={"host": host, "port": self.port})
        print(f"console serving http://{host}:{self.port}/", flush=True)

    async def stop(self) -> None:
        await self.users.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self.passwords.close()

    def _build(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers, self._errors, self._authenticated, self._csrf],
            client_max_size=MAX_FORM_BYTES,
        )
        r = app.router
        r.add_get("/signin", self.signin_page)
        r.add_post("/signin", self.signin)
        r.add_post("/signout", self.signout)
        r.add_get("/", self.home)
        r.add_get("/overview", self.overview)
        r.add_get("/overview/data", self.overview_data)
        r.add_get("/decisions/{decision_id}", self.decision)
        r.add_get("/cases", self.queue)
        r.add_get("/cases/{case_id}", self.case)
        r.add_post("/cases/{case_id}/review", self.review)
        r.add_post("/cases/{case_id}/suspend", self.suspend_case)
        r.add_post("/accounts", self.lookup)
        r.add_get("/accounts", self.lookup_page)
        r.add_get("/accounts/{tenant}/{account_hmac}", self.account)
        r.add_post("/accounts/{tenant}/{account_hmac}/actions", self.act_on_account)
        r.add_post("/actions/{action_id}/revoke", self.revoke)
        r.add_get("/switches", self.switches)
        r.add_post("/switches", self.switch)
        r.add_get("/charts", self.charts)
        r.add_get("/charts/data", self.chart_data)
        r.add_get("/alerts", self.alerts)
        r.add_get("/audit", self.audit)
        r.add_static("/static/", HERE / "static", name="static", append_version=True)
        return app

    # ---- middlewares -----------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # what aiohttp itself raises
            _secure_headers(request, exc)
            raise
        _secure_headers(request, response)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServiceError as exc:
            status = next((s for t, s in ERROR_STATUS.items() if isinstance(exc, t)), 400)
            return self._error_page(request, status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._error_page(request, exc.status, exc.text if exc.text and exc.status != 404 else "")
        except Exception:
            # The traceback goes to the log (no request content in it); the page says nothing more.
            log.exception("console request failed", extra={"method": request.method, "route": _route(request)})
            return self._error_page(request, 500, "")

    def _error_page(self, request: web.Request, status: int, message: str) -> web.Response:
        return self._render(
            request,
            "error.html",
            {
                "status": status,
                "title": TITLES.get(status, "Service unavailable" if status == 503 else "Error"),
                "message": message,
            },
            status=status,
        )

    @web.middleware
    async def _authenticated(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/signin",) or request.path.startswith("/static/"):
            return await handler(request)
        session = await self.sessions.touch(request.cookies.get(self.cookie, ""))
        account = (self.users.current or {}).get(session.operator) if session else None
        if session is None or account is None:
            if request.method == "GET":
                return see_other("/signin")
            raise web.HTTPForbidden(text="your session has expired: sign in again")
        request["session"] = session
        request["operator"] = operator = account.operator
        if request.path != "/signout" and not operator.covers(self.region):
            raise PermissionDenied(
                f"{operator.name} may not use the console of region {self.region} "
                f"(scope: {', '.join(sorted(operator.regions))})"
            )
        return await handler(request)

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return await handler(request)
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused (Origin/Referer is not this console)")
        form = await request.post()
        session: Session | None = request.get("session")
        if session is not None:
            expected = session.csrf
        else:  # sign-in: a double-submit token (cookie + form field) from the sign-in page
            expected = request.cookies.get(PRE_COOKIE, "")
        given = str(form.get("csrf_token", ""))
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPForbidden(text="the form's security token is missing or stale: reload the page and retry")
        request["form"] = form
        return await handler(request)

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            referer = request.headers.get("Referer", "")
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
        origin = origin.rstrip("/").lower()
        if not origin:
            return False
        if self.allowed_origins:
            return origin in self.allowed_origins
        scheme = "https" if self.secure else request.scheme
        return origin == f"{scheme}://{request.host}".lower()

    # ---- rendering -------------------------------------------------------------------------
    def _render(self, request: web.Request, template: str, context: dict, status: int = 200) -> web.Response:
        operator: Operator | None = request.get("operator")
        session: Session | None = request.get("session")
        html = self.templates.get_template(template).render(
            operator=operator,
            can=lambda operation: operator is not None and operator.may(operation),
            csrf=session.csrf if session else "",
            region=self.region,
            static=lambda name: str(request.app.router["static"].url_for(filename=name)),
            account_url=account_url,
            path=request.path_qs,
            new_idempotency_key=lambda: uuid.uuid4().hex,
            **context,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    # ---- sign in / out ---------------------------------------------------------------------
    async def signin_page(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(32)
        response = self._render(request, "signin.html", {"signin_token": token, "error": error}, status=status)
        response.set_cookie(
            PRE_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure, path="/signin", max_age=3600
        )
        return response

    async def signin(self, request: web.Request) -> web.StreamResponse:
        form = request["form"]
        name = str(form.get("name", "")).strip()[:64]
        password = str(form.get("password", ""))
        client = client_address(request, self.trusted_proxies)
        if not name or not password:
            return await self.signin_page(request, error="enter your name and password", status=400)
        wait_s = await self.sessions.attempt(name, client)
        if wait_s:
            await self.ops.record(name, "", "sign-in", reason="too many failed attempts", ok=False)
            wait = f"{math.ceil(wait_s / 60)} minute(s)" if wait_s >= 60 else f"{math.ceil(wait_s)} seconds"
            response = await self.signin_page(
                request, error=f"too many failed sign-ins: try again in {wait}", status=429
            )
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response
        operator = await self.passwords.authenticate(self.users.current or {}, name, password)
        if operator is None:
            await self.ops.record(name, "", "sign-in", reason="wrong name or password", ok=False)
            return await self.signin_page(request, error="wrong name or password", status=401)
        await self.sessions.succeeded(name, client)
        sid, _session = await self.sessions.create(operator.name)
        await self.ops.record(operator, str(operator.role), "sign-in")
        response = see_other(LANDING)
        response.set_cookie(self.cookie, sid, httponly=True, samesite="Strict", secure=self.secure, path="/")
        response.del_cookie(PRE_COOKIE, path="/signin")
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        operator: Operator = request["operator"]
        await self.sessions.end(request.cookies.get(self.cookie, ""))
        await self.ops.record(operator, str(operator.role), "sign-out")
        response = see_other("/signin")
        response.del_cookie(self.cookie, path="/")
        return response

    # ---- review queue and cases ------------------------------------------------------------
    async def home(self, request: web.Request) -> web.StreamResponse:
        return see_other(LANDING)

    # ---- overview and decisions -------------------------------------------------------------
    async def overview(self, request: web.Request) -> web.Response:
        view = await self.ops.overview(request["operator"], CHART_MINUTES)
        active = [(m, r) for m, r in reversed(view.minutes) if r.decisions or r.retro_screens]
        return self._render(request, "overview.html", {"view": view, "t": view.totals, "active": active})

    async def overview_data(self, request: web.Request) -> web.Response:
        rows = await self.ops.overview_minutes(request["operator"], CHART_MINUTES)
        return web.json_response(overview_series(rows))

    async def decision(self, request: web.Request) -> web.Response:
        view = await self.ops.decision(request["operator"], request.match_info["decision_id"])
        return self._render(request, "decision.html", {"d": view.decision, "case": view.case})

    async def queue(self, request: web.Request) -> web.Response:
        q = request.query
        f = CaseFilter(
            tenant=q.get("tenant", "").strip(),
            category=q.get("category", "").strip(),
            action=_choice(q.get("action", ""), {v: k for k, v in ACTIONS.items()}, "action"),
            status=_choice(q.get("status", "OPEN"), {v: k for k, v in STATUSES.items()}, "status"),
        )
        page = q.get("page", "")
        cases, next_token = await self.ops.list_cases(request["operator"], f, PAGE_SIZE, page)
        filters = {"tenant": f.tenant, "category": f.category, "action": ACTIONS.get(f.action, ""),
                   "status": STATUSES.get(f.status, "ANY")}  # fmt: skip
        next_url = "/cases?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": next_token})
        return self._render(
            request,
            "queue.html",
            {"cases": cases, "filters": filters, "next_url": next_url if next_token else "", "paged": bool(page)},
        )

    async def case(self, request: web.Request) -> web.Response:
        view = await self.ops.case(request["operator"], request.match_info["case_id"])
        return self._render(request, "case.html", {"view": view, "c": view.case})

    async def review(self, request: web.Request) -> web.StreamResponse:
        case_id = request.match_info["case_id"]
        form = request["form"]
        await self.ops.review(request["operator"], case_id, str(form.get("verdict", "")), _reason(form, "note"))
        return see_other(f"/cases/{quote(case_id)}")

    async def suspend_case(self, request: web.Request) -> web.StreamResponse:
        case_id = request.match_info["case_id"]
        form = request["form"]
        operator = request["operator"]
        c = (await self.ops.case(operator, case_id)).case
        await self.ops.issue(
            operator,
            kind="SUSPEND_ACCOUNT",
            tenant=c.tenant,
            account_hmac=c.account_hmac,
            reason=_reason(form),
            ttl_seconds=_minutes(form) * 60,
            evidence=[case_id],
            case_id=case_id,
            idempotency_key=_idempotency_key(form),
        )
        return see_other(f"/cases/{quote(case_id)}")

    # ---- accounts and actions --------------------------------------------------------------
    async def lookup_page(self, request: web.Request) -> web.Response:
        return self._render(request, "lookup.html", {})

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        # A POST, so a raw account id never lands in a URL, a browser history or a proxy log.
        form = request["form"]
        view = await self.ops.account(
            request["operator"], str(form.get("tenant", "")).strip(), str(form.get("account", "")).strip()
        )
        return see_other(account_url(view.tenant, view.account_hmac))

    async def account(self, request: web.Request) -> web.Response:
        m = request.match_info
        view = await self.ops.account(request["operator"], m["tenant"], m["account_hmac"])
        return self._render(request, "account.html", {"view": view})

    async def act_on_account(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        form = request["form"]
        kind = str(form.get("kind", ""))
        if kind not in ("SUSPEND_ACCOUNT", "THROTTLE_ACCOUNT"):
            raise InvalidArgument("kind must be SUSPEND_ACCOUNT or THROTTLE_ACCOUNT")
        await self.ops.issue(
            request["operator"],
            kind=kind,
            tenant=m["tenant"],
            account_hmac=m["account_hmac"],
            reason=_reason(form),
            ttl_seconds=_minutes(form) * 60,
            requests_per_minute=_int(form, "requests_per_minute") if kind == "THROTTLE_ACCOUNT" else 0,
            idempotency_key=_idempotency_key(form),
        )
        return see_other(account_url(m["tenant"], m["account_hmac"]))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        form = request["form"]
        await self.ops.revoke(request["operator"], request.match_info["action_id"], _reason(form))
        return see_other(_local(str(form.get("next", "")), "/switches"))

    # ---- kill switches ------------------------------------------------------------------------
    async def switches(self, request: web.Request) -> web.Response:
        live = await self.ops.live_actions(request["operator"])
        switches = [a for a in live if a.kind in ("KILL_SWITCH", "FORCE_BLOCK_CATEGORY")]
        accounts = [a for a in live if a.kind not in ("KILL_SWITCH", "FORCE_BLOCK_CATEGORY")]
        categories = await self.ops.categories(request["operator"])
        tenants, models = await self.ops.names(request["operator"])
        return self._render(
            request,
            "switches.html",
            {
                "switches": switches,
                "accounts": accounts,
                "categories": categories,
                "tenants": tenants,
                "models": models,
            },
        )

    async def switch(self, request: web.Request) -> web.StreamResponse:
        form = request["form"]
        kind = str(form.get("kind", ""))
        if kind not in ("KILL_SWITCH", "FORCE_BLOCK_CATEGORY"):
            raise InvalidArgument("kind must be KILL_SWITCH or FORCE_BLOCK_CATEGORY")
        await self.ops.issue(
            request["operator"],
            kind=kind,
            tenant=str(form.get("tenant", "")).strip(),
            model=str(form.get("model", "")).strip(),
            category=str(form.get("category", "")).strip(),
            reason=_reason(form),
            ttl_seconds=_minutes(form) * 60,
            idempotency_key=_idempotency_key(form),
        )
        return see_other("/switches")

    # ---- charts, alerts, audit -----------------------------------------------------------------
    async def charts(self, request: web.Request) -> web.Response:
        return self._render(request, "charts.html", {})

    async def chart_data(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "category")
        points = await self.ops.block_rates(request["operator"], by, CHART_MINUTES)
        # Per category only blocks mean something (see Operations.block_rates).
        measure = "blocks" if by == "category" else "rate"
        return web.json_response(chart_series(points, datetime.now(UTC), measure=measure))

    async def alerts(self, request: web.Request) -> web.Response:
        return self._render(request, "alerts.html", {"alerts": await self.ops.alerts(request["operator"])})

    async def audit(self, request: web.Request) -> web.Response:
        return self._render(request, "audit.html", {"rows": await self.ops.audit_log(request["operator"], 200)})


def time_ticks(axis: list[datetime], every: int = TICK_MINUTES) -> list[list]:
    """[index, "HH:MM"] for the minutes of the axis on a multiple of `every` minutes
    (UTC), so the time axis is labelled at round times whatever the window's start."""
    return [[i, _hhmm(m)] for i, m in enumerate(axis) if (m.hour * 60 + m.minute) % every == 0]


def chart_series(points, now: datetime, minutes: int = CHART_MINUTES, measure: str = "rate") -> dict:
    """Per-minute series of the keys with the most blocks, for the chart script, with
    every minute of the window on the axis and HH:MM ticks. measure="rate": blocked /
    total (None where nothing was decided); measure="blocks": blocks per minute, only
    keys that blocked."""
    last = now.astimezone(UTC).replace(second=0, microsecond=0)
    axis = [last - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    index = {m: i for i, m in enumerate(axis)}
    blocked: dict[str, list[int]] = defaultdict(lambda: [0] * minutes)
    total: dict[str, list[int]] = defaultdict(lambda: [0] * minutes)
    for p in points:
        i = index.get(p.minute.astimezone(UTC))
        if i is not None:
            blocked[p.key][i] += p.blocked
            total[p.key][i] += p.total
    keys = [k for k in total if measure == "rate" or sum(blocked[k])]
    keys = sorted(keys, key=lambda k: (-sum(blocked[k]), k))[:CHART_KEYS]
    series = []
    for k in keys:
        rates = [round(b / t, 4) if t else None for b, t in zip(blocked[k], total[k], strict=True)]
        n, of = sum(blocked[k]), sum(total[k])
        series.append(
            {
                "key": k,
                "blocked": n,
                "total": of,
                "rates": rates,
                "values": rates if measure == "rate" else list(blocked[k]),
                "legend": f"{k}: {n} blocked of {of}" if measure == "rate" else f"{k}: {n} blocked",
            }
        )
    return {
        "minutes": [m.isoformat() for m in axis],
        "ticks": time_ticks(axis),
        "unit": "share" if measure == "rate" else "count",
        "series": series,
    }


def overview_series(rows: list[tuple[datetime, MinuteTotals]]) -> dict:
    """The overview's three live charts from its per-minute rows: volume (decisions,
    blocks, retro catches per minute), verdicts (share decided on a full / partial /
    no verdict) and latency (p50 / p99 in ms)."""
    axis = [m for m, _ in rows]
    totals = [r for _, r in rows]

    def line(key: str, values: list, legend: str) -> dict:
        return {"key": key, "values": values, "legend": legend}

    def share(part) -> list:
        return [None if r.share(part(r)) is None else round(r.share(part(r)), 4) for r in totals]

    def ms(q) -> list:
        return [None if q(r) is None else round(q(r), 2) for r in totals]

    hour = MinuteTotals()
    for r in totals:
        hour.merge(r)
    base = {"minutes": [m.isoformat() for m in axis], "ticks": time_ticks(axis)}
    return {
        "volume": {
            **base,
            "unit": "count",
            "series": [
                line("decisions", [r.decisions for r in totals], f"decisions: {hour.decisions}"),
                line("blocks", [r.blocked for r in totals], f"blocks: {hour.blocked}"),
                line("retro catches", [r.retro_catches for r in totals], f"retro catches: {hour.retro_catches}"),
            ],
        },
        "verdicts": {
            **base,
            "unit": "share",
            "series": [
                line("full", share(lambda r: r.full), f"full verdict: {_pct(hour.share(hour.full))}"),
                line("partial", share(lambda r: r.partial), f"partial verdict: {_pct(hour.share(hour.partial))}"),
                line("none", share(lambda r: r.no_verdict), f"no verdict: {_pct(hour.share(hour.no_verdict))}"),
            ],
        },
        "latency": {
            **base,
            "unit": "ms",
            "series": [
                line("p50", ms(lambda r: r.p50_ms), f"p50: {_ms(hour.p50_ms)}"),
                line("p99", ms(lambda r: r.p99_ms), f"p99: {_ms(hour.p99_ms)}"),
            ],
        },
    }


def client_address(request: web.Request, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """Whom the sign-in limits count: the TCP peer, or, when the peer is a trusted proxy,
    the right-most X-Forwarded-For address that is not itself a trusted proxy (what a
    client writes further left cannot move it). Linear in the header's length."""
    peer = request.remote or ""
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = ",".join(request.headers.getall("X-Forwarded-For", ())).split(",")
    for hop in reversed(hops):
        hop = hop.strip()
        if not hop:
            continue
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # not an address where the proxy's own entry should be: count the proxy
    return peer


def _trusted(address: str, trusted) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def see_other(location: str) -> web.Response:
    """The redirect after a POST (and to the sign-in page); returned, not raised."""
    return web.Response(status=303, headers={"Location": location})


def account_url(tenant: str, account_hmac: str) -> str:
    return f"/accounts/{quote(tenant, safe='')}/{quote(account_hmac, safe='')}"


def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"


# ---- form helpers ----------------------------------------------------------------------------
def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def _choice(value: str, names: dict[str, int], what: str) -> int:
    if value in ("", "ANY"):
        return 0
    if value not in names:
        raise InvalidArgument(f"{what} must be one of {', '.join(names)}")
    return names[value]


def _reason(form, field: str = "reason") -> str:
    reason = str(form.get(field, "")).strip()
    if not reason:
        raise InvalidArgument(f"a {field} is required")
    return reason


def _idempotency_key(form) -> str:
    """The form's own key (macros.idempotency_field); empty from a client without one."""
    return str(form.get("idempotency_key", "")).strip()


def _int(form, field: str) -> int:
    raw = str(form.get(field, "")).strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise InvalidArgument(f"{field} must be a whole number") from None


def _minutes(form) -> float:
    raw = str(form.get("ttl_minutes", "")).strip()
    try:
        minutes = float(raw) if raw else 0.0
    except ValueError:
        raise InvalidArgument("ttl_minutes must be a number of minutes (empty: until revoked)") from None
    if not 0 <= minutes <= 60 * 24 * 366:
        raise InvalidArgument("ttl_minutes must be between 0 (until revoked) and a year")
    return minutes


def _local(target: str, default: str) -> str:
    """`target` when it is a path on this console (no open redirect), else `default`."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def _hhmm(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M")


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _when(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
