"""What the monitor keeps of one signal: canonical, protocol-free facts.

A `SafeguardSignal` becomes a `Decision` (what the aggregates count) and, when it
needs a human, a `CaseContent` holding content only as the tenant's data policy
allows. The monitor enforces the data policy again on its side (defence in depth):
a ZERO_RETENTION signal that carried content by mistake still leaves none here,
and a METADATA_ONLY one keeps no snippet.

Every text field is cleaned here, at the monitor's edge, before it can reach
PostgreSQL: NUL characters (which PostgreSQL text refuses, and which would make a
whole batch fail) are removed, identifiers are bounded (`MAX_ID_CHARS`: longer
decision ids, tenants and account pseudonyms make the signal invalid; longer
models, request ids and policy versions are cut), reason codes and details are
cut, and scores that are not finite numbers are dropped. A record PostgreSQL still
refuses is parked by the consumer (services.monitor.deadletters).

A SURFACE_RETRO_SCREEN signal is not a decision: it is the background re-screen
(full cascade) of a decision taken with a PARTIAL or NONE verdict. It becomes a
`Decision` with `retro_of` set, so the store can attach it to the decision it
re-screened and count its catch, and never counts it as a decision itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

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

#: Verdict completeness (safeguards.v1.VerdictCompleteness) and its label.
FULL = classifier_pb2.VERDICT_COMPLETENESS_FULL
PARTIAL = classifier_pb2.VERDICT_COMPLETENESS_PARTIAL
NO_VERDICT = classifier_pb2.VERDICT_COMPLETENESS_NONE
VERDICTS = {FULL: "full", PARTIAL: "partial", NO_VERDICT: "none"}
RETRO = signals_pb2.SURFACE_RETRO_SCREEN
SHADOW_MODEL = signals_pb2.SURFACE_SHADOW_MODEL
#: ShadowResult kinds: a candidate policy, a shadow model.
SHADOW_POLICY_KIND = "policy"
SHADOW_MODEL_KIND = "model"
MAX_REASON_CHARS = 256
MAX_CODE_CHARS = 128
MAX_STAGE_CHARS = 64
SURFACES = {v: n.removeprefix("SURFACE_").lower() for n, v in signals_pb2.Surface.items() if v}

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
class ShadowResult:
    """A shadow's would-be action next to the live one (no content, no account)."""

    kind: str  # SHADOW_POLICY_KIND | SHADOW_MODEL_KIND
    #: The candidate policy's version, or the shadow model's name ...
    candidate: str
    #: ... and the model's versions ("" for a policy): "4", or "stage:1,stage:2" for several.
    version: str
    live_action: int
    shadow_action: int
    #: The shadow decided without something it needed (a policy's `incomplete`; a
    #: model's verdict that is not FULL).
    incomplete: bool


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
    #: FULL, PARTIAL or NO_VERDICT (never UNSPECIFIED: see `verdict_of`).
    verdict: int = FULL
    #: Why the verdict is PARTIAL or NONE (bounded; the enforcer's words, no content).
    verdict_reason: str = ""
    #: The classifier cascade stage that answered.
    answered_by: str = ""
    #: End-to-end decision latency; None when the signal carried none.
    latency_s: float | None = None
    #: SURFACE_RETRO_SCREEN only: the decision this record re-screened ...
    retro_of: str = ""
    #: ... whether the full verdict calls for a stricter action than it took ...
    retro_catch: bool = False
    #: ... and the action it took.
    original_action: int = 0
    #: SURFACE_SHADOW_MODEL only: the decision whose text the shadow model classified.
    shadow_of: str = ""
    #: A candidate policy's (on a decision) or a shadow model's (on its follow-up) result.
    shadow: ShadowResult | None = None

    @property
    def is_retro(self) -> bool:
        """A re-screen follow-up: never counted as a decision."""
        return bool(self.retro_of)

    @property
    def is_follow_up(self) -> bool:
        """A re-screen or a shadow model's follow-up: never counted as a decision."""
        return bool(self.retro_of or self.shadow_of)


