"""`make run`'s flags reach the Envoy config it starts (tools/run_mesh.py), checked
without starting a mesh: --observe-tenants / OBSERVE_TENANTS put tenants on the
observe-only route."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import run_mesh
from tools.envoy_gateway import OBSERVE_FILTER


def observe_route_tenants(config: dict) -> str | None:
    """The tenant regex of the rendered observe-only route, None when there is none."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        if OBSERVE_FILTER not in route.get("typed_per_filter_config", {OBSERVE_FILTER: None}):
            (matcher,) = route["match"]["dynamic_metadata"]
            return matcher["value"]["string_match"]["safe_regex"]["regex"]
    return None


def test_observe_tenants_from_the_flag_or_the_env_var(monkeypatch) -> None:
    monkeypatch.delenv("OBSERVE_TENANTS", raising=False)
    assert run_mesh.parse_args([]).observe_tenants == []
    assert run_mesh.parse_args(["--observe-tenants", "newco, otherco,,newco"]).observe_tenants == ["newco", "otherco"]
    monkeypatch.setenv("OBSERVE_TENANTS", "shadowco")
    assert run_mesh.parse_args([]).observe_tenants == ["shadowco"]
    assert run_mesh.parse_args(["--observe-tenants", "newco"]).observe_tenants == ["newco"]  # the flag wins


def test_help_documents_the_flag_and_its_env_var(capsys) -> None:
    with pytest.raises(SystemExit):
        run_mesh.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--observe-tenants" in out and "OBSERVE_TENANTS" in out


class FakeEnvoy:
    """Stands in for EnvoyGateway: keeps the config it would have started on."""

    started: list[dict] = []

    def __init__(self, config: dict, folder: Path, **kw) -> None:
        self.config, self.address, self.admin = config, "127.0.0.1:10000", "127.0.0.1:9901"

    def start(self) -> FakeEnvoy:
        FakeEnvoy.started.append(self.config)
        return self


def test_the_flag_reaches_the_config_envoy_is_started_on(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(run_mesh, "ROOT", tmp_path)  # dev credentials under tmp, not .cache
    monkeypatch.setattr(run_mesh, "EnvoyGateway", FakeEnvoy)
    monkeypatch.delenv("OBSERVE_TENANTS", raising=False)
    FakeEnvoy.started.clear()
    ns = run_mesh.parse_args(["--observe-tenants", "newco,other.co"])
    for tenants in (ns.observe_tenants, []):
        mesh = run_mesh.Mesh("local", "redis://x", "x:9092")
        mesh.addresses.update(enforcer="127.0.0.1:50051", ratelimit="127.0.0.1:50053")
        _upstream, token = mesh.start_gateway("127.0.0.1:8080", ns.envoy_listen, ns.envoy_admin_listen, tenants)
        assert token
    with_tenants, without = FakeEnvoy.started
    assert observe_route_tenants(with_tenants) == r"^(newco|other\.co)$"
    assert observe_route_tenants(without) is None
    summary = run_mesh.summary(mesh, region="local", upstream="127.0.0.1:8080", token="t", database="")
    assert "observe-only" not in summary
    mesh.observe_tenants = ["newco"]
    assert "observe-only" in run_mesh.summary(mesh, region="local", upstream="x", token="t", database="")
