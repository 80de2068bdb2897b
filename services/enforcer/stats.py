"""The enforcer's decision metrics (one registry per process, passed in by the wiring)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import BoundedLabels


class ScreenStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "enforcer_decisions",
            "Decisions by action and surface.",
            ["tenant", "action", "surface"],
            registry=registry,
        )
        self.latency = Histogram(
            "enforcer_decision_seconds",
            "Time to decide, by surface.",
            ["surface"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        self.dependency_failures = Counter(
            "enforcer_dependency_failures",
            "Dependency calls that failed or timed out.",
            ["dependency", "reason"],
            registry=registry,
        )
        self.degraded = Counter(
            "enforcer_degraded_decisions",
            "Decisions made by a fail-open policy without a dependency.",
            ["dependency"],
            registry=registry,
        )
        self.verdicts = Counter(
            "enforcer_verdicts",
            "Decisions by how much classifier verdict they rest on (full, partial, none) and why not full.",
            ["surface", "verdict", "reason"],
            registry=registry,
        )
        self.shadow = Counter(
            "enforcer_shadow_decisions",
            "Decisions also taken under a tenant's candidate policy (shadow), by how the candidate's action "
            "compares with the live one: same, stricter or looser.",
            ["surface", "comparison"],
            registry=registry,
        )
        self.tenant_label = BoundedLabels(200)
