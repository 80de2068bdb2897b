"""The gateway's mutual TLS to the enforcer and the rate limiter: deploy/envoy/envoy.yaml
carries it as a commented transport_socket on both clusters, and
tools/envoy_gateway.py render(upstream_tls=...) renders the very same block (with this
run's paths). Uncommented, the shipped file is still a valid Envoy bootstrap. The real
binary runs it in tests/envoy/test_gateway_mtls.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.enforcer_envoy.test_envoy_config import CONFIG, parse, uncomment
from tools.envoy_gateway import UpstreamTLS, render

SERVICES = {"safeguards_enforcer": "enforcer", "safeguards_ratelimit": "ratelimit"}


def clusters(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def rendered(**kw) -> dict:
    return render(
        listen="127.0.0.1:0",
        admin="127.0.0.1:0",
        enforcer="127.0.0.1:50051",
        ratelimit="127.0.0.1:50053",
        upstream="127.0.0.1:8080",
        jwks_path=Path("/tmp/jwks.json"),
        **kw,
    )


def test_the_shipped_file_is_plaintext_until_the_block_is_uncommented() -> None:
    shipped = clusters(yaml.safe_load(CONFIG.read_text()))
    assert all("transport_socket" not in shipped[name] for name in SERVICES)
    on = clusters(yaml.safe_load(uncomment(CONFIG.read_text(), "transport_socket:")))
    for name, san in SERVICES.items():
        assert on[name]["transport_socket"] == UpstreamTLS.shipped().transport_socket(san), name
    # Nothing else changed: the model upstream keeps its own (server-only) TLS.
    assert on["model_upstream"] == shipped["model_upstream"]


def test_the_uncommented_file_is_a_valid_envoy_bootstrap() -> None:
    boot = parse(yaml.safe_load(uncomment(CONFIG.read_text(), "transport_socket:")))
    for cluster in boot.static_resources.clusters:
        if cluster.name in SERVICES:
            assert cluster.transport_socket.typed_config.type_url.endswith("UpstreamTlsContext")


def test_render_puts_the_gateway_certificate_on_every_enforcer_and_rate_limiter_cluster() -> None:
    tls = UpstreamTLS(ca_file="/x/ca.pem", cert_file="/x/gw.pem", key_file="/x/gw-key.pem", enforcer_san="localhost")
    doc = rendered(upstream_tls=tls, extproc="127.0.0.1:50061", otlp="127.0.0.1:4317")
    parse(doc)
    by_name = clusters(doc)
    for name in ("safeguards_enforcer", "safeguards_extproc", "safeguards_ratelimit"):
        ctx = by_name[name]["transport_socket"]["typed_config"]
        san = "ratelimit" if name == "safeguards_ratelimit" else "localhost"
        assert ctx["sni"] == san
        common = ctx["common_tls_context"]
        assert common["tls_certificates"] == [
            {"certificate_chain": {"filename": "/x/gw.pem"}, "private_key": {"filename": "/x/gw-key.pem"}}
        ]
        assert common["validation_context"]["trusted_ca"] == {"filename": "/x/ca.pem"}
        assert common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {"exact": san}
    assert "transport_socket" not in by_name["otel_collector"]
    assert "transport_socket" not in by_name["model_upstream"]  # the plaintext development upstream


def test_without_the_option_nothing_changes_and_half_a_key_pair_is_refused() -> None:
    plain = clusters(rendered())
    assert all("transport_socket" not in plain[name] for name in SERVICES)
    no_client_cert = UpstreamTLS(ca_file="/x/ca.pem").transport_socket("enforcer")
    assert "tls_certificates" not in no_client_cert["typed_config"]["common_tls_context"]
    with pytest.raises(ValueError, match="both"):
        UpstreamTLS(ca_file="/x/ca.pem", cert_file="/x/gw.pem").transport_socket("enforcer")
