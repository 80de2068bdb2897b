"""Rate-limit metrics per rule, named after envoyproxy/ratelimit's stats.

The `rule` label is the rule's path in the config tree (e.g. `llm.tenant.model`),
bounded by configuration; with `detailed_metric: true` it carries the descriptor
values too, capped by BoundedLabels so a flood of distinct values cannot explode
cardinality.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.metrics import BoundedLabels


class LimiterStats:
    def __init__(self, registry: CollectorRegistry, max_rule_labels: int = 500) -> None:
        labels = ["domain", "rule"]
        self.total_hits = Counter(
            "ratelimit_total_hits", "Hits counted (hits_addend summed).", labels, registry=registry
        )
        self.within_limit = Counter("ratelimit_within_limit", "Hits within the limit.", labels, registry=registry)
        self.over_limit = Counter("ratelimit_over_limit", "Hits over the limit.", labels, registry=registry)
        self.near_limit = Counter(
            "ratelimit_near_limit", "Hits within the limit but past the near-limit ratio.", labels, registry=registry
        )
        self.shadow_over_limit = Counter(
            "ratelimit_shadow_mode", "Hits over a shadow-mode limit (answered OK).", labels, registry=registry
        )
        self.over_limit_cached = Counter(
            "ratelimit_over_limit_with_local_cache",
            "Hits over the limit answered from the local over-limit cache.",
            labels,
            registry=registry,
        )
        self.degraded = Counter(
            "ratelimit_degraded_decisions",
            "Decisions made without Redis, by the fail mode applied.",
            ["domain", "mode"],
            registry=registry,
        )
        self.leases = Counter(
            "ratelimit_concurrency_leases",
            "Concurrency lease calls by outcome.",
            ["domain", "rule", "outcome"],
            registry=registry,
        )
        self.config_loads = Counter(
            "ratelimit_config_loads", "Configuration loads by result.", ["result"], registry=registry
        )
        self.config_rules = Gauge(
            "ratelimit_config_domains",
            "Domains in the live configuration.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.rule_label = BoundedLabels(max_rule_labels)
        self._rules: dict[tuple[str, str], RuleCounters] = {}

    def rule(self, domain: str, label: str) -> RuleCounters:
        """The counters of one rule, resolved once: `labels()` costs more than `inc()`."""
        counters = self._rules.get((domain, label))
        if counters is None:
            counters = RuleCounters(
                total_hits=self.total_hits.labels(domain, label),
                within_limit=self.within_limit.labels(domain, label),
                over_limit=self.over_limit.labels(domain, label),
                near_limit=self.near_limit.labels(domain, label),
                shadow_over_limit=self.shadow_over_limit.labels(domain, label),
                over_limit_cached=self.over_limit_cached.labels(domain, label),
            )
            self._rules[(domain, label)] = counters
        return counters


@dataclass(frozen=True)
class RuleCounters:
    total_hits: Counter
    within_limit: Counter
    over_limit: Counter
    near_limit: Counter
    shadow_over_limit: Counter
    over_limit_cached: Counter
