"""`safeguards` / `python -m safeguards`: the mesh's command-line client.

One subcommand per thing an operator or a gateway developer does by hand; each talks
to one service over its public gRPC API (protos/ and Envoy's rate-limit API), never
to a service's internals. Every connection flag also reads an env var (SAFEGUARDS_*),
so a shell can be pointed at a deployment once. Human-readable output by default,
`--json` for scripts (one JSON document per answer; JSON Lines for a stream).

Exit status: 0 done; 1 the service answered with an error (one line: its status code
and message); 2 a bad flag or value (one argparse-style line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from safeguards import output
from safeguards.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    enforcement_pb2,
    enforcement_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    safeguards_pb2,
    safeguards_pb2_grpc,
)
from services.common import pbtime
from services.common.settings import ArgumentParser
from services.common.tls import ClientTLS

PROG = "safeguards"

#: Where each service listens in `make run` (and by its settings' defaults).
SERVICES = {
    "enforcer": "127.0.0.1:50051",
    "classifier": "127.0.0.1:50052",
    "ratelimit": "127.0.0.1:50053",
    "monitor": "127.0.0.1:50054",
}


class UsageError(Exception):
    """A flag combination or file argparse cannot check itself (exit status 2)."""


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"SAFEGUARDS_{name}", default)


def env_flag(name: str) -> bool:
    return env(name).strip().lower() in ("1", "true", "yes", "on")


def enum_choices(enum: Any, prefix: str) -> dict[str, int]:
    """A proto enum's values as flag choices: ACTION_BLOCK -> "block",
    ENFORCEMENT_KIND_KILL_SWITCH -> "kill-switch", WINDOW_5M -> "5m"."""
    return {
        name.removeprefix(prefix).lower().replace("_", "-"): number
        for name, number in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


ACTIONS = enum_choices(safeguards_pb2.Action, "ACTION_")
KINDS = enum_choices(enforcement_pb2.EnforcementKind, "ENFORCEMENT_KIND_")
CASE_STATUSES = enum_choices(monitor_pb2.CaseStatus, "CASE_STATUS_")
WINDOWS = enum_choices(monitor_pb2.Window, "WINDOW_")
ROLES = ("user", "system", "assistant", "tool")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(text: str) -> float:
    """'90', '90s', '15m', '1h', '7d', '250ms' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


duration.__name__ = "duration"  # argparse names the type in "invalid duration value"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive integer"


def descriptor(text: str) -> list[tuple[str, str]]:
    """'tenant=acme,model=claude' -> [("tenant", "acme"), ("model", "claude")]."""
    entries = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(text)
        entries.append((key.strip(), value.strip()))
    return entries


descriptor.__name__ = "descriptor (KEY=VALUE[,KEY=VALUE...])"


# ---- connections -----------------------------------------------------------------------


