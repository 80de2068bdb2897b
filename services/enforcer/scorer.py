"""Scoring one text: the tier-0 detectors in-process, then the classifier under the
decision's deadline budget. The prompt path (screening.py) and the completion path
(streaming.py) both score through one `Scorer`; neither knows how the other decides."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from services.common.clients import Budget
from services.enforcer.decision import ClassifierOutcome
from services.enforcer.detectors import Blocklist, Tier0Result, run_tier0
from services.enforcer.policy import Policy
from services.enforcer.requests import Limits
from services.enforcer.stats import ScreenStats
from services.enforcer.upstream import ClassifierCaller


class Scorer:
    def __init__(self, classifier: ClassifierCaller, limits: Limits, stats: ScreenStats) -> None:
        self.classifier = classifier
        self.limits = limits
        self._stats = stats
        # One thread: large texts queue behind each other instead of taking every core.
        self._tier0_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier0")

    async def tier0(self, text: str, policy: Policy, *, blocklist: bool = True) -> Tier0Result:
        """The policy's tier-0 detectors (its blocklist unless `blocklist` is false)."""
        return await self.detect(text, policy.blocklist if blocklist else None, sorted(policy.screened_pii_kinds))

    async def detect(self, text: str, blocklist: Blocklist | None, pii_kinds: list[str]) -> Tier0Result:
        """The tier-0 detectors `pii_kinds` and `blocklist` (None: skipped); on a worker
        thread when the text is large (see Limits)."""
        if len(text) <= self.limits.tier0_inline_chars:
            return run_tier0(text, blocklist, pii_kinds)
        return await asyncio.get_running_loop().run_in_executor(self._tier0_pool, run_tier0, text, blocklist, pii_kinds)

    async def classify(
        self, texts: Sequence[str], policy: Policy, budget: Budget, *, tenant: str, completion: bool = False
    ) -> ClassifierOutcome:
        """The policy's classifier models (its completion models for a `completion`
        window) on `texts` (`textnorm.classifier_texts`: the text and what was decoded
        from it; the verdict is the worst over them) within `budget`; a call that did not
        answer is counted here, once, whatever path asked."""
        models = policy.completion.models if completion else policy.classifier_models
        outcome = await self.classifier.classify(texts, models, budget, tenant=tenant)
        if outcome.failed:
            self._stats.dependency_failures.labels("classifier", outcome.failed).inc()
        return outcome

    def close(self) -> None:
        self._tier0_pool.shutdown(wait=False, cancel_futures=True)