def clean(text: str, limit: int | None = None) -> str:
    """`text` without NUL characters (PostgreSQL text cannot hold them), cut to `limit`."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if limit is None else text[:limit]


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
    names = sorted({clean(d, MAX_DEPENDENCY_CHARS) for d in sig.failed_dependencies} - {""})[:MAX_DEPENDENCIES]
    if names:
        return tuple(names)
    return (UNKNOWN_DEPENDENCY,) if sig.degraded else ()


def content_allowed(sig: signals_pb2.SafeguardSignal) -> CaseContent:
    policy = sig.data_policy
    c = sig.content
    text_hmac, request_id = clean(c.text_hmac, MAX_ID_CHARS), clean(sig.request_id, MAX_ID_CHARS)
    if policy == STANDARD:
        return CaseContent(clean(c.redacted_snippet), c.characters, c.messages, text_hmac, request_id)
    if policy == METADATA_ONLY:
        return CaseContent("", c.characters, c.messages, text_hmac, request_id)
    # ZERO_RETENTION, and any policy this code does not know: nothing at all.
    return CaseContent()


def verdict_of(sig: signals_pb2.SafeguardSignal) -> int:
    """The verdict completeness a decision rests on. Producers older than the field
    send UNSPECIFIED: their decisions were FULL unless taken without the classifier."""
    if sig.verdict in VERDICTS:
        return sig.verdict
    return NO_VERDICT if "classifier" in sig.failed_dependencies else FULL


def latency_of(sig: signals_pb2.SafeguardSignal) -> float | None:
    if not sig.HasField("latencies") or not sig.latencies.HasField("total"):
        return None
    return max(sig.latencies.total.ToNanoseconds() / 1e9, 0.0)


def is_audit(sig: signals_pb2.SafeguardSignal) -> bool:
    """SURFACE_ADMIN signals audit an administrative call; they are not decisions."""
    return sig.surface == signals_pb2.SURFACE_ADMIN


def _model_version(sig: signals_pb2.SafeguardSignal, name: str) -> str:
    versions = sig.model_versions
    if name in versions:
        return str(versions[name])
    return clean(",".join(f"{k}:{versions[k]}" for k in sorted(versions)), MAX_ID_CHARS)


def shadow_of_signal(sig: signals_pb2.SafeguardSignal) -> ShadowResult | None:
    """The shadow result a signal carries, if any: a SURFACE_SHADOW_MODEL follow-up's,
    or a decision's candidate policy (a shadow with an unknown action is ignored)."""
    if sig.surface == SHADOW_MODEL:
        name = clean(sig.shadow_model, MAX_ID_CHARS)
        return ShadowResult(
            SHADOW_MODEL_KIND, name, _model_version(sig, name), sig.original_action, sig.action, verdict_of(sig) != FULL
        )
    if (
        not sig.HasField("shadow")
        or sig.shadow.action not in ACTIONS
        or sig.surface in (RETRO, signals_pb2.SURFACE_ADMIN)
    ):
        return None
    version = clean(sig.shadow.policy_version, MAX_ID_CHARS)
    if not version:
        return None
    return ShadowResult(SHADOW_POLICY_KIND, version, "", sig.action, sig.shadow.action, bool(sig.shadow.incomplete))


def decision_from_signal(sig: signals_pb2.SafeguardSignal, fallback_time_s: float) -> Decision:
    """Raises InvalidArgument for a signal that cannot be counted."""
    decision_id, tenant, account = clean(sig.decision_id), clean(sig.tenant), clean(sig.account_hmac)
    if not decision_id or len(decision_id) > MAX_ID_CHARS:
        raise InvalidArgument("signal without a usable decision_id")
    if not tenant or len(tenant) > MAX_ID_CHARS:
        raise InvalidArgument("signal without a usable tenant")
    if len(account) > MAX_ID_CHARS:
        raise InvalidArgument("signal with an account pseudonym too long to be one")
    if sig.action not in ACTIONS:
        raise InvalidArgument(f"signal with unknown action {sig.action}")
    reasons = tuple((clean(r.code, MAX_CODE_CHARS), clean(r.detail, MAX_REASON_CHARS)) for r in sig.reasons)
    time_s = sig.time.ToNanoseconds() / 1e9 if sig.HasField("time") else fallback_time_s
    enforced_only = bool(reasons) and all(code.startswith(ENFORCED_REASON_PREFIXES) for code, _ in reasons)
    retro = sig.surface == RETRO
    shadow_model = sig.surface == SHADOW_MODEL
    follow_up = retro or shadow_model
    linked = clean(sig.retro_of_decision_id) if follow_up else ""
    if follow_up and (not linked or len(linked) > MAX_ID_CHARS):
        raise InvalidArgument("follow-up signal without a usable retro_of_decision_id")
    if retro and sig.original_action and sig.original_action not in ACTIONS:
        raise InvalidArgument(f"retro-screen signal with unknown original action {sig.original_action}")
    if shadow_model and sig.original_action not in ACTIONS:
        raise InvalidArgument(f"shadow-model signal with unknown original action {sig.original_action}")
    if shadow_model and not clean(sig.shadow_model):
        raise InvalidArgument("shadow-model signal without its shadow_model")
    return Decision(
        decision_id=decision_id,
        time_s=time_s,
        tenant=tenant,
        account_hmac=account,
        model=clean(sig.model, MAX_ID_CHARS),
        action=sig.action,
        categories=categories_of(reasons),
        data_policy=sig.data_policy,
        surface=sig.surface,
        policy_version=clean(sig.policy_version, MAX_ID_CHARS),
        reasons=reasons,
        scores=tuple(
            (clean(s.category, MAX_CODE_CHARS), s.score, s.threshold, s.action)
            for s in sig.scores
            if math.isfinite(s.score) and math.isfinite(s.threshold)
        ),
        content=content_allowed(sig),
        # A re-screen opens no case of its own: it is attached to the decision it
        # re-screened (a catch opens the case there: store.catch_cases), and the
        # automated rules act on catches.
        needs_case=sig.action in CASE_ACTIONS and not enforced_only and not follow_up,
        failed_dependencies=dependencies_of(sig),
        verdict=verdict_of(sig),
        verdict_reason=clean(sig.verdict_reason, MAX_REASON_CHARS),
        answered_by=clean(sig.answered_by, MAX_STAGE_CHARS),
        latency_s=latency_of(sig),
        retro_of=linked if retro else "",
        retro_catch=retro and sig.retro_catch,
        original_action=sig.original_action if follow_up else 0,
        shadow_of=linked if shadow_model else "",
        shadow=shadow_of_signal(sig),
    )
