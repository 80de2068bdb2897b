"""Calls to the classifier and the rate limiter under one deadline budget, with
retries inside it (both calls are idempotent: the rate limiter counts a hit only
when its script runs, and a retry after a lost answer at worst counts one more)
and a circuit breaker per dependency. Failures come back as outcomes carrying
why, never as exceptions: the policy's fail mode turns them into a decision."""

from __future__ import annotations

import asyncio
import functools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

from services.common.clients import BreakerOpen, Budget, CircuitBreaker, call_in_budget
from services.common.wire import RLS_DEGRADED_KEY
from services.enforcer.decision import ClassifierOutcome, RateLimitOutcome
from services.enforcer.policy import RateLimitRule

THROTTLE_KEY = "enforcement_throttle"  # descriptor entry of an account throttled by an action
ACCOUNT_THROTTLE_RULE = "enforcement.throttled"


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name.lower()
    if isinstance(exc, BreakerOpen):
        return "circuit_open"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "deadline_exceeded"  # as the gRPC status of the same failure is spelled
    return type(exc).__name__


def _unreachable(exc: BaseException) -> bool:
    """The failure says the dependency is down (the only case fail-open applies to)."""
    if isinstance(exc, BreakerOpen):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class ClassifierLimits:
    """What the classifier accepts (ListModels `limits`); until it answered, its defaults."""

    max_text_bytes: int = 32 * 1024
    max_batch_texts: int = 64


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Cut `text` into pieces of at most `max_bytes` bytes of UTF-8, on character
    boundaries. Linear: one encode, one pass."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return [text] if text else []
    pieces, pos = [], 0
    while pos < len(data):
        end = min(len(data), pos + max_bytes)
        while end < len(data) and end > pos and (data[end] & 0xC0) == 0x80:  # inside a character
            end -= 1
        pieces.append(data[pos:end].decode("utf-8", "surrogatepass"))
        pos = end
    return pieces


@dataclass(frozen=True)
class Segments:
    """The texts one classifier call screens for one decision, and whether they cover
    the whole text (`oversize` is False) or a stated sample of it."""

    texts: list[str]
    oversize: bool


