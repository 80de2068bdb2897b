"""envoyproxy/ratelimit's YAML configuration format, parsed into an immutable rule
tree, plus our extensions.

The format (one domain per file; a directory holds many files):

    domain: llm
    descriptors:
      - key: tenant                 # required
        value: acme                 # optional: without it, every value gets its own counter
        rate_limit:                 # optional
          name: acme-rpm            # optional, reported in current_limit.name
          unit: minute              # second|minute|hour|day|week|month|year
          requests_per_unit: 600
          unlimited: false          # true: never limited (no unit/requests_per_unit then)
          algorithm: gcra           # extension: gcra (default, no boundary bursts) | fixed_window (envoy semantics)
          burst: 600                # extension, gcra only: bucket capacity (default requests_per_unit)
        concurrency_limit:          # extension: slots for long streams (ConcurrencyLimitService)
          max_concurrent: 4
          lease_seconds: 60
        shadow_mode: false          # over-limit is reported in metrics but answered OK
        detailed_metric: false      # metrics carry the descriptor values (bounded)
        descriptors: [...]          # nested descriptors, same shape

Every error names the file and the path inside it, so operators can fix a
broken file from the log line alone; a golden-file test asserts the texts.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from services.common.errors import ConfigError
from services.common.reloader import yaml_files


class Unit(enum.Enum):
    """Units in envoy's RateLimitResponse.RateLimit.Unit, with their length in seconds."""

    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400
    WEEK = 7 * 86400
    MONTH = 30 * 86400
    YEAR = 365 * 86400

    @property
    def seconds(self) -> int:
        return self.value


class Algorithm(enum.Enum):
    GCRA = "gcra"
    FIXED_WINDOW = "fixed_window"


UNIT_NAMES = ", ".join(u.name.lower() for u in Unit)
_DESCRIPTOR_FIELDS = {
    "key",
    "value",
    "rate_limit",
    "concurrency_limit",
    "shadow_mode",
    "detailed_metric",
    "descriptors",
}
_RATE_LIMIT_FIELDS = {"name", "unit", "requests_per_unit", "unlimited", "algorithm", "burst"}
_CONCURRENCY_FIELDS = {"max_concurrent", "lease_seconds"}
MAX_LEASE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RateLimit:
    """One limit: `requests_per_unit` hits per `unit` (hits_addend counts as that many)."""

    requests_per_unit: int
    unit: Unit
    name: str = ""
    algorithm: Algorithm = Algorithm.GCRA
    burst: int = 0  # gcra capacity; 0 means requests_per_unit
    unlimited: bool = False

    @property
    def capacity(self) -> int:
        return self.burst or self.requests_per_unit


@dataclass(frozen=True)
class ConcurrencyLimit:
    max_concurrent: int
    lease_seconds: float


@dataclass(frozen=True)
class Rule:
    """A node of the descriptor tree. `path` is its stable name for metrics and logs."""

    key: str
    value: str
    path: str
    rate_limit: RateLimit | None = None
    concurrency: ConcurrencyLimit | None = None
    shadow_mode: bool = False
    detailed_metric: bool = False
    children: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class DomainConfig:
    domain: str
    source: str
    children: Mapping[str, Rule]


@dataclass(frozen=True)
class RateLimitConfig:
    """The whole live configuration: domains by name. Immutable; reload swaps it."""

    domains: Mapping[str, DomainConfig]
    version: str = ""

    def match(self, domain: str, entries: Iterable[tuple[str, str]]) -> Rule | None:
        """Envoy's matching: walk the tree by `key_value`, else `key`; the rule that
        applies is the one matched at the *last* entry (None: no limit)."""
        dom = self.domains.get(domain)
        if dom is None:
            return None
        level: Mapping[str, Rule] = dom.children
        entries = list(entries)
        matched: Rule | None = None
        for i, (key, value) in enumerate(entries):
            node = level.get(f"{key}_{value}") or level.get(key)
            if node is None:
                return None
            if i == len(entries) - 1:
                matched = node
            elif not node.children:
                return None
            level = node.children
        return matched


def _err(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where + ': ' if where else ''}{message}")