@dataclass
class Connection:
    """How to reach one service: address, transport security, token, deadline."""

    service: str
    address: str
    tls: ClientTLS
    token: str
    timeout_s: float

    def channel(self) -> grpc.Channel:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if self.tls.plaintext:
            return grpc.insecure_channel(self.address, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        try:
            creds = self.tls.credentials()
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        return grpc.secure_channel(self.address, creds, options=options)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def connection(args: argparse.Namespace, service: str) -> Connection:
    if args.plaintext and (args.ca_file or args.cert_file or args.key_file):
        raise UsageError("--plaintext conflicts with --ca-file/--cert-file/--key-file")
    if bool(args.cert_file) != bool(args.key_file):
        raise UsageError("--cert-file and --key-file go together (mutual TLS)")
    tls = ClientTLS(
        plaintext=args.plaintext,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        server_name=args.server_name,
    )
    return Connection(service, getattr(args, service), tls, args.token, args.timeout)


def unary(args: argparse.Namespace, service: str, stub: Callable[[grpc.Channel], Any], method: str, request) -> Message:
    """One unary call to `service` (its address, TLS, token and deadline from `args`)."""
    conn = connection(args, service)
    with conn.channel() as ch:
        return getattr(stub(ch), method)(request, timeout=conn.timeout_s, metadata=conn.metadata())


# ---- the parser -------------------------------------------------------------------------


def common_flags() -> argparse.ArgumentParser:
    """Flags every subcommand takes (after the subcommand's name)."""
    p = ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    for service, default in SERVICES.items():
        var = service.upper()
        g.add_argument(
            f"--{service}",
            default=env(var, default),
            metavar="TARGET",
            help=f"{service} address HOST:PORT (or any gRPC target) [env: SAFEGUARDS_{var}] (default: {default})",
        )
    g.add_argument(
        "--plaintext",
        action="store_true",
        default=env_flag("PLAINTEXT"),
        help="no TLS (local loopback runs, as `make run`) [env: SAFEGUARDS_PLAINTEXT]; otherwise TLS, verified "
        "against --ca-file or the system's roots",
    )
    g.add_argument(
        "--ca-file", default=env("CA_FILE"), help="PEM CA the services' certificates chain to [env: SAFEGUARDS_CA_FILE]"
    )
    g.add_argument(
        "--cert-file",
        default=env("CERT_FILE"),
        help="PEM client certificate, for services that require mutual TLS [env: SAFEGUARDS_CERT_FILE]",
    )
    g.add_argument("--key-file", default=env("KEY_FILE"), help="PEM key of --cert-file [env: SAFEGUARDS_KEY_FILE]")
    g.add_argument(
        "--server-name",
        default=env("SERVER_NAME"),
        help="name to verify in the server certificate instead of the address's host [env: SAFEGUARDS_SERVER_NAME]",
    )
    g.add_argument(
        "--token",
        default=env("TOKEN"),
        help="bearer token for the admin API and the monitor (authorization: Bearer ...) [env: SAFEGUARDS_TOKEN]",
    )
    g.add_argument(
        "--timeout",
        type=duration,
        default=env("TIMEOUT", "10s"),  # a string: argparse converts it (and reports a bad one) like a flag
        metavar="DURATION",
        help="deadline of each call, e.g. 500ms, 10s [env: SAFEGUARDS_TIMEOUT] (default: 10s)",
    )
    g.add_argument("--json", action="store_true", help="print the answer as JSON (a stream: one object per line)")
    return p


def identity_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("request context")
    g.add_argument(
        "--tenant", default=env("TENANT", "default"), help="tenant [env: SAFEGUARDS_TENANT] (default: default)"
    )
    g.add_argument("--account", default=env("ACCOUNT"), help="end account id [env: SAFEGUARDS_ACCOUNT]")
    g.add_argument("--project", default=env("PROJECT"), help="CSP project [env: SAFEGUARDS_PROJECT]")
    g.add_argument("--model", default=env("MODEL"), help="model the request is for [env: SAFEGUARDS_MODEL]")
    g.add_argument("--region", default=env("REGION"), help="region; empty: the enforcer's [env: SAFEGUARDS_REGION]")
    g.add_argument("--request-id", default="", help="gateway request id (default: a new UUID)")


def choice_help(choices: Sequence[str]) -> str:
    return ", ".join(choices)


def build_parser() -> ArgumentParser:
    common = common_flags()
    parser = ArgumentParser(
        prog=PROG,
        description="Command-line client of the Safeguards Mesh services (gRPC).",
        epilog="Each subcommand has its own --help. grpcurl and ghz work too: every service has server reflection.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable, help_text: str, parent=sub) -> ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func, prog=p.prog)
        return p

    p = command("screen", cmd_screen, "screen a prompt (SafeguardsService.ScreenPrompt on the enforcer)")
    p.add_argument("text", nargs="*", help="the prompt (words are joined; none or - reads stdin)")
    identity_flags(p)
    p.add_argument("--role", choices=ROLES, default="user", help=f"role of the prompt's message: {choice_help(ROLES)}")
    p.add_argument("--system", default="", help="a system message sent before the prompt")
    p.add_argument(
        "--messages-file",
        default="",
        help='JSON file of the whole conversation, [{"role": ..., "content": ...}, ...] (instead of TEXT)',
    )
    p.add_argument("--estimated-tokens", type=int, default=0, help="token count for token limits (0: estimated)")

    p = command(
        "stream", cmd_stream, "screen a completion as it streams (SafeguardsService.ScreenCompletion on the enforcer)"
    )
    p.add_argument("text", nargs="*", help="the completion (words are joined; none or - reads stdin)")
    identity_flags(p)
    p.add_argument("--chunk-chars", type=positive_int, default=40, help="send the text in chunks of N characters")
    p.add_argument("--prompt-decision-id", default="", help="decision id of the prompt this completion answers")

    p = command(
        "ratelimit",
        cmd_ratelimit,
        "check (and count) a rate limit (envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit)",
    )
    p.add_argument("--domain", default="llm", help="rate-limit domain (default: llm)")
    p.add_argument(
        "--descriptor",
        "-d",
        type=descriptor,
        action="append",
        required=True,
        help="a descriptor KEY=VALUE[,KEY=VALUE...]; repeat for several",
    )
    p.add_argument("--hits", type=int, default=1, help="hits to add (an LLM token count for token limits; default 1)")

    command("models", cmd_models, "list the classifier's models (ClassifierService.ListModels)")

    p = command("classify", cmd_classify, "score texts with the classifier (ClassifierService.Classify)")
    p.add_argument("texts", nargs="+", help="texts to score, one per argument")
    p.add_argument(
        "--model", action="append", default=[], help="model (name or name:version; default: the server's); repeatable"
    )
    p.add_argument("--tenant", default=env("TENANT", ""), help="tenant, for fair queueing [env: SAFEGUARDS_TENANT]")

    actions = sub.add_parser("actions", help="enforcement actions (EnforcementAdminService on the enforcer)")
    asub = actions.add_subparsers(dest="action_command", metavar="ACTION", required=True)
    kinds = list(KINDS)
    p = command("issue", cmd_issue, "issue an enforcement action", asub)
    p.add_argument("--kind", required=True, choices=kinds, help=f"what to do: {choice_help(kinds)}")
    p.add_argument("--tenant", required=True, help="tenant the action applies to")
    p.add_argument("--account", default="", help="raw account id (pseudonymised by the service)")
    p.add_argument("--model", default="", help="model (kill-switch of a model)")
    p.add_argument("--category", default="", help="classifier category (force-block-category)")
    p.add_argument("--reason", required=True, help="why (audited)")
    p.add_argument(
        "--ttl", type=duration, default=None, metavar="DURATION", help="lifetime, e.g. 1h (default: forever)"
    )
    p.add_argument("--rpm", type=int, default=0, help="requests per minute (throttle-account)")
    p.add_argument("--evidence", action="append", default=[], help="decision id that justifies it; repeatable")
    p.add_argument(
        "--idempotency-key",
        default="",
        metavar="KEY",
        help="retry key: the same key issues the action once (default: a new random key, printed when the call "
        "fails in a way that a retry should repeat)",
    )
    p = command("list", cmd_list_actions, "list actions in force", asub)
    p.add_argument("--tenant", default="", help="only this tenant's")
    p = command("revoke", cmd_revoke, "revoke an action", asub)
    p.add_argument("action_id", help="id from `actions issue` or `actions list`")
    p.add_argument("--reason", required=True, help="why (audited)")

    cases = sub.add_parser("cases", help="review cases (MonitorService on the monitor)")
    csub = cases.add_subparsers(dest="case_command", metavar="ACTION", required=True)
    p = command("list", cmd_list_cases, "list review cases, newest first", csub)
    p.add_argument("--tenant", default="")
    p.add_argument("--category", default="")
    p.add_argument("--action", choices=list(ACTIONS), help=f"decision action: {choice_help(ACTIONS)}")
    p.add_argument("--status", choices=list(CASE_STATUSES), help=f"case status: {choice_help(CASE_STATUSES)}")
    p.add_argument("--page-size", type=int, default=20, help="cases per page, 1..1000 (default 20)")
    p.add_argument("--page-token", default="", help="from the previous page's next page token")
    p.add_argument("--all", action="store_true", help="follow page tokens to the last page")
    p = command("show", cmd_show_case, "show one review case", csub)
    p.add_argument("case_id", help="the case id (the decision id it came from)")

    p = command("aggregates", cmd_aggregates, "decision counts over a sliding window (MonitorService)")
    p.add_argument(
        "--window", choices=list(WINDOWS), default="5m", help=f"window: {choice_help(WINDOWS)} (default: 5m)"
    )
    p.add_argument("--tenant", default="")
    p.add_argument("--category", default="")
    p.add_argument("--action", choices=list(ACTIONS), help=f"decision action: {choice_help(ACTIONS)}")
    p.add_argument("--model", default="")
    return parser


# ---- commands ---------------------------------------------------------------------------


def read_text(words: Sequence[str]) -> str:
    if not words or list(words) == ["-"]:
        if sys.stdin.isatty():
            raise UsageError("no text: give it as arguments or on stdin")
        return sys.stdin.read()
    return " ".join(words)


def request_context(args: argparse.Namespace) -> safeguards_pb2.RequestContext:
    return safeguards_pb2.RequestContext(
        tenant=args.tenant,
        account=args.account,
        project=args.project,
        model=args.model,
        region=args.region,
        request_id=args.request_id or str(uuid.uuid4()),
    )


def chat_messages(args: argparse.Namespace) -> list[safeguards_pb2.ChatMessage]:
    if args.messages_file:
        if args.text or args.system:
            raise UsageError("--messages-file replaces TEXT and --system")
        try:
            with open(args.messages_file, encoding="utf-8") as f:
                raw = json.load(f)
        except OSError as exc:
            raise UsageError(f"cannot read {args.messages_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"{args.messages_file} is not JSON: {exc}") from None
        if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
            raise UsageError(f'{args.messages_file}: expected [{{"role": ..., "content": ...}}, ...]')
        return [
            safeguards_pb2.ChatMessage(role=str(m.get("role", "user")), content=str(m.get("content", ""))) for m in raw
        ]
    messages = [safeguards_pb2.ChatMessage(role="system", content=args.system)] if args.system else []
    messages.append(safeguards_pb2.ChatMessage(role=args.role, content=read_text(args.text)))
    return messages


def cmd_screen(args: argparse.Namespace) -> Iterator[Message]:
    request = safeguards_pb2.ScreenPromptRequest(
        context=request_context(args), messages=chat_messages(args), estimated_tokens=args.estimated_tokens
    )
    yield unary(args, "enforcer", safeguards_pb2_grpc.SafeguardsServiceStub, "ScreenPrompt", request)


def cmd_stream(args: argparse.Namespace) -> Iterator[Message]:
    conn = connection(args, "enforcer")
    text = read_text(args.text)
    start = safeguards_pb2.CompletionStart(context=request_context(args), prompt_decision_id=args.prompt_decision_id)

    def requests() -> Iterator[safeguards_pb2.ScreenCompletionRequest]:
        yield safeguards_pb2.ScreenCompletionRequest(start=start)
        for i in range(0, len(text), args.chunk_chars):
            yield safeguards_pb2.ScreenCompletionRequest(chunk=text[i : i + args.chunk_chars])

    with conn.channel() as ch:
        stub = safeguards_pb2_grpc.SafeguardsServiceStub(ch)
        call = stub.ScreenCompletion(requests(), timeout=conn.timeout_s, metadata=conn.metadata())
        for response in call:
            yield response
            if response.cut:
                call.cancel()  # the gateway stops the stream here
                return


def cmd_ratelimit(args: argparse.Namespace) -> Iterator[Message]:
    request = rls_pb2.RateLimitRequest(
        domain=args.domain,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
            )
            for entries in args.descriptor
        ],
        hits_addend=args.hits,
    )
    yield unary(args, "ratelimit", rls_pb2_grpc.RateLimitServiceStub, "ShouldRateLimit", request)


def cmd_models(args: argparse.Namespace) -> Iterator[Message]:
    request = classifier_pb2.ListModelsRequest()
    yield unary(args, "classifier", classifier_pb2_grpc.ClassifierServiceStub, "ListModels", request)


def cmd_classify(args: argparse.Namespace) -> Iterator[Message]:
    request = classifier_pb2.ClassifyRequest(texts=args.texts, models=args.model, tenant=args.tenant)
    yield unary(args, "classifier", classifier_pb2_grpc.ClassifierServiceStub, "Classify", request)


def cmd_issue(args: argparse.Namespace) -> Iterator[Message]:
    request = enforcement_pb2.IssueActionRequest(
        kind=KINDS[args.kind],
        tenant=args.tenant,
        account=args.account,
        model=args.model,
        category=args.category,
        reason=args.reason,
        requests_per_minute=args.rpm,
        evidence=args.evidence,
        idempotency_key=args.idempotency_key or uuid.uuid4().hex,
    )
    if args.ttl is not None:
        request.ttl.CopyFrom(pbtime.duration(args.ttl))
    try:
        yield unary(args, "enforcer", enforcement_pb2_grpc.EnforcementAdminServiceStub, "IssueAction", request)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            print(
                f"{args.prog}: to retry without risk of issuing the action twice, "
                f"repeat the command with --idempotency-key {request.idempotency_key}",
                file=sys.stderr,
            )
        raise


def cmd_list_actions(args: argparse.Namespace) -> Iterator[Message]:
    request = enforcement_pb2.ListActionsRequest(tenant=args.tenant)
    yield unary(args, "enforcer", enforcement_pb2_grpc.EnforcementAdminServiceStub, "ListActions", request)


def cmd_revoke(args: argparse.Namespace) -> Iterator[Message]:
    request = enforcement_pb2.RevokeActionRequest(action_id=args.action_id, reason=args.reason)
    yield unary(args, "enforcer", enforcement_pb2_grpc.EnforcementAdminServiceStub, "RevokeAction", request)


def cmd_list_cases(args: argparse.Namespace) -> Iterator[Message]:
    conn = connection(args, "monitor")
    request = monitor_pb2.ListCasesRequest(
        tenant=args.tenant,
        category=args.category,
        action=ACTIONS[args.action] if args.action else 0,
        status=CASE_STATUSES[args.status] if args.status else 0,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    with conn.channel() as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        while True:
            page = stub.ListCases(request, timeout=conn.timeout_s, metadata=conn.metadata())
            yield page
            if not (args.all and page.next_page_token):
                return
            request.page_token = page.next_page_token


def cmd_show_case(args: argparse.Namespace) -> Iterator[Message]:
    request = monitor_pb2.GetCaseRequest(case_id=args.case_id)
    yield unary(args, "monitor", monitor_pb2_grpc.MonitorServiceStub, "GetCase", request)


def cmd_aggregates(args: argparse.Namespace) -> Iterator[Message]:
    request = monitor_pb2.QueryAggregatesRequest(
        window=WINDOWS[args.window],
        tenant=args.tenant,
        category=args.category,
        action=ACTIONS[args.action] if args.action else 0,
        model=args.model,
    )
    yield unary(args, "monitor", monitor_pb2_grpc.MonitorServiceStub, "QueryAggregates", request)


# ---- main -------------------------------------------------------------------------------


def to_json(message: Message) -> str:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        ensure_ascii=False,
    )


def describe_rpc_error(exc: grpc.RpcError, conn_service: str, address: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    name = code.name if code is not None else "ERROR"
    text = f"{name}: {' '.join(details.split())}"
    if code is grpc.StatusCode.UNAVAILABLE:
        text += f" (is the {conn_service} running at {address}? --{conn_service} / SAFEGUARDS_{conn_service.upper()})"
    elif code is grpc.StatusCode.UNAUTHENTICATED:
        text += " (give a token: --token / SAFEGUARDS_TOKEN)"
    return text


SERVICE_OF = {
    cmd_screen: "enforcer",
    cmd_stream: "enforcer",
    cmd_issue: "enforcer",
    cmd_list_actions: "enforcer",
    cmd_revoke: "enforcer",
    cmd_ratelimit: "ratelimit",
    cmd_models: "classifier",
    cmd_classify: "classifier",
    cmd_list_cases: "monitor",
    cmd_show_case: "monitor",
    cmd_aggregates: "monitor",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = args.prog
    out = sys.stdout
    try:
        for message in args.func(args):
            if args.json:
                out.write(to_json(message) + "\n")
            else:
                out.write(output.render(message))
            out.flush()
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        service = SERVICE_OF[args.func]
        print(f"{prog}: error: {describe_rpc_error(exc, service, getattr(args, service))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `safeguards cases list --all | head`
        sys.stderr.close()
        return 0
    return 0
