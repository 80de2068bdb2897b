"""Tenant policies: what the enforcer does with scores, detector findings, rate
limits and failed dependencies, per tenant. Loaded from YAML (one tenant per file,
a directory reloaded on change), validated at load with errors naming the file and
the field, and turned into immutable objects the decision code reads.

    tenant: acme                    # or "default": the policy of tenants without a file
    version: "2026-11-23.1"         # reported in every decision and signal
    data_policy: STANDARD           # STANDARD | METADATA_ONLY | ZERO_RETENTION
    deadline_ms: 50                 # budget for the whole decision
    classifier:
      models: [prompt_guard]
      fail_mode: open               # no verdict because the classifier is unreachable (connection
                                    # refused, UNAVAILABLE, breaker open): open = ALLOW, marked
                                    # degraded and re-screened in the background; closed = BLOCK
      partial:                      # a verdict that is not FULL while the classifier is up
        uncertain_above: band       # PARTIAL (an earlier cascade stage answered, or an oversize text
        uncertain_action: FLAG      #   was screened in part): decide on its scores, and take this
                                    #   action when no category fired but one scores this high
                                    #   (a number, or band: from the answering cascade's own
                                    #   escalation band, whatever the model build chose)
        no_verdict_action: FLAG     # NONE for another reason (e.g. the caller's deadline was too
                                    #   short for any stage); fail_mode closed still BLOCKs
      shadow_models:                # models run in shadow on a sample of live prompts, in the
        - name: prompt_guard_ngram  #   background after the decision (never enforced): their scores
          sample_rate: 0.1          #   and the action this policy would take on them go into a
                                    #   SURFACE_SHADOW_MODEL follow-up signal (issue 13, promotion)
    ratelimit:
      domain: llm
      fail_mode: open
      descriptors:                  # entries from the request: tenant, account, model, project
        - entries: [tenant]
        - entries: [tenant, model]
          hits: tokens              # hits_addend = estimated tokens (default: 1 per request)
    categories:                     # classifier labels
      jailbreak: {threshold: model, action: BLOCK}   # "model": the model's own threshold
      harmful: {threshold: 0.9, action: BLOCK}
    pii:
      action: REDACT                # for the kinds below
      kinds: [EMAIL, PHONE, CARD, SSN, IBAN]
      block: [PRIVATE_KEY, API_KEY] # kinds that BLOCK whatever `action` says
    blocklist: {action: BLOCK, terms: [...]}
    completion: {every_chars: 200, window_chars: 2000, replacement: "..."}

Validation is pydantic's (extra fields forbidden, so typos fail loudly).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import ConfigError
from services.common.reloader import yaml_files
from services.enforcer.detectors import Blocklist
from services.enforcer.detectors.pii import PiiKind

DEFAULT_TENANT = "default"


class Action(enum.IntEnum):
    """Ordered by severity: when several rules fire, the most severe action wins."""

    ALLOW = 1
    FLAG = 2
    REDACT = 3
    THROTTLE = 4
    BLOCK = 5


class DataPolicy(enum.Enum):
    STANDARD = "STANDARD"
    METADATA_ONLY = "METADATA_ONLY"
    ZERO_RETENTION = "ZERO_RETENTION"


class FailMode(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


ActionName = Literal["ALLOW", "FLAG", "REDACT", "THROTTLE", "BLOCK"]
PiiName = Literal[tuple(k.value for k in PiiKind)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Partial(_Strict):
    #: A number, or `band`: the answering cascade's own uncertain band (its low edge).
    uncertain_above: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["band"] = "band"
    uncertain_action: ActionName = "FLAG"
    no_verdict_action: ActionName = "FLAG"


class _ShadowModel(_Strict):
    name: str = Field(min_length=1, max_length=128)
    sample_rate: float = Field(ge=0.0, le=1.0)


class _Classifier(_Strict):
    models: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["prompt_guard"], min_length=1)
    fail_mode: Literal["open", "closed"] = "open"
    partial: _Partial = Field(default_factory=_Partial)
    shadow_models: list[_ShadowModel] = Field(default_factory=list, max_length=4)

    @field_validator("shadow_models")
    @classmethod
    def _distinct(cls, v):
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError("a shadow model is named twice")
        return v


class _Descriptor(_Strict):
    entries: list[Literal["tenant", "account", "model", "project"]] = Field(min_length=1)
    hits: Literal["one", "tokens"] = "one"


class _RateLimit(_Strict):
    domain: str = Field(min_length=1)
    fail_mode: Literal["open", "closed"] = "open"
    descriptors: list[_Descriptor] = Field(min_length=1)


class _Category(_Strict):
    threshold: float | Literal["model"] = "model"
    action: ActionName

    @field_validator("threshold")
    @classmethod
    def _in_unit_interval(cls, v):
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("threshold must be between 0 and 1, or 'model'")
        return v


class _Pii(_Strict):
    action: ActionName = "REDACT"
    kinds: list[PiiName] = Field(default_factory=list)
    block: list[PiiName] = Field(default_factory=list)


class _Blocklist(_Strict):
    action: ActionName = "BLOCK"
    terms: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class _Completion(_Strict):
    every_chars: int = Field(200, ge=1)
    window_chars: int = Field(2000, ge=1)
    replacement: str = "I can't continue with this response."
    #: The classifier models that screen completion windows (a model trained on model
    #: output); unset: the prompt's `classifier.models`.
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)


class _PolicyFile(_Strict):
    tenant: str = Field(min_length=1)
    version: str = Field(min_length=1)
    data_policy: Literal["STANDARD", "METADATA_ONLY", "ZERO_RETENTION"] = "STANDARD"
    deadline_ms: int = Field(50, ge=1, le=10_000)
    classifier: _Classifier = Field(default_factory=_Classifier)
    ratelimit: _RateLimit | None = None
    categories: dict[str, _Category] = Field(default_factory=dict)
    pii: _Pii = Field(default_factory=_Pii)
    blocklist: _Blocklist = Field(default_factory=_Blocklist)
    completion: _Completion = Field(default_factory=_Completion)


@dataclass(frozen=True)
class CategoryRule:
    category: str
    threshold: float | None  # None: the classifier model's own threshold
    action: Action


@dataclass(frozen=True)
class DescriptorRule:
    entries: tuple[str, ...]
    hits_tokens: bool


@dataclass(frozen=True)
class RateLimitRule:
    domain: str
    fail_mode: FailMode
    descriptors: tuple[DescriptorRule, ...]


@dataclass(frozen=True)
class PartialRule:
    """What a verdict that is not FULL means while the classifier is reachable."""

    uncertain_above: float | None  # None: the cascade's band (`band`)
    uncertain_action: Action
    no_verdict_action: Action


@dataclass(frozen=True)
class ShadowModelRule:
    """A classifier model run in shadow on a sample (0..1) of the tenant's prompts."""

    name: str
    sample_rate: float


