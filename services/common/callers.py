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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.errors import PermissionDenied
from services.common.reloader import ReloadingConfig
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


class CallerTenantSettings(BaseModel):
    """The binding's flags, mixed into the settings of each service that takes a tenant
    from its callers (the enforcer, the rate limiter)."""

    caller_tenants_file: str = Field(
        "",
        description='YAML file of caller certificate SAN -> the tenants that caller may name ("*": any), '
        "checked on every API that names a tenant (reloaded on change; needs mutual TLS); empty: any caller "
        "may name any tenant",
    )

    @model_validator(mode="after")
    def _callers_need_mutual_tls(self) -> CallerTenantSettings:
        if self.caller_tenants_file and not getattr(self, "tls_client_ca_file", ""):
            raise ValueError(
                "--caller-tenants-file needs mutual TLS (--tls-client-ca-file): callers are known by their certificates"
            )
        return self


def binding(
    settings: CallerTenantSettings, poll_seconds: float = 2.0
) -> tuple[Callable[[], CallerTenants], ReloadingConfig[CallerTenants] | None]:
    """(the current binding, its reloader to start and stop, if a file is configured)."""
    if not settings.caller_tenants_file:
        return (lambda: ANY_CALLER), None
    reloading = ReloadingConfig(
        Path(settings.caller_tenants_file),
        CallerTenants.load,
        poll_seconds=poll_seconds,
        describe=lambda c: {"callers": len(c.bindings)},
    )
    reloading.load_initial()
    return (lambda: reloading.current), reloading
