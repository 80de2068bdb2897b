"""Completion screening as the text streams, protocol-free (docs/ARCHITECTURE.md,
"A request's walk"). The native ScreenCompletion stream and Envoy's
ext_proc response path both drive one `CompletionSession` per completion.

Sliding window: whenever `every_chars` new characters have arrived since the last
screen, the last `window_chars` characters are screened again (tier-0 detectors and
the classifier under the policy's deadline budget; no rate-limit call: the prompt
paid for the request). A chunk too large for one window to reach back to the last
screened offset is covered by overlapping windows, so no text skips screening. A
BLOCK-level verdict cuts the stream: the caller sends the policy's replacement
instead, and the session accepts no more text. `finish()` screens the unscreened
tail. Feeding text when no window is due costs an append and a length check.

Exactly one SafeguardSignal per completion, at the cut, at `finish()`, or, when the
client goes away mid-stream, at `abandon()` with what is known by then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.clients import Budget
from services.common.errors import FailedPrecondition, InvalidArgument
from services.enforcer.decision import CategoryScore, ClassifierOutcome, EnforcementVerdict, Outcome, Reason, decide
from services.enforcer.detectors import Tier0Result, run_tier0
from services.enforcer.detectors.textnorm import classifier_texts
from services.enforcer.policy import Action, Policy
from services.enforcer.recorder import Decided, DecisionRecorder
from services.enforcer.requests import Identity, ScreenResult
from services.enforcer.scorer import Scorer

ABANDONED = Reason("completion.abandoned", "the client went away before the completion ended")
DRAINED = Reason("completion.drained", "the enforcer was shutting down: the stream ended before the completion did")


def window_ends(screened_end: int, length: int, every: int, window: int, *, final: bool = False) -> list[int]:
    """End offsets of the windows to screen now, ascending; each window is
    text[max(0, end - window):end].

    A window is due when `every` characters arrived since `screened_end` (or, with
    `final`, when any did). The newest window ends at `length`; when it cannot reach
    back to `screened_end`, more windows end every `window // 2` characters before it
    (half-window overlap) until the earliest one does."""
    new = length - screened_end
    if new <= 0 or (not final and new < every):
        return []
    ends = [length]
    step = max(1, window // 2)
    while ends[-1] - window > screened_end:
        ends.append(ends[-1] - step)
    ends.reverse()
    return ends


def merge_outcomes(outcomes: list[Outcome]) -> Outcome:
    """The stream's outcome so far: the most severe action, every distinct reason,
    the highest score per category, degraded if any window was."""
    if len(outcomes) == 1:
        return outcomes[0]
    reasons: dict[Reason, None] = {}
    scores: dict[str, CategoryScore] = {}
    failed: dict[str, None] = {}
    for o in outcomes:
        reasons.update(dict.fromkeys(o.reasons))
        failed.update(dict.fromkeys(o.failed_dependencies))
        for s in o.scores:
            if s.category not in scores or s.score > scores[s.category].score:
                scores[s.category] = s
    action = max((o.action for o in outcomes), default=Action.ALLOW)
    worst = max(outcomes, key=lambda o: o.verdict)
    return Outcome(
        action=action,
        reasons=tuple(reasons),
        scores=tuple(scores[c] for c in sorted(scores)),
        redact=False,  # text already sent cannot be redacted
        degraded=any(o.degraded for o in outcomes),
        failed_dependencies=tuple(failed),
        retry_after_s=max((o.retry_after_s for o in outcomes), default=0.0) if action is Action.THROTTLE else 0.0,
        verdict=worst.verdict,
        verdict_reason=worst.verdict_reason,
        answered_by=worst.answered_by,
    )


def _window_texts(window: str, tier0: Tier0Result, limit: int) -> list[str]:
    """What the classifier screens for one window: its normalised text (its last `limit`
    characters) and what was decoded from it, as for a prompt (`classifier_texts`)."""
    if tier0.normalized is None:
        return [window[-limit:]]
    texts = classifier_texts(tier0.normalized)
    texts[0] = texts[0][-limit:]
    return texts


NO_OUTCOME = Outcome(Action.ALLOW, (), (), False, False, ())
NO_CLASSIFIER = ClassifierOutcome()

#: Every chunk is scanned by the blocking tier-0 detectors (secrets, never-allowed
#: identifiers, a blocking blocklist) together with this many characters before it, so
#: a finding that straddles chunks is seen in the chunk that completes it, and that chunk
#: is replaced rather than sent. It must exceed the longest blocking finding that needs
#: its end to match (API keys, tokens, blocklist terms; a PEM private key matches on its
#: BEGIN line); the cost per chunk is bounded by it plus the chunk.
CHUNK_OVERLAP_CHARS = 256


class EnforcementLookup(Protocol):
    def verdict(self, tenant: str, account_hmac: str, model: str) -> EnforcementVerdict | None: ...

    def forced_categories(self, tenant: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class ChunkVerdict:
    """What to do with the chunk just fed (or with the end of the stream)."""

    chunk_index: int
    action: Action  # the stream's most severe action so far
    cut: bool = False
    replacement: str = ""
    #: Set on the verdict that cuts and on the one `finish()` returns.
    result: ScreenResult | None = None
    #: Windows screened for this chunk (0 when none was due).
    windows: int = 0
    #: True when the stream was already cut and this chunk was dropped unscreened.
    refused: bool = False


class CompletionSession:
    """One streamed completion. Not safe for concurrent `feed` calls: feed, await,
    feed (each stream protocol delivers chunks in order)."""

    def __init__(
        self,
        scorer: Scorer,
        recorder: DecisionRecorder,
        enforcement: EnforcementLookup,
        identity: Identity,
        policy: Policy,
        *,
        account_hmac: str,
        surface: int,
        prompt_decision_id: str = "",
        max_bytes: int = 0,
        caller_remaining: Callable[[], float | None] | None = None,
        observe_only: bool = False,
    ) -> None:
        self._scorer = scorer
        self._recorder = recorder
        self._enforcement = enforcement
        self.identity = identity
        self.policy = policy
        self.account_hmac = account_hmac
        self.surface = surface
        self.prompt_decision_id = prompt_decision_id
        self.decision_id = uuid.uuid4().hex
        self._max_bytes = max_bytes
        self._caller_remaining = caller_remaining
        self.observe_only = observe_only
        self._parts: list[str] = []
        self._length = 0  # characters
        self._bytes = 0
        self._screened_end = 0
        self._chunk_scanned_end = 0  # end of the text the per-chunk tier-0 scan has seen
        self._chunks = 0
        self._outcomes: list[Outcome] = []
        self._models: dict[str, int] = {}
        self._latencies = {"tier0": 0.0, "classifier": 0.0, "total": 0.0}
        self._cut: ChunkVerdict | None = None
        self._result: ScreenResult | None = None
        self.windows_screened = 0

    # ---- state -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Cut, finished or abandoned: the signal is out and no text is accepted."""
        return self._result is not None

    @property
    def cut(self) -> bool:
        return self._cut is not None

    @property
    def characters(self) -> int:
        return self._length

    @property
    def screened_end(self) -> int:
        return self._screened_end

    @property
    def replacement(self) -> str:
        """What the tenant's policy shows in place of a cut completion."""
        return self.policy.completion.replacement

    # ---- feeding -----------------------------------------------------------------
    async def feed(self, text: str) -> ChunkVerdict:
        index = self._chunks
        self._chunks += 1
        if self._cut is not None:
            return ChunkVerdict(index, Action.BLOCK, cut=True, replacement=self._cut.replacement, refused=True)
        if self._result is not None:
            raise FailedPrecondition("the completion has already ended")
        if self._max_bytes:
            self._bytes += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if self._bytes > self._max_bytes:
                raise InvalidArgument(f"completion is over {self._max_bytes} bytes")
        if text:
            self._parts.append(text)
            self._length += len(text)
            cut = await self._scan_chunk(index)
            if cut is not None:
                return cut
        c = self.policy.completion
        ends = window_ends(self._screened_end, self._length, c.every_chars, c.window_chars)
        if not ends:
            return ChunkVerdict(index, self._action())
        return await self._screen(index, ends)

    async def finish(self) -> ChunkVerdict:
        """Screen the unscreened tail, emit the signal, and return the last verdict."""
        index = max(0, self._chunks - 1)
        if self._cut is not None:
            return self._cut
        if self._result is not None:
            raise FailedPrecondition("the completion has already ended")
        c = self.policy.completion
        ends = window_ends(self._screened_end, self._length, c.every_chars, c.window_chars, final=True)
        if ends:
            verdict = await self._screen(index, ends)
            if verdict.cut:
                return verdict
        result = self._close()
        return ChunkVerdict(index, self._action(), result=result, windows=len(ends))

    def abandon(self) -> None:
        """The stream ended without `finish()` (client gone, error): emit the one
        signal with what is known. Idempotent; a no-op once the session is closed."""
        if self._result is None:
            self._close(ending=ABANDONED)

    def end_early(self, reason: Reason) -> ScreenResult:
        """Close the stream before the completion ended (e.g. DRAINED): the one signal,
        with what is known and `reason`. The caller writes the stream's ending."""
        if self._result is not None:
            return self._result
        return self._close(ending=reason)

    # ---- screening ---------------------------------------------------------------
    def _action(self) -> Action:
        return max((o.action for o in self._outcomes), default=Action.ALLOW)

    def _window_text(self, end: int) -> str:
        """text[max(0, end - window):end]."""
        return self._slice(max(0, end - self.policy.completion.window_chars), end)

    def _slice(self, start: int, end: int) -> str:
        """text[start:end], joining only the parts it spans."""
        pieces: list[str] = []
        pos = self._length
        for part in reversed(self._parts):
            part_start = pos - len(part)
            if part_start >= end:
                pos = part_start
                continue
            pieces.append(part[max(0, start - part_start) : end - part_start])
            pos = part_start
            if part_start <= start:
                break
        pieces.reverse()
        return "".join(pieces)

    async def _scan_chunk(self, index: int) -> ChunkVerdict | None:
        """The blocking tier-0 detectors on the text that just arrived (with
        CHUNK_OVERLAP_CHARS before it): a secret or a blocked term cuts the stream in the
        chunk that completes it, before that chunk is sent, not a window later."""
        policy = self.policy
        kinds = sorted(policy.pii_block_kinds & policy.screened_pii_kinds)
        blocklist = policy.blocklist if policy.blocklist_action is Action.BLOCK else None
        start = max(0, self._chunk_scanned_end - CHUNK_OVERLAP_CHARS)
        self._chunk_scanned_end = self._length
        if not kinds and not blocklist:
            return None
        t0 = time.perf_counter()
        text = self._slice(start, self._length)
        found = await self._scorer.detect(text, blocklist, kinds)
        self._latencies["tier0"] += time.perf_counter() - t0
        self._latencies["total"] += time.perf_counter() - t0
        if not found.findings and not found.blocklist_hits:
            return None
        ident = self.identity
        outcome = decide(
            policy,
            found,
            NO_CLASSIFIER,
            None,
            forced_categories=self._enforcement.forced_categories(ident.tenant),
            enforcement=self._enforcement.verdict(ident.tenant, self.account_hmac, ident.model),
        )
        if outcome.action is not Action.BLOCK:
            return None
        self._outcomes.append(outcome)
        return self._cut_at(index, windows=0)

    async def _screen(self, index: int, ends: list[int]) -> ChunkVerdict:
        policy, ident = self.policy, self.identity
        t0 = time.perf_counter()
        verdict = self._enforcement.verdict(ident.tenant, self.account_hmac, ident.model)
        texts = [self._window_text(e) for e in ends]
        tier0s: list[Tier0Result] = [run_tier0(t, policy.blocklist, sorted(policy.screened_pii_kinds)) for t in texts]
        t1 = time.perf_counter()
        self._latencies["tier0"] += t1 - t0
        remaining = self._caller_remaining() if self._caller_remaining else None
        budget = Budget.start(policy.deadline_s, remaining)
        limit = self._scorer.limits.classifier_max_chars
        classified = await asyncio.gather(
            *(
                self._scorer.classify(
                    _window_texts(t, t0r, limit),
                    policy,
                    budget,
                    tenant=ident.tenant,
                    completion=True,
                )
                for t, t0r in zip(texts, tier0s, strict=True)
            )
        )
        self._latencies["classifier"] += time.perf_counter() - t1
        forced = self._enforcement.forced_categories(ident.tenant)
        for t0r, cl in zip(tier0s, classified, strict=True):
            self._models.update(cl.model_versions)
            self._outcomes.append(decide(policy, t0r, cl, None, forced_categories=forced, enforcement=verdict))
        self._screened_end = ends[-1]
        self.windows_screened += len(ends)
        self._latencies["total"] += time.perf_counter() - t0
        action = self._action()
        if action is Action.BLOCK:
            return self._cut_at(index, windows=len(ends))
        return ChunkVerdict(index, action, windows=len(ends))

    def _cut_at(self, index: int, *, windows: int) -> ChunkVerdict:
        result = self._close()
        self._cut = ChunkVerdict(
            index,
            Action.BLOCK,
            cut=True,
            replacement=self.policy.completion.replacement,
            result=result,
            windows=windows,
        )
        return self._cut

    # ---- the one signal ----------------------------------------------------------
    def _close(self, *, ending: Reason | None = None) -> ScreenResult:
        policy, ident = self.policy, self.identity
        outcome = merge_outcomes(self._outcomes) if self._outcomes else NO_OUTCOME
        if ending is not None:
            outcome = dataclasses.replace(outcome, reasons=(*outcome.reasons, ending), redact=False)
        text = "".join(self._parts)
        self._parts = [text] if text else []
        # The snippet is the start of the completion, masked; PII is looked for in a
        # prefix long enough to hold any finding that starts inside the snippet.
        prefix = text[: self._recorder.snippet_chars + policy.completion.window_chars]
        findings = run_tier0(prefix, None, sorted(policy.screened_pii_kinds)).findings if prefix else ()
        self._recorder.record(
            Decided(
                decision_id=self.decision_id,
                identity=ident,
                account_hmac=self.account_hmac,
                surface=self.surface,
                policy=policy,
                outcome=outcome,
                text=text,
                messages=1,
                findings=findings,
                latencies=dict(self._latencies),
                models=dict(self._models),
                # Windows screened on less than a full verdict: the whole completion again,
                # in the background (the classifier part only: tier 0 saw every window),
                # normalised and decoded there as each window was here.
                classify_texts=(text,),
                classify_raw=True,
                prompt_decision_id=self.prompt_decision_id,
                observe_only=self.observe_only,
                log_fields={
                    "cut": outcome.action is Action.BLOCK,
                    "abandoned": ending is ABANDONED,
                    "drained": ending is DRAINED,
                    "characters": self._length,
                    "windows": self.windows_screened,
                },
            ),
            forced_categories=self._enforcement.forced_categories(ident.tenant),
        )
        self._result = ScreenResult(self.decision_id, outcome, policy.version, (), self._latencies["total"])
        return self._result
