"""A Screener for completion-session unit tests: real policies, detectors, decision
code and signal building; the classifier is an in-process stand-in that records the
window texts it was asked about (the e2e tests use the real service)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from safeguards.v1 import signals_pb2

from services.common.privacy import RegionalKey
from services.common.reloader import ReloadingConfig
from services.enforcer import policy
from services.enforcer.decision import ClassifierOutcome
from services.enforcer.requests import Identity, Limits
from services.enforcer.retro import BackgroundScreener, RetroStats
from services.enforcer.screening import Screener
from services.enforcer.stats import ScreenStats

POLICY = """
tenant: default
version: "unit.1"
data_policy: {data_policy}
deadline_ms: 200
classifier: {{models: [prompt_guard], fail_mode: {fail}}}
categories:
  harmful: {{threshold: 0.5, action: BLOCK}}
pii: {{action: REDACT, kinds: [EMAIL], block: [PRIVATE_KEY]}}
blocklist: {{action: BLOCK, terms: [plutonium recipe]}}
completion: {{every_chars: {every}, window_chars: {window}, replacement: "[cut]"{completion_models}}}
"""


class RecordingClassifier:
    """Scores `harmful` 0.9 when the text contains "HARMFUL", else 0.1; or fails."""

    def __init__(self, fail: str = "") -> None:
        self.texts: list[str] = []  # each call's first text: the window itself
        self.calls: list[list[str]] = []  # each call's texts: the window, then its payloads
        self.models: list[tuple[str, ...]] = []
        self.fail = fail

    async def classify(self, texts, models, budget, *, tenant: str = "") -> ClassifierOutcome:
        self.texts.append(texts[0])
        self.calls.append(list(texts))
        self.models.append(tuple(models))
        if self.fail:
            return ClassifierOutcome(failed=self.fail, unreachable=self.fail == "unavailable")
        score = 0.9 if any("HARMFUL" in t for t in texts) else 0.1
        return ClassifierOutcome(scores={"harmful": score}, model_versions={"prompt_guard": 3})


class ListPublisher:
    def __init__(self) -> None:
        self.records = []

    def publish(self, record) -> None:
        self.records.append(record)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def signals(self) -> list[signals_pb2.SafeguardSignal]:
        return [signals_pb2.SafeguardSignal.FromString(r.value) for r in self.records]


class NoRateLimit:
    async def check(self, *args, **kw):  # these policies have no limits: never called
        raise AssertionError("this screening must not call the rate limiter")


def screener_with_background(
    policies_dir: Path, cl, **background
) -> tuple[Screener, BackgroundScreener, ListPublisher, CollectorRegistry]:
    """A Screener over the policy files in `policies_dir` with a real BackgroundScreener
    (retro-screening and shadow-model jobs) on classifier `cl`; `background` sets its
    queue bounds (max_jobs, shadow_max_jobs)."""
    policies = ReloadingConfig(policies_dir, policy.load)
    policies.load_initial()
    pub = ListPublisher()
    key = RegionalKey.from_bytes("unit", b"k" * 32)
    registry = CollectorRegistry()
    retro = BackgroundScreener(
        classifier=cl,
        publisher=pub,
        key=key,
        region="unit",
        snippet_chars=40,
        stats=RetroStats(registry),
        timeout_s=7.0,
        **background,
    )
    screener = Screener(
        region="unit",
        policies=policies,
        key=key,
        classifier=cl,
        ratelimit=NoRateLimit(),
        publisher=pub,
        stats=ScreenStats(registry),
        limits=Limits(max_prompt_bytes=100_000, max_messages=10, classifier_max_chars=1000, snippet_chars=40),
        retro=retro,
    )
    return screener, retro, pub, registry


def make_screener(
    tmp: Path,
    *,
    every: int = 10,
    window: int = 30,
    fail: str = "open",
    data_policy: str = "STANDARD",
    classifier: RecordingClassifier | None = None,
    completion_models: tuple[str, ...] = (),
) -> tuple[Screener, RecordingClassifier, ListPublisher]:
    d = tmp / f"policies-{every}-{window}-{fail}-{data_policy}-{'-'.join(completion_models)}"
    d.mkdir()
    extra = f", models: [{', '.join(completion_models)}]" if completion_models else ""
    (d / "default.yaml").write_text(
        POLICY.format(every=every, window=window, fail=fail, data_policy=data_policy, completion_models=extra)
    )
    policies = ReloadingConfig(d, policy.load)
    policies.load_initial()
    cl = classifier or RecordingClassifier()
    pub = ListPublisher()
    screener = Screener(
        region="unit",
        policies=policies,
        key=RegionalKey.from_bytes("unit", b"k" * 32),
        classifier=cl,
        ratelimit=NoRateLimit(),
        publisher=pub,
        stats=ScreenStats(CollectorRegistry()),
        limits=Limits(max_prompt_bytes=10_000, max_messages=10, classifier_max_chars=1000, snippet_chars=40),
    )
    return screener, cl, pub


IDENT = Identity(tenant="acme", account="acct-raw-7", project="proj", model="m", request_id="r1")
