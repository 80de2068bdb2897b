"""The canonical request and result types of the enforcer's core. Every edge (the native
gRPC API, ext_authz, ext_proc) converts its messages into these and back; nothing here
knows a protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.tls import CallerIdentity
from services.enforcer.decision import Outcome
from services.enforcer.detectors import Redactor

#: Longest identity field (tenant, account, project, model, region, request id): they become
#: rate-limit descriptors, metric labels and Kafka keys, which all have limits of their own.
MAX_IDENTITY_CHARS = 256


@dataclass(frozen=True)
class Identity:
    tenant: str
    account: str = ""
    project: str = ""
    model: str = ""
    region: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class PromptRequest:
    identity: Identity
    messages: tuple[tuple[str, str], ...]  # (role, content)
    estimated_tokens: int = 0
    surface: int = 1  # signals_pb2.Surface
    #: Who sent it, as the transport proved (mTLS SANs): checked against the tenants that
    #: caller may speak for (services/common/callers.py).
    caller: CallerIdentity = field(default_factory=CallerIdentity)
    #: Seen by an observe-only processor (Envoy's ext_proc observability mode): decided
    #: and recorded as usual, but nobody enforces the answer; the signal says so.
    observe_only: bool = False


@dataclass(frozen=True)
class ScreenResult:
    decision_id: str
    outcome: Outcome
    policy_version: str
    redacted_messages: tuple[tuple[str, str], ...]
    latency_s: float
    #: On REDACT: masks what this decision's tier-0 run found, in any field of the body
    #: (an edge rewriting a provider body uses it; the detectors do not run again).
    redactor: Redactor | None = None


@dataclass(frozen=True)
class Limits:
    max_prompt_bytes: int
    max_messages: int
    classifier_max_chars: int
    snippet_chars: int
    #: Texts longer than this run the tier-0 detectors on a worker thread, so one large
    #: body never holds the event loop (and every other tenant's decision) for long.
    tier0_inline_chars: int = 8192


def check_identity(ident: Identity, region: str) -> None:
    """Refuse what no gateway sends: no tenant, over-long fields or fields with control
    characters (a NUL in a field poisons every store downstream), and a request for
    another region (data never leaves its region)."""
    if not ident.tenant:
        raise InvalidArgument("tenant is required")
    for name in ("tenant", "account", "project", "model", "region", "request_id"):
        value = getattr(ident, name)
        if len(value) > MAX_IDENTITY_CHARS:
            raise InvalidArgument(f"{name} is {len(value)} characters (max {MAX_IDENTITY_CHARS})")
        if not value.isprintable():
            raise InvalidArgument(f"{name} contains control characters")
    if ident.region and ident.region != region:
        raise FailedPrecondition(f"request is for region {ident.region!r}; this enforcer serves {region!r} only")
