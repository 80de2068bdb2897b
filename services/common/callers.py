"""Which tenants each caller may speak for.

Identity headers (`x-safeguards-tenant`, a rate-limit descriptor's `tenant` entry, a
RequestContext's tenant) are claims: a caller that can reach the service could name any
tenant. With mutual TLS the transport proves who the caller is (its certificate SANs);
this binding says which tenants that caller may name, e.g. the shared gateway any tenant
(it authenticated the end user and set the header itself), a partner's own gateway only
its tenants. A file of SAN -> tenants::

    callers:
      spiffe://mesh.local/ns/gateway/sa/envoy: ["*"]     # any tenant
      spiffe://partner-a.example/gateway: [acme, acme-eu]

Without a file every verified caller may name any tenant (as before); with one, a
caller none of whose SANs is listed may name none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from services.common.errors import PermissionDenied
from services.common.tls import CallerIdentity
from services.common.yamlfile import load_model

ANY_TENANT = "*"


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    callers: dict[str, list[str]] = {}

    @field_validator("callers")
    @classmethod
    def _non_empty(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for san, tenants in value.items():
            if not san.strip():
                raise ValueError("a caller SAN must not be empty")
            if any(not t.strip() for t in tenants):
                raise ValueError(f"{san}: tenant names must not be empty")
        return value


@dataclass(frozen=True)
class CallerTenants:
    """SAN -> the tenants that caller may name. `enforced` is False when no binding is
    configured (every caller may name any tenant)."""

    bindings: Mapping[str, frozenset[str]] = field(default_factory=dict)
    enforced: bool = False

    @classmethod
    def load(cls, path: Path) -> CallerTenants:
        doc = load_model(path, _File, "callers")
        return cls({san: frozenset(t) for san, t in doc.callers.items()}, enforced=True)

    def allows(self, caller: CallerIdentity, tenant: str) -> bool:
        if not self.enforced:
            return True
        for name in (*caller.sans, caller.common_name):
            tenants = self.bindings.get(name)
            if tenants is not None and (ANY_TENANT in tenants or tenant in tenants):
                return True
        return False

    def check(self, caller: CallerIdentity, tenant: str) -> None:
        """PERMISSION_DENIED unless `caller` may speak for `tenant`. The message names
        neither the tenant nor the caller's SANs (a prober learns nothing)."""
        if not self.allows(caller, tenant):
            raise PermissionDenied("this caller may not speak for the tenant it names")


#: No binding: every caller may name every tenant.
ANY_CALLER = CallerTenants()
