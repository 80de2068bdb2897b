"""One SafeguardSignal per decision, holding content only as the tenant's data
policy allows (docs/ARCHITECTURE.md "Data residency and privacy"):

- STANDARD: a PII-masked, truncated snippet, sizes and a keyed hash;
- METADATA_ONLY: sizes and a keyed hash of the text;
- ZERO_RETENTION: nothing derived from content beyond scores, and no stable raw
  identifier (no request id, no project id); the account only as a regional HMAC,
  which every policy uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

from services.common.pbtime import duration, timestamp
from services.common.privacy import RegionalKey
from services.common.spool import Record
from services.common.topics import signals_topic
from services.enforcer.decision import Outcome, Verdict
from services.enforcer.detectors import mask
from services.enforcer.policy import DataPolicy, Policy
from services.enforcer.shadow import ShadowOutcome

ACTION_TO_PB = {
    1: safeguards_pb2.ACTION_ALLOW,
    2: safeguards_pb2.ACTION_FLAG,
    3: safeguards_pb2.ACTION_REDACT,
    4: safeguards_pb2.ACTION_THROTTLE,
    5: safeguards_pb2.ACTION_BLOCK,
}
VERDICT_TO_PB = {
    Verdict.FULL: classifier_pb2.VERDICT_COMPLETENESS_FULL,
    Verdict.PARTIAL: classifier_pb2.VERDICT_COMPLETENESS_PARTIAL,
    Verdict.NONE: classifier_pb2.VERDICT_COMPLETENESS_NONE,
}
DATA_POLICY_TO_PB = {
    DataPolicy.STANDARD: signals_pb2.DATA_POLICY_STANDARD,
    DataPolicy.METADATA_ONLY: signals_pb2.DATA_POLICY_METADATA_ONLY,
    DataPolicy.ZERO_RETENTION: signals_pb2.DATA_POLICY_ZERO_RETENTION,
}


@dataclass(frozen=True)
class SignalInput:
    decision_id: str
    time_s: float
    region: str
    tenant: str
    account_hmac: str
    project: str
    model: str
    request_id: str
    surface: int
    text: str
    messages: int
    findings: tuple
    outcome: Outcome
    policy: Policy
    latencies: dict[str, float]
    model_versions: dict[str, int]
    prompt_decision_id: str = ""
    trace_id: str = ""
    shadow: ShadowOutcome | None = None
    observe_only: bool = False
    #: Follow-ups (SURFACE_RETRO_SCREEN, SURFACE_SHADOW_MODEL): the decision screened again, and its action.
    retro_of_decision_id: str = ""
    original_action: int = 0
    #: SURFACE_SHADOW_MODEL: the shadow model whose scores the follow-up carries.
    shadow_model: str = ""


def build_signal(s: SignalInput, key: RegionalKey, snippet_chars: int) -> signals_pb2.SafeguardSignal:
    zero = s.policy.data_policy is DataPolicy.ZERO_RETENTION
    sig = signals_pb2.SafeguardSignal(
        decision_id=s.decision_id,
        time=timestamp(s.time_s),
        region=s.region,
        tenant=s.tenant,
        account_hmac=s.account_hmac,
        project="" if zero else s.project,
        model=s.model,
        surface=s.surface,
        action=ACTION_TO_PB[int(s.outcome.action)],
        data_policy=DATA_POLICY_TO_PB[s.policy.data_policy],
        policy_version=s.policy.version,
        degraded=s.outcome.degraded,
        failed_dependencies=list(s.outcome.failed_dependencies),
        request_id="" if zero else s.request_id,
        trace_id="" if zero else s.trace_id,
        observe_only=s.observe_only,
        prompt_decision_id=s.prompt_decision_id,
        verdict=VERDICT_TO_PB[s.outcome.verdict],
        verdict_reason=s.outcome.verdict_reason,
        answered_by=s.outcome.answered_by,
    )
    if s.retro_of_decision_id:
        sig.retro_of_decision_id = s.retro_of_decision_id
        sig.original_action = ACTION_TO_PB[s.original_action]
        if s.surface == signals_pb2.SURFACE_RETRO_SCREEN:
            sig.retro_catch = int(s.outcome.action) > s.original_action
    if s.shadow_model:
        sig.shadow_model = s.shadow_model
    for r in s.outcome.reasons:
        sig.reasons.add(code=r.code, detail=r.detail)
    if s.shadow is not None:
        sig.shadow.policy_version = s.shadow.policy_version
        sig.shadow.action = ACTION_TO_PB[int(s.shadow.outcome.action)]
        sig.shadow.incomplete = s.shadow.incomplete
        for r in s.shadow.outcome.reasons:
            sig.shadow.reasons.add(code=r.code, detail=r.detail)
    for c in s.outcome.scores:
        sig.scores.add(category=c.category, score=c.score, threshold=c.threshold, action=ACTION_TO_PB[int(c.action)])
    sig.model_versions.update(s.model_versions)
    for name, seconds in s.latencies.items():
        getattr(sig.latencies, name).CopyFrom(duration(seconds))
    if s.policy.data_policy is DataPolicy.STANDARD:
        sig.content.redacted_snippet = mask(s.text, s.findings)[:snippet_chars]
    if not zero:
        sig.content.characters = len(s.text)
        sig.content.messages = s.messages
        sig.content.text_hmac = key.text(s.text)
    return sig


def signal_record(sig: signals_pb2.SafeguardSignal) -> Record:
    return Record(
        topic=signals_topic(sig.region),
        key=sig.tenant.encode(),
        value=sig.SerializeToString(),
        record_id=sig.decision_id,
        headers=(("type", b"safeguards.v1.SafeguardSignal"),),
    )