@dataclass(frozen=True)
class CompletionRule:
    every_chars: int
    window_chars: int
    replacement: str
    #: The models that screen completion windows (and their background re-screens).
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    tenant: str
    version: str
    source: str
    data_policy: DataPolicy
    deadline_s: float
    classifier_models: tuple[str, ...]
    classifier_fail_mode: FailMode
    partial: PartialRule
    ratelimit: RateLimitRule | None
    categories: Mapping[str, CategoryRule]
    pii_action: Action
    pii_kinds: frozenset[str]
    pii_block_kinds: frozenset[str]
    blocklist: Blocklist | None
    blocklist_action: Action
    completion: CompletionRule
    shadow_models: tuple[ShadowModelRule, ...] = ()

    @property
    def screened_pii_kinds(self) -> frozenset[str]:
        return self.pii_kinds | self.pii_block_kinds


@dataclass(frozen=True)
class PolicySet:
    """Every tenant's policy; tenants without a file get the default one."""

    policies: Mapping[str, Policy]
    default: Policy

    def for_tenant(self, tenant: str) -> Policy:
        return self.policies.get(tenant, self.default)


def _format(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {where + ': ' if where else ''}{first['msg']}{more}"


def parse_policy(text: str, source: str) -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    try:
        f = _PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(source, exc)) from None
    rl = None
    if f.ratelimit is not None:
        rl = RateLimitRule(
            domain=f.ratelimit.domain,
            fail_mode=FailMode(f.ratelimit.fail_mode),
            descriptors=tuple(DescriptorRule(tuple(d.entries), d.hits == "tokens") for d in f.ratelimit.descriptors),
        )
    return Policy(
        tenant=f.tenant,
        version=f.version,
        source=source,
        data_policy=DataPolicy(f.data_policy),
        deadline_s=f.deadline_ms / 1000,
        classifier_models=tuple(f.classifier.models),
        classifier_fail_mode=FailMode(f.classifier.fail_mode),
        partial=PartialRule(
            None if f.classifier.partial.uncertain_above == "band" else float(f.classifier.partial.uncertain_above),
            Action[f.classifier.partial.uncertain_action],
            Action[f.classifier.partial.no_verdict_action],
        ),
        ratelimit=rl,
        categories=MappingProxyType(
            {
                name: CategoryRule(name, None if c.threshold == "model" else float(c.threshold), Action[c.action])
                for name, c in f.categories.items()
            }
        ),
        pii_action=Action[f.pii.action],
        pii_kinds=frozenset(f.pii.kinds),
        pii_block_kinds=frozenset(f.pii.block),
        blocklist=Blocklist(f.blocklist.terms) if f.blocklist.terms else None,
        blocklist_action=Action[f.blocklist.action],
        completion=CompletionRule(
            f.completion.every_chars,
            f.completion.window_chars,
            f.completion.replacement,
            tuple(f.completion.models or f.classifier.models),
        ),
        shadow_models=tuple(ShadowModelRule(m.name, m.sample_rate) for m in f.classifier.shadow_models),
    )


def load(path: Path) -> PolicySet:
    """Load a file or directory; any bad file fails the whole load (last good stays)."""
    policies: dict[str, Policy] = {}
    for file in yaml_files(path):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file.name}: cannot read: {exc}") from None
        policy = parse_policy(text, file.name)
        if policy.tenant in policies:
            raise ConfigError(
                f"{file.name}: duplicate tenant {policy.tenant!r} (also in {policies[policy.tenant].source})"
            )
        policies[policy.tenant] = policy
    if DEFAULT_TENANT not in policies:
        raise ConfigError(f"{path}: no policy for tenant {DEFAULT_TENANT!r} (the policy of tenants without a file)")
    return PolicySet(policies=MappingProxyType(policies), default=policies[DEFAULT_TENANT])
