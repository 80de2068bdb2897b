"""A small evaluator of Kubernetes NetworkPolicy semantics (ingress and egress, pod and
namespace selectors with matchLabels / matchExpressions, numbered and named ports), so
the tests can ask "may this pod reach that one on this port?" of the rendered policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    namespace_labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # pods are addressed by selectors here
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = selects(ns_sel, pod.namespace_labels) if ns_sel is not None else pod.namespace == policy_ns
    pod_ok = selects(pod_sel, pod.labels) if pod_sel is not None else True
    return ns_ok and pod_ok


def _port_matches(ports: list[dict[str, Any]] | None, target: Pod, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None or want == port or (isinstance(want, str) and target.ports.get(want) == port):
            return True
    return False


def _allowed(policies: list[dict[str, Any]], direction: str, subject: Pod, peer: Pod, dst: Pod, port: int, proto: str):
    """Whether `subject`'s policies of `direction` admit the connection (True when no
    policy of that direction selects it: not isolated)."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [
        p
        for p in policies
        if p["metadata"].get("namespace", subject.namespace) == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"].get("podSelector", {}), subject.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        ns = policy["metadata"].get("namespace", subject.namespace)
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(pe, ns, peer) for pe in peers):
                continue
            if _port_matches(rule.get("ports"), dst, port, proto):
                return True
    return False


def may_connect(policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, proto: str = "TCP") -> bool:
    return _allowed(policies, "Egress", src, dst, dst, port, proto) and _allowed(
        policies, "Ingress", dst, src, dst, port, proto
    )
