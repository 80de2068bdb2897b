"""The caller -> tenants binding: who may name which tenant, and clear errors for a bad file."""

from __future__ import annotations

import pytest

from services.common.callers import ANY_CALLER, CallerTenants
from services.common.errors import ConfigError, PermissionDenied
from services.common.tls import CallerIdentity

GW = CallerIdentity(sans=("spiffe://mesh/gw",), transport="ssl")
PARTNER = CallerIdentity(sans=("dns:ignored", "spiffe://partner/gw"), transport="ssl")
CN_ONLY = CallerIdentity(common_name="legacy-gw", transport="ssl")


def test_bound_callers_name_only_their_tenants_and_unbound_ones_none(tmp_path) -> None:
    f = tmp_path / "callers.yaml"
    f.write_text("callers:\n  spiffe://mesh/gw: ['*']\n  spiffe://partner/gw: [acme, acme-eu]\n  legacy-gw: [old]\n")
    b = CallerTenants.load(f)
    assert b.allows(GW, "anyone") and b.allows(PARTNER, "acme-eu") and b.allows(CN_ONLY, "old")
    assert not b.allows(PARTNER, "other") and not b.allows(CN_ONLY, "acme")
    assert not b.allows(CallerIdentity(), "acme")  # plaintext / no certificate
    assert not b.allows(CallerIdentity(sans=("spiffe://stranger",)), "acme")
    with pytest.raises(PermissionDenied) as err:
        b.check(PARTNER, "other")
    assert "other" not in err.value.message and "partner" not in err.value.message


def test_without_a_file_every_caller_names_any_tenant() -> None:
    assert ANY_CALLER.allows(CallerIdentity(), "acme")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("callers: [a, b]", "callers"),
        ("callers:\n  spiffe://x: ['']\n", "tenant names must not be empty"),
        ("callers:\n  ' ': [a]\n", "SAN must not be empty"),
        ("caller: {}\n", "caller"),
        ("callers: {a: [b]\n", "not valid YAML"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_the_problem(tmp_path, text: str, message: str) -> None:
    f = tmp_path / "callers.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        CallerTenants.load(f)
