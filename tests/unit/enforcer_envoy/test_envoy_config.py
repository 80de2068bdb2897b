"""deploy/envoy/envoy.yaml is a valid Envoy bootstrap (parsed into Envoy's own
Bootstrap proto from xds-protos, every typed_config resolved) and wires ext_authz the
way the enforcer needs: body as bytes, no partial bodies, fail closed."""

from __future__ import annotations

import copy
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from services.enforcer.settings import EnforcerSettings
from tests.support import ROOT

CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"


def type_urls(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["@type"]} if isinstance(node.get("@type"), str) else set()
        return found.union(*(type_urls(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(type_urls(v) for v in node))
    return set()


def import_types(doc: dict) -> None:
    """Import the generated modules of every `@type` so json_format can resolve the
    Any messages: `envoy.a.b.v3.Message` lives in one of `envoy/a/b/v3/*_pb2.py`."""
    for url in type_urls(doc):
        package = url.rsplit("/", 1)[1].rsplit(".", 1)[0]
        mod = importlib.import_module(package)
        for info in pkgutil.iter_modules(mod.__path__):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")


def parse(doc: dict) -> bootstrap_pb2.Bootstrap:
    import_types(doc)
    return json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def hcm_of(boot: bootstrap_pb2.Bootstrap) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    assert boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_example_config_parses_as_an_envoy_bootstrap(doc) -> None:
    boot = parse(doc)
    names = {c.name for c in boot.static_resources.clusters}
    assert {"safeguards_enforcer", "safeguards_ratelimit", "model_upstream"} <= names
    assert [f.name for f in hcm_of(boot).http_filters][-1] == "envoy.filters.http.router"


def test_ext_authz_sends_the_whole_body_as_bytes_and_fails_closed(doc) -> None:
    boot = parse(doc)
    (authz_filter,) = [f for f in hcm_of(boot).http_filters if f.name == "envoy.filters.http.ext_authz"]
    authz = ext_authz_pb2.ExtAuthz()
    assert authz_filter.typed_config.Unpack(authz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "safeguards_enforcer"
    assert authz.with_request_body.pack_as_bytes and not authz.with_request_body.allow_partial_message
    assert not authz.failure_mode_allow
    default_limit = EnforcerSettings.model_fields["authz_max_body_bytes"].default
    assert 0 < authz.with_request_body.max_request_bytes <= default_limit
    enforcer = next(c for c in boot.static_resources.clusters if c.name == "safeguards_enforcer")
    port = enforcer.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
    assert port == int(EnforcerSettings.model_fields["listen"].default.rsplit(":", 1)[1])


def test_the_validation_catches_a_typo_and_an_unknown_type(doc) -> None:
    typo = copy.deepcopy(doc)
    typo["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    with pytest.raises(json_format.ParseError, match="conect_timeout"):
        parse(typo)
    bad_type = copy.deepcopy(doc)
    hcm = bad_type["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    authz["typed_config"]["with_request_body"]["pack_as_byte"] = True
    with pytest.raises(json_format.ParseError, match="pack_as_byte"):
        parse(bad_type)


def uncomment(text: str, first: str) -> str:
    """`text` with every commented YAML block that starts with the line `# <first>` (and
    goes on with more deeply indented comment lines) uncommented in place: what an
    operator does to turn on an option the shipped file carries commented out."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip() != f"# {first}":
            out.append(line)
            i += 1
            continue
        out.append(indent + line[len(indent) + 2 :])
        i += 1
        while i < len(lines) and lines[i].startswith(indent + "#  "):
            out.append(indent + lines[i][len(indent) + 2 :])
            i += 1
    assert len(out) == len(lines) and out != lines, f"no commented block starts with '# {first}'"
    return "\n".join(out) + "\n"


def test_the_commented_tracer_is_what_render_otlp_adds() -> None:
    """The shipped file keeps tracing off; its commented `tracing` block and
    `otel_collector` cluster, uncommented, are a valid bootstrap and exactly what
    tools/envoy_gateway.py render(otlp=...) turns on."""
    from tools.envoy_gateway import _hcm, http_filter, render

    text = CONFIG.read_text()
    shipped = yaml.safe_load(text)
    assert "tracing" not in _hcm(shipped)
    on = yaml.safe_load(uncomment(uncomment(text, "tracing:"), "- name: otel_collector"))
    parse(on)
    jwks = http_filter(shipped, "envoy.filters.http.jwt_authn")["providers"]["gateway"]["local_jwks"]["filename"]
    rendered = render(
        listen="0.0.0.0:10000",
        admin="127.0.0.1:9901",
        enforcer="enforcer:50051",
        ratelimit="ratelimit:50053",
        upstream="https://api.anthropic.com",
        jwks_path=Path(jwks),
        otlp="otel-collector:4317",
    )
    assert _hcm(on)["tracing"] == _hcm(rendered)["tracing"]
    assert on["static_resources"]["clusters"] == rendered["static_resources"]["clusters"]


def uncommented_observe_route(text: str) -> str:
    """deploy/envoy/envoy.yaml with its commented observe-only route uncommented (what a
    compose user does to onboard tenants in shadow)."""
    out, inside = [], False
    for line in text.splitlines():
        if "# --- observe-only route: begin" in line or "# --- observe-only route: end" in line:
            inside = "begin" in line
            continue
        if inside:
            indent = line[: len(line) - len(line.lstrip())]
            assert line.lstrip().startswith("# "), line
            line = indent + line.lstrip()[2:]
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_commented_observe_only_route_is_the_one_render_makes(tmp_path) -> None:
    from tools.envoy_gateway import render

    text = CONFIG.read_text()
    assert "# --- observe-only route: begin" in text
    uncommented = yaml.safe_load(uncommented_observe_route(text))
    parse(uncommented)  # a valid bootstrap once uncommented
    args = dict(
        listen="127.0.0.1:10000",
        admin="127.0.0.1:9901",
        enforcer="127.0.0.1:50051",
        ratelimit="127.0.0.1:50053",
        upstream="127.0.0.1:8080",
        jwks_path=tmp_path / "jwks.json",
    )
    rendered = render(**args, observe_tenants=["newco", "otherco"])
    parse(rendered)
    routes = hcm_of(parse(uncommented)).route_config.virtual_hosts[0].routes
    assert routes == hcm_of(parse(rendered)).route_config.virtual_hosts[0].routes
    # The route is chosen by the verified claim (jwt_authn's metadata), never by a header.
    observe = routes[len(routes) - 2]
    assert not observe.match.headers
    assert observe.match.dynamic_metadata[0].filter == "envoy.filters.http.jwt_authn"
    # As shipped (commented out): no tenant is observe-only.
    assert hcm_of(parse(render(**args))).route_config.virtual_hosts[0].routes == [
        r for i, r in enumerate(routes) if i != len(routes) - 2
    ]
