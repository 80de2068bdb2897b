"""What the monitor keeps of one signal: canonical, protocol-free facts.

A `SafeguardSignal` becomes a `Decision` (what the aggregates count) and, when it
needs a human, a `CaseContent` holding content only as the tenant's data policy
allows. The monitor enforces the data policy again on its side (defence in depth):
a ZERO_RETENTION signal that carried content by mistake still leaves none here,
and a METADATA_ONLY one keeps no snippet.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeguards.v1 import safeguards_pb2, signals_pb2

from services.common.errors import InvalidArgument

ACTIONS = {
    safeguards_pb2.ACTION_ALLOW: "ALLOW",
    safeguards_pb2.ACTION_FLAG: "FLAG",
    safeguards_pb2.ACTION_REDACT: "REDACT",
    safeguards_pb2.ACTION_THROTTLE: "THROTTLE",
    safeguards_pb2.ACTION_BLOCK: "BLOCK",
}
BLOCK = safeguards_pb2.ACTION_BLOCK
#: Decisions of these actions become review cases.
CASE_ACTIONS = frozenset({safeguards_pb2.ACTION_FLAG, safeguards_pb2.ACTION_BLOCK})
#: Reasons that are the consequence of an earlier human or automated action (a
#: suspended account, a kill switch): a decision with only these needs no new case.
ENFORCED_REASON_PREFIXES = ("enforcement.", "kill_switch")
NO_CATEGORY = "none"
MAX_ID_CHARS = 256
#: A degraded signal that names no failed dependency counts under this one.
UNKNOWN_DEPENDENCY = "unknown"
MAX_DEPENDENCIES = 8
MAX_DEPENDENCY_CHARS = 64

STANDARD = signals_pb2.DATA_POLICY_STANDARD
METADATA_ONLY = signals_pb2.DATA_POLICY_METADATA_ONLY
ZERO_RETENTION = signals_pb2.DATA_POLICY_ZERO_RETENTION


@dataclass(frozen=True)
class CaseContent:
    snippet: str = ""
    characters: int = 0
    messages: int = 0
    text_hmac: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Decision:
    decision_id: str
    time_s: float
    tenant: str
    account_hmac: str
    model: str
    action: int
    categories: tuple[str, ...]
    data_policy: int
    surface: int
    policy_version: str
    reasons: tuple[tuple[str, str], ...]
    scores: tuple[tuple[str, float, float, int], ...]
    content: CaseContent
    needs_case: bool
    #: Dependencies the decision was taken without (the policy's fail mode applied).
    failed_dependencies: tuple[str, ...] = ()


def category_of(code: str) -> str:
    """ "classifier.jailbreak" -> "jailbreak"; "pii.card" -> "pii"; "blocklist" -> "blocklist"."""
    head, _, rest = code.partition(".")
    if head == "classifier" and rest:
        return rest
    return head or NO_CATEGORY


def categories_of(reasons: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    found = sorted({category_of(code) for code, _ in reasons})
    return tuple(found) or (NO_CATEGORY,)


def dependencies_of(sig: signals_pb2.SafeguardSignal) -> tuple[str, ...]:
    """The failed dependencies of a degraded decision, bounded in number and length
    (they become alert subjects)."""
    names = sorted({d[:MAX_DEPENDENCY_CHARS] for d in sig.failed_dependencies if d})[:MAX_DEPENDENCIES]
    if names:
        return tuple(names)
    return (UNKNOWN_DEPENDENCY,) if sig.degraded else ()


def content_allowed(sig: signals_pb2.SafeguardSignal) -> CaseContent:
    policy = sig.data_policy
    c = sig.content
    if policy == STANDARD:
        return CaseContent(c.redacted_snippet, c.characters, c.messages, c.text_hmac, sig.request_id)
    if policy == METADATA_ONLY:
        return CaseContent("", c.characters, c.messages, c.text_hmac, sig.request_id)
    # ZERO_RETENTION, and any policy this code does not know: nothing at all.
    return CaseContent()


def is_audit(sig: signals_pb2.SafeguardSignal) -> bool:
    """SURFACE_ADMIN signals audit an administrative call; they are not decisions."""
    return sig.surface == signals_pb2.SURFACE_ADMIN


def decision_from_signal(sig: signals_pb2.SafeguardSignal, fallback_time_s: float) -> Decision:
    """Raises InvalidArgument for a signal that cannot be counted."""
    if not sig.decision_id or len(sig.decision_id) > MAX_ID_CHARS:
        raise InvalidArgument("signal without a usable decision_id")
    if not sig.tenant or len(sig.tenant) > MAX_ID_CHARS:
        raise InvalidArgument("signal without a usable tenant")
    if sig.action not in ACTIONS:
        raise InvalidArgument(f"signal with unknown action {sig.action}")
    reasons = tuple((r.code, r.detail) for r in sig.reasons)
    time_s = sig.time.ToNanoseconds() / 1e9 if sig.HasField("time") else fallback_time_s
    enforced_only = bool(reasons) and all(code.startswith(ENFORCED_REASON_PREFIXES) for code, _ in reasons)
    return Decision(
        decision_id=sig.decision_id,
        time_s=time_s,
        tenant=sig.tenant,
        account_hmac=sig.account_hmac,
        model=sig.model[:MAX_ID_CHARS],
        action=sig.action,
        categories=categories_of(reasons),
        data_policy=sig.data_policy,
        surface=sig.surface,
        policy_version=sig.policy_version,
        reasons=reasons,
        scores=tuple((s.category, s.score, s.threshold, s.action) for s in sig.scores),
        content=content_allowed(sig),
        needs_case=sig.action in CASE_ACTIONS and not enforced_only,
        failed_dependencies=dependencies_of(sig),
    )