def _check_fields(source: str, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _err(source, where, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _positive_int(source: str, where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _err(source, where, f"{name} must be a positive integer, got {value!r}")
    return value


def _bool(source: str, where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(source, where, f"{name} must be true or false, got {value!r}")
    return value


def _parse_rate_limit(source: str, where: str, data: Any) -> RateLimit:
    if not isinstance(data, Mapping):
        raise _err(source, where, "rate_limit must be a mapping")
    _check_fields(source, where, data, _RATE_LIMIT_FIELDS)
    name = data.get("name", "")
    if not isinstance(name, str):
        raise _err(source, where, f"name must be a string, got {name!r}")
    unlimited = _bool(source, where, "unlimited", data.get("unlimited", False))
    if unlimited:
        if "unit" in data or "requests_per_unit" in data:
            raise _err(source, where, "unlimited: true cannot be combined with unit or requests_per_unit")
        return RateLimit(requests_per_unit=0, unit=Unit.SECOND, name=name, unlimited=True)
    unit_name = data.get("unit")
    if not isinstance(unit_name, str) or unit_name.upper() not in Unit.__members__:
        raise _err(source, where, f"unit {unit_name!r} is not one of {UNIT_NAMES}")
    rpu = _positive_int(source, where, "requests_per_unit", data.get("requests_per_unit"))
    algo_name = data.get("algorithm", Algorithm.GCRA.value)
    try:
        algorithm = Algorithm(algo_name)
    except ValueError:
        raise _err(source, where, f"algorithm {algo_name!r} is not one of gcra, fixed_window") from None
    burst = 0
    if "burst" in data:
        if algorithm is not Algorithm.GCRA:
            raise _err(source, where, "burst applies to the gcra algorithm only")
        burst = _positive_int(source, where, "burst", data["burst"])
    return RateLimit(requests_per_unit=rpu, unit=Unit[unit_name.upper()], name=name, algorithm=algorithm, burst=burst)


def _parse_concurrency(source: str, where: str, data: Any) -> ConcurrencyLimit:
    if not isinstance(data, Mapping):
        raise _err(source, where, "concurrency_limit must be a mapping")
    _check_fields(source, where, data, _CONCURRENCY_FIELDS)
    max_concurrent = _positive_int(source, where, "max_concurrent", data.get("max_concurrent"))
    lease = data.get("lease_seconds", 60)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_LEASE_SECONDS:
        raise _err(source, where, f"lease_seconds must be a number in (0, {MAX_LEASE_SECONDS}], got {lease!r}")
    return ConcurrencyLimit(max_concurrent=max_concurrent, lease_seconds=float(lease))


def _parse_descriptors(source: str, where: str, items: Any, parent_path: str) -> Mapping[str, Rule]:
    if items is None:
        return MappingProxyType({})
    if not isinstance(items, list):
        raise _err(source, where, "descriptors must be a list")
    out: dict[str, Rule] = {}
    for i, item in enumerate(items):
        here = f"{where}.descriptors[{i}]" if where else f"descriptors[{i}]"
        if not isinstance(item, Mapping):
            raise _err(source, here, "descriptor must be a mapping")
        _check_fields(source, here, item, _DESCRIPTOR_FIELDS)
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise _err(source, here, "key must be a non-empty string")
        value = item.get("value", "")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise _err(source, here, f"value must be a string, got {value!r}")
        value = str(value)
        composite = f"{key}_{value}" if value else key
        if composite in out:
            raise _err(source, here, f"duplicate descriptor {composite!r} at this level")
        path = f"{parent_path}.{composite}"
        rate_limit = (
            _parse_rate_limit(source, f"{here}.rate_limit", item["rate_limit"]) if "rate_limit" in item else None
        )
        concurrency = (
            _parse_concurrency(source, f"{here}.concurrency_limit", item["concurrency_limit"])
            if "concurrency_limit" in item
            else None
        )
        out[composite] = Rule(
            key=key,
            value=value,
            path=path,
            rate_limit=rate_limit,
            concurrency=concurrency,
            shadow_mode=_bool(source, here, "shadow_mode", item.get("shadow_mode", False)),
            detailed_metric=_bool(source, here, "detailed_metric", item.get("detailed_metric", False)),
            children=_parse_descriptors(source, here, item.get("descriptors"), path),
        )
    return MappingProxyType(out)


def parse_domain(text: str, source: str) -> DomainConfig:
    """Parse one file's text; raises ConfigError naming `source` and the bad path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _err(source, "", f"not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, Mapping):
        raise _err(source, "", "top level must be a mapping with 'domain' and 'descriptors'")
    _check_fields(source, "", data, {"domain", "descriptors"})
    domain = data.get("domain")
    if not isinstance(domain, str) or not domain:
        raise _err(source, "", "domain must be a non-empty string")
    return DomainConfig(
        domain=domain, source=source, children=_parse_descriptors(source, "", data.get("descriptors"), domain)
    )


def load(path: Path) -> RateLimitConfig:
    """Load a file or directory into one config; any bad file fails the whole load."""
    domains: dict[str, DomainConfig] = {}
    digest: list[str] = []
    for file in yaml_files(path):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file.name}: cannot read: {exc}") from None
        dom = parse_domain(text, file.name)
        if dom.domain in domains:
            raise ConfigError(f"{file.name}: duplicate domain {dom.domain!r} (also in {domains[dom.domain].source})")
        domains[dom.domain] = dom
        digest.append(f"{file.name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}")
    return RateLimitConfig(domains=MappingProxyType(domains), version=",".join(digest))
