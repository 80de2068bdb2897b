"""Human-readable rendering of the services' answers (the client's default output;
`--json` prints the messages as they are). Enum values lose their type prefix
(ACTION_BLOCK -> BLOCK); times are shown in UTC; text the services return (redacted
messages, snippets, replacements) is printed with control characters escaped, so an
answer cannot rewrite the terminal."""

from __future__ import annotations

from collections.abc import Callable

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from safeguards.v1 import classifier_pb2, enforcement_pb2, monitor_pb2, safeguards_pb2, signals_pb2


def name(enum, value: int, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def action(value: int) -> str:
    return name(safeguards_pb2.Action, value, "ACTION_")


def safe(text: str) -> str:
    """Printable: control characters (ANSI escapes included) shown escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(d) -> str:
    s = d.seconds + d.nanos / 1e9
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def decision_lines(d: safeguards_pb2.Decision, indent: str = "") -> list[str]:
    verdict = name(classifier_pb2.VerdictCompleteness, d.verdict, "VERDICT_COMPLETENESS_")
    if d.verdict_reason:
        verdict += f" ({d.verdict_reason})"
    head = f"{indent}{action(d.action)}  decision {d.decision_id}  policy {d.policy_version or '-'}"
    head += f"  {seconds(d.latency)}  verdict {verdict}"
    if d.answered_by:
        head += f" by {d.answered_by}"
    lines = [head]
    if d.degraded:
        lines.append(f"{indent}  degraded: a dependency failed and the policy's fail mode decided")
    if d.HasField("retry_after"):
        lines.append(f"{indent}  retry after {seconds(d.retry_after)}")
    for r in d.reasons:
        lines.append(f"{indent}  reason {r.code}" + (f": {safe(r.detail)}" if r.detail else ""))
    for s in d.scores:
        lines.append(f"{indent}  {s.category:<20} {s.score:.3f}  threshold {s.threshold:.3f}  -> {action(s.action)}")
    for m in d.redacted_messages:
        lines.append(f"{indent}  redacted {m.role}: {safe(m.content)}")
    return lines


def screen_prompt(r: safeguards_pb2.ScreenPromptResponse) -> list[str]:
    return decision_lines(r.decision)


def screen_completion(r: safeguards_pb2.ScreenCompletionResponse) -> list[str]:
    line = f"chunk {r.chunk_index}: {action(r.action)}"
    if r.cut:
        line += f"  CUT, replacement: {safe(r.replacement)!r}"
    lines = [line]
    if r.HasField("decision"):
        lines += decision_lines(r.decision, "  ")
    return lines


def rate_limit(r: rls_pb2.RateLimitResponse) -> list[str]:
    code = rls_pb2.RateLimitResponse.Code
    lines = [name(code, r.overall_code, "")]
    for i, s in enumerate(r.statuses):
        line = f"  descriptor {i}: {name(code, s.code, '')}"
        if s.HasField("current_limit"):
            unit = rls_pb2.RateLimitResponse.RateLimit.Unit.Name(s.current_limit.unit).lower()
            label = f" {s.current_limit.name}" if s.current_limit.name else ""
            line += f"  limit{label} {s.current_limit.requests_per_unit}/{unit}, remaining {s.limit_remaining}"
        if s.HasField("duration_until_reset"):
            line += f", resets in {seconds(s.duration_until_reset)}"
        lines.append(line)
    for h in r.response_headers_to_add:
        lines.append(f"  {h.key}: {h.value}")
    return lines


def list_models(r: classifier_pb2.ListModelsResponse) -> list[str]:
    lines = [
        f"execution provider {r.execution_provider}, default model {r.default_model}",
        f"limits: {r.limits.max_text_bytes} bytes per text, {r.limits.max_batch_texts} texts, "
        f"{r.limits.max_models} models per request",
    ]
    for m in r.models:
        states = ", ".join(
            f"v{v.version} {name(classifier_pb2.ModelState, v.state, 'MODEL_STATE_')}" for v in m.versions
        )
        lines.append(f"{m.name:<28} {m.platform:<12} serving v{m.serving_version}  [{states}]")
        lines.append(f"  labels: {', '.join(m.labels)}")
        if m.shadow_models:
            lines.append(f"  shadows: {', '.join(m.shadow_models)}")
    return lines


def classify(r: classifier_pb2.ClassifyResponse) -> list[str]:
    lines = []
    for i, text in enumerate(r.results):
        lines.append(f"text {i}:")
        for m in text.models:
            flagged = ", ".join(m.flagged_labels) or "nothing"
            completeness = name(classifier_pb2.VerdictCompleteness, m.completeness, "VERDICT_COMPLETENESS_")
            if m.partial_reason:
                completeness += f": {m.partial_reason}"
            head = f"  {m.model} v{m.version}: flagged {flagged}  ({completeness}"
            head += f", answered by {m.answered_by})" if m.answered_by else ")"
            lines.append(head)
            for s in m.scores:
                lines.append(f"    {s.label:<20} {s.score:.3f}  threshold {s.threshold:.3f}")
    return lines


def enforcement_action(a: enforcement_pb2.EnforcementAction) -> list[str]:
    kind = name(enforcement_pb2.EnforcementKind, a.kind, "ENFORCEMENT_KIND_")
    t = a.target
    target = " ".join(
        f"{k}={v}"
        for k, v in (("tenant", t.tenant), ("account", t.account_hmac), ("model", t.model), ("category", t.category))
        if v
    )
    lines = [f"{a.action_id}  {kind}  {target}"]
    detail = f"  by {a.actor or '-'} at {when(a.issued_at)}, expires {when(a.expires_at)}"
    if a.requests_per_minute:
        detail += f", {a.requests_per_minute} requests/min"
    lines.append(detail)
    lines.append(f"  reason: {safe(a.reason)}")
    return lines


def issue_action(r: enforcement_pb2.IssueActionResponse) -> list[str]:
    return ["issued:", *enforcement_action(r.action)]


def list_actions(r: enforcement_pb2.ListActionsResponse) -> list[str]:
    if not r.actions:
        return ["no actions in force"]
    return [line for a in r.actions for line in enforcement_action(a)]


def revoke_action(r: enforcement_pb2.RevokeActionResponse) -> list[str]:
    if r.revoked:
        return ["revoked"]
    if r.revoked_by:
        return [f"already revoked by {r.revoked_by}: {r.revoke_reason}"]
    return ["already revoked (nothing changed)"]


def case_summary(c: monitor_pb2.ReviewCase) -> str:
    status = name(monitor_pb2.CaseStatus, c.status, "CASE_STATUS_")
    return (
        f"{c.case_id}  {when(c.decided_at)}  {status:<9} {action(c.action):<8} tenant={c.tenant} "
        f"model={c.model or '-'} categories={','.join(c.categories) or '-'}"
    )


def list_cases(r: monitor_pb2.ListCasesResponse) -> list[str]:
    lines = [case_summary(c) for c in r.cases] or ["no cases"]
    if r.next_page_token:
        lines.append(f"more: --page-token {r.next_page_token} (or --all)")
    return lines


def get_case(r: monitor_pb2.GetCaseResponse) -> list[str]:
    c = r.review_case
    lines = [
        case_summary(c),
        f"  region {c.region}, account {c.account_hmac or '-'}, policy {c.policy_version or '-'}, "
        f"surface {name(signals_pb2.Surface, c.surface, 'SURFACE_')}",
        f"  data policy {name(signals_pb2.DataPolicy, c.data_policy, 'DATA_POLICY_')}, "
        f"created {when(c.created_at)}, expires {when(c.expires_at)}",
    ]
    for reason in c.reasons:
        lines.append(f"  reason {reason.code}" + (f": {safe(reason.detail)}" if reason.detail else ""))
    for s in c.scores:
        lines.append(f"  {s.category:<20} {s.score:.3f}  threshold {s.threshold:.3f}  -> {action(s.action)}")
    content = c.content
    if content.redacted_snippet:
        lines.append(f"  snippet: {safe(content.redacted_snippet)}")
    if content.characters or content.messages:
        lines.append(f"  {content.characters} characters in {content.messages} messages")
    return lines


def aggregates(r: monitor_pb2.QueryAggregatesResponse) -> list[str]:
    lines = [f"{when(r.window_start)} .. {when(r.window_end)}"]
    for row in r.rows:
        lines.append(
            f"  {row.count:>8}  tenant={row.tenant} category={row.category} action={action(row.action)} "
            f"model={row.model or '-'}"
        )
    if not r.rows:
        lines.append("  no decisions")
    return lines


RENDERERS: dict[type, Callable[[Message], list[str]]] = {
    safeguards_pb2.ScreenPromptResponse: screen_prompt,
    safeguards_pb2.ScreenCompletionResponse: screen_completion,
    rls_pb2.RateLimitResponse: rate_limit,
    classifier_pb2.ListModelsResponse: list_models,
    classifier_pb2.ClassifyResponse: classify,
    enforcement_pb2.IssueActionResponse: issue_action,
    enforcement_pb2.ListActionsResponse: list_actions,
    enforcement_pb2.RevokeActionResponse: revoke_action,
    monitor_pb2.ListCasesResponse: list_cases,
    monitor_pb2.GetCaseResponse: get_case,
    monitor_pb2.QueryAggregatesResponse: aggregates,
}


def render(message: Message) -> str:
    return "\n".join(RENDERERS[type(message)](message)) + "\n"
