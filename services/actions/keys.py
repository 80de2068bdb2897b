"""The record key of an action's target: a newer action on the same target replaces
the older one on the compacted topic, and a revoke is a tombstone on that key."""

from __future__ import annotations

from urllib.parse import quote, unquote

from safeguards.v1 import enforcement_pb2

K = enforcement_pb2

KIND_NAMES = {
    K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT: "suspend",
    K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT: "throttle",
    K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY: "force",
    K.ENFORCEMENT_KIND_KILL_SWITCH: "killswitch",
}
_KIND_OF_PREFIX = {name: kind for kind, name in KIND_NAMES.items()}


def _q(part: str) -> str:
    # Escaped so that a ':' inside a tenant or model cannot make two targets collide.
    return quote(part, safe="")


def suspend_key(tenant: str, account_hmac: str) -> str:
    return f"suspend:{_q(tenant)}:{_q(account_hmac)}"


def throttle_key(tenant: str, account_hmac: str) -> str:
    return f"throttle:{_q(tenant)}:{_q(account_hmac)}"


def force_key(tenant: str, category: str) -> str:
    return f"force:{_q(tenant)}:{_q(category)}"


def kill_tenant_key(tenant: str) -> str:
    return f"killswitch:tenant:{_q(tenant)}"


def kill_model_key(model: str) -> str:
    return f"killswitch:model:{_q(model)}"


def action_key(kind: int, target: enforcement_pb2.EnforcementTarget) -> str:
    """The Kafka key of an action's target: the one function producer and consumer
    share. Raises ValueError when the target lacks what its kind needs."""
    t = target
    if kind == K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT and t.tenant and t.account_hmac:
        return suspend_key(t.tenant, t.account_hmac)
    if kind == K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT and t.tenant and t.account_hmac:
        return throttle_key(t.tenant, t.account_hmac)
    if kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY and t.tenant and t.category:
        return force_key(t.tenant, t.category)
    if kind == K.ENFORCEMENT_KIND_KILL_SWITCH and bool(t.tenant) != bool(t.model):
        return kill_tenant_key(t.tenant) if t.tenant else kill_model_key(t.model)
    raise ValueError(f"target does not fit kind {K.EnforcementKind.Name(kind) if kind in KIND_NAMES else kind}")


def parse_key(key: str) -> tuple[int, enforcement_pb2.EnforcementTarget] | None:
    """The kind and target a record key names (`action_key`'s inverse), None when it
    is not one: what a tombstone revoked when the revoked record is gone."""
    parts = key.split(":")
    kind = _KIND_OF_PREFIX.get(parts[0])
    if kind is None or len(parts) != 3:
        return None
    a, b = unquote(parts[1]), unquote(parts[2])
    T = enforcement_pb2.EnforcementTarget
    if kind in (K.ENFORCEMENT_KIND_SUSPEND_ACCOUNT, K.ENFORCEMENT_KIND_THROTTLE_ACCOUNT):
        target = T(tenant=a, account_hmac=b)
    elif kind == K.ENFORCEMENT_KIND_FORCE_BLOCK_CATEGORY:
        target = T(tenant=a, category=b)
    elif a == "tenant":
        target = T(tenant=b)
    elif a == "model":
        target = T(model=b)
    else:
        return None
    try:
        return (kind, target) if action_key(kind, target) == key else None
    except ValueError:
        return None