def segment(
    texts: Sequence[str], max_chars: int, limits: ClassifierLimits, rng: random.Random | None = None
) -> Segments:
    """The rule for over-long input on the hot path. `texts` are what one decision
    screens (`textnorm.classifier_texts`: the text, then what was decoded from it); up to
    `max_chars` characters in all, each is screened whole (in pieces the classifier
    accepts); more, and they are screened joined, by the head, the tail and two windows at
    random offsets in between, each `max_chars // 4` characters: where an attacker hides
    the payload cannot be known in advance, and the whole is re-screened in the background
    (retro-screening). Never unscreened."""
    if sum(len(t) for t in texts) <= max_chars:
        chosen, oversize = list(texts), False
    else:
        text = "\n".join(texts)
        part = max(1, max_chars // 4)
        rng = rng or random.SystemRandom()
        middle = sorted(rng.randrange(part, len(text) - 2 * part + 1) for _ in range(2))
        chosen = [text[:part], *(text[m : m + part] for m in middle), text[-part:]]
        oversize = True
    texts = [p for c in chosen for p in split_utf8(c, limits.max_text_bytes)]
    if len(texts) > limits.max_batch_texts:  # tiny classifier limits: head and tail first
        keep = limits.max_batch_texts
        texts = texts[: (keep + 1) // 2] + texts[len(texts) - keep // 2 :] if keep > 1 else texts[:1]
        oversize = True
    return Segments(texts, oversize)


def whole(texts: Sequence[str], limits: ClassifierLimits) -> list[list[str]]:
    """Every piece of `texts`, in requests the classifier accepts (retro-screening)."""
    pieces = [p for t in texts for p in split_utf8(t, limits.max_text_bytes)] or [""]
    n = max(1, limits.max_batch_texts)
    return [pieces[i : i + n] for i in range(0, len(pieces), n)]


class ClassifierCaller:
    def __init__(self, channel: grpc.aio.Channel, breaker: CircuitBreaker, max_chars: int = 16_000) -> None:
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        self.breaker = breaker
        self.max_chars = max_chars
        self.limits = ClassifierLimits()
        #: Every served model's labels (ListModels), empty until it answered.
        self.labels: frozenset[str] = frozenset()
        self._refreshing: asyncio.Task | None = None

    def _refresh_limits_soon(self) -> None:
        """One ListModels at a time, however many requests were refused meanwhile (a
        flood of oversize input must not become a flood of ListModels calls); the task
        is held so it is not garbage-collected mid-call."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh_limits())

    async def refresh_limits(self, timeout_s: float = 2.0) -> ClassifierLimits:
        """Read the classifier's request limits (ListModels), so the enforcer never sends
        what it would refuse, and its models' labels (what a force-block may name).
        Keeps the last known ones when it cannot answer."""
        try:
            response = await self._stub.ListModels(classifier_pb2.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return self.limits
        self.labels = frozenset(label for m in response.models for label in m.labels)
        lim = response.limits
        if lim.max_text_bytes and lim.max_batch_texts:
            self.limits = ClassifierLimits(lim.max_text_bytes, lim.max_batch_texts)
        return self.limits

    async def classify(
        self, texts: Sequence[str], models: tuple[str, ...], budget: Budget, *, tenant: str = ""
    ) -> ClassifierOutcome:
        """One decision's verdict under its budget: its texts (or, when over-long, the
        `segment` rule's sample of them) in one request, scores the max over pieces."""
        seg = segment(texts, self.max_chars, self.limits)
        outcome = await self._call(seg.texts or [""], models, budget, tenant=tenant, background=False)
        if seg.oversize and not outcome.failed:
            outcome = replace(outcome, partial=_join(outcome.partial, "oversize"))
        return outcome

    async def classify_whole(
        self, texts: Sequence[str], models: tuple[str, ...], timeout_s: float, *, tenant: str = ""
    ) -> ClassifierOutcome:
        """Every piece of the texts, as background work (retro-screening): verdicts of
        all requests merged; not through the breaker, which guards the hot path."""
        outcomes = []
        for batch in whole(texts, self.limits):
            budget = Budget.start(timeout_s)
            outcomes.append(await self._call(batch, models, budget, tenant=tenant, background=True))
            if outcomes[-1].failed:
                return outcomes[-1]
        return merge_classifier_outcomes(outcomes)

    async def _call(
        self,
        texts: list[str],
        models: tuple[str, ...],
        budget: Budget,
        *,
        tenant: str,
        background: bool,
    ) -> ClassifierOutcome:
        """One Classify call. Hot-path calls go through the breaker; background ones
        (retro-screening) do not: their long waits say nothing about serving health."""
        request = classifier_pb2.ClassifyRequest(texts=texts, models=list(models), tenant=tenant, background=background)

        async def call(timeout: float):
            return await self._stub.Classify(request, timeout=timeout)

        try:
            if not background:
                response = await self.breaker.call(lambda: call_in_budget(call, budget), budget.remaining())
            else:
                response = await call_in_budget(call, budget)
        except Exception as exc:  # every failure is an outcome; the policy decides
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                self._refresh_limits_soon()  # the classifier's limits may have changed
            return ClassifierOutcome(failed=_why(exc), unreachable=_unreachable(exc))
        pairs: list[tuple[str, float, float]] = []
        versions: dict[str, int] = {}
        partial, answered_by = "", ""
        uncertain_from = 0.0
        for per_text in response.results:
            for m in per_text.models:
                pairs.extend((s.label, s.score, s.threshold) for s in m.scores)
                versions[m.answered_by or m.model] = m.version
                if m.completeness == classifier_pb2.VERDICT_COMPLETENESS_PARTIAL:
                    partial = _join(partial, m.partial_reason or "partial")
                    answered_by = m.answered_by
                    uncertain_from = _lowest(uncertain_from, m.uncertain_from)
                elif not partial:
                    answered_by = m.answered_by or answered_by
        scores, thresholds = strongest(pairs)
        return ClassifierOutcome(
            scores=scores,
            model_thresholds=thresholds,
            model_versions=versions,
            partial=partial,
            answered_by=answered_by,
            uncertain_from=uncertain_from,
        )


def _lowest(a: float, b: float) -> float:
    """The lower of two band edges, 0 meaning none reported."""
    return min(a, b) if a and b else a or b


def strongest(pairs: Iterable[tuple[str, float, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per label, the (score, threshold) of the piece or model that came closest to (or went
    furthest past) its own threshold: several pieces of one text, or several models, keep
    each score with the threshold it was given (a partial piece's is raised to its cascade's
    band edge), so a score is never judged against another piece's threshold. Labels
    without a threshold (0: it never flags, e.g. benign) keep their highest score."""
    best: dict[str, tuple[float, float]] = {}
    for label, score, threshold in pairs:
        margin = score - threshold if threshold > 0 else score - 1.0
        held = best.get(label)
        if held is None or margin > (held[0] - held[1] if held[1] > 0 else held[0] - 1.0):
            best[label] = (score, threshold)
    return {k: v[0] for k, v in best.items()}, {k: v[1] for k, v in best.items() if v[1] > 0}


def _join(a: str, b: str) -> str:
    """Reasons joined once each, in order ("deadline", "deadline,oversize")."""
    parts = [p for p in a.split(",") if p]
    return ",".join(parts if b in parts else [*parts, b])


def merge_classifier_outcomes(outcomes: list[ClassifierOutcome]) -> ClassifierOutcome:
    """Outcomes of several requests over one text: per label the strongest score with its
    own threshold (`strongest`), partial if any was."""
    if len(outcomes) == 1:
        return outcomes[0]
    partial = ""
    for o in outcomes:
        for r in o.partial.split(","):
            if r:
                partial = _join(partial, r)
    scores, thresholds = strongest(
        (label, score, o.model_thresholds.get(label, 0.0)) for o in outcomes for label, score in o.scores.items()
    )
    return ClassifierOutcome(
        scores=scores,
        model_thresholds=thresholds,
        model_versions={k: v for o in outcomes for k, v in o.model_versions.items()},
        partial=partial,
        answered_by=next((o.answered_by for o in outcomes if o.partial), outcomes[-1].answered_by),
        uncertain_from=functools.reduce(_lowest, (o.uncertain_from for o in outcomes), 0.0),
    )


class RateLimitCaller:
    def __init__(self, channel: grpc.aio.Channel, breaker: CircuitBreaker) -> None:
        self._stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        self.breaker = breaker

    async def check(
        self,
        rule: RateLimitRule,
        context: dict[str, str],
        tokens: int,
        budget: Budget,
        account_rpm: int | None = None,
    ) -> RateLimitOutcome:
        """`account_rpm`: the account is throttled by an enforcement action; one more
        descriptor carries that limit as an Envoy override (the RLS keys it by the
        account's HMAC), and its over-limit comes back as rule ACCOUNT_THROTTLE_RULE."""
        descriptors = []
        for d in rule.descriptors:
            desc = ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=context.get(k, "")) for k in d.entries]
            )
            if d.hits_tokens:
                desc.hits_addend.value = max(1, tokens)
            descriptors.append(desc)
        if account_rpm:
            desc = ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=THROTTLE_KEY, value=context.get("account", ""))]
            )
            desc.limit.requests_per_unit = account_rpm
            desc.limit.unit = ratelimit_unit_pb2.MINUTE
            descriptors.append(desc)
        request = rls_pb2.RateLimitRequest(domain=rule.domain, descriptors=descriptors)

        async def call(timeout: float):
            return await self._stub.ShouldRateLimit(request, timeout=timeout)

        try:
            response = await self.breaker.call(lambda: call_in_budget(call, budget), budget.remaining())
        except Exception as exc:
            return RateLimitOutcome(failed=_why(exc))
        if response.overall_code != rls_pb2.RateLimitResponse.OVER_LIMIT:
            if RLS_DEGRADED_KEY in response.dynamic_metadata.fields:
                # The rate limiter answered without its store: as if it had not answered,
                # so the tenant policy's fail mode decides and the decision says why.
                return RateLimitOutcome(failed="store_unavailable")
            return RateLimitOutcome()
        over = [s for s in response.statuses if s.code == rls_pb2.RateLimitResponse.OVER_LIMIT]
        rule_name = over[0].current_limit.name if over else ""
        last = response.statuses[-1] if len(response.statuses) == len(descriptors) else None
        if account_rpm and last is not None and last.code == rls_pb2.RateLimitResponse.OVER_LIMIT:
            over, rule_name = [last], ACCOUNT_THROTTLE_RULE
        retry = 0.0
        for h in response.response_headers_to_add:
            if h.key.lower() == "retry-after" and h.value.isdigit():
                retry = float(h.value)
        if not retry and over:
            retry = math.ceil(over[0].duration_until_reset.ToTimedelta().total_seconds())
        return RateLimitOutcome(over_limit=True, rule=rule_name, retry_after_s=retry)
