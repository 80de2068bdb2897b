import pytest

from services.common.errors import ConfigError
from services.common.privacy import RegionalKey

KEY = b"k" * 32


def test_account_ids_are_stable_in_region_and_differ_across_regions_and_tenants() -> None:
    eu, us = RegionalKey.from_bytes("eu", KEY), RegionalKey.from_bytes("us", KEY)
    assert eu.account("acme", "alice") == eu.account("acme", "alice")
    assert eu.account("acme", "alice") != us.account("acme", "alice")
    assert eu.account("acme", "alice") != eu.account("other", "alice")
    assert "alice" not in eu.account("acme", "alice") and len(eu.account("acme", "alice")) == 64
    assert eu.account("acme", "") == ""


def test_short_keys_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        RegionalKey.from_bytes("eu", b"short")
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert RegionalKey.from_file("eu", str(tmp_path / "key")).key == KEY
