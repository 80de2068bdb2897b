"""The Kafka topics (docs/ARCHITECTURE.md "Signals, actions and the other topics"), in one place: their names, and the
configuration each is created with (`tools/run_mesh.py`, compose's kafka-init).

Every process reads and writes only its own region's topics; the rollup is the one
topic shared across regions (aggregates only)."""

from __future__ import annotations

#: Aggregates only: the one topic that may leave a region.
ROLLUP_TOPIC = "safeguards.rollup.global"


def signals_topic(region: str) -> str:
    """One SafeguardSignal per decision, keyed by tenant."""
    return f"safeguards.signals.{region}"


def actions_topic(region: str) -> str:
    """Enforcement actions, keyed by target; compacted, read from the start by every replica."""
    return f"safeguards.actions.{region}"


def alerts_topic(region: str) -> str:
    """The monitor's alert notifications, keyed by fingerprint."""
    return f"safeguards.alerts.{region}"


def region_topics(region: str) -> dict[str, dict[str, str]]:
    """Every topic a region's mesh uses, with the topic configs it is created with."""
    return {
        signals_topic(region): {},
        actions_topic(region): {"cleanup.policy": "compact"},
        alerts_topic(region): {},
        ROLLUP_TOPIC: {},
    }
