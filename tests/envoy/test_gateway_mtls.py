"""Identities nobody can claim, with the real Envoy as the caller (issue 15 item 2): the
gateway presents its client certificate to the enforcer and the rate limiter (the
transport_socket deploy/envoy/envoy.yaml carries commented out, rendered here by
render(upstream_tls=...)), and both serve it only for the tenants its SAN is bound to.

The mesh is on mutual TLS throughout (tests/certs.py: one CA, a server certificate for
localhost, client certificates with SPIFFE URIs):
- the enforcer: client CA required, --allowed-client-sans the gateway, and
  --caller-tenants-file binding the gateway to tenant `acme` only;
- the rate limiter: the gateway and the enforcer allowed, the gateway bound to `acme`,
  the enforcer to any tenant (it asks for every tenant's policy limits);
- the classifier: the enforcer allowed; the enforcer presents its own certificate to it
  and to the rate limiter (--upstream-cert-file).

Through Envoy, with a valid JWT (jwt_authn sets x-safeguards-tenant from its claim):
- tenant `acme`: served (200 from the development upstream), the gateway's rate limit
  counted (Envoy's ratelimit.ok) and the enforcer's own limit check too;
- a tenant the gateway is not bound to: the enforcer answers ext_authz with a denial
  (403, never a gRPC error that a failure mode could turn into an allow); the rate
  limiter refuses the descriptor (PERMISSION_DENIED), which Envoy's ratelimit filter
  treats as an error: failure_mode_deny false (the shipped value) lets the request go
  on to ext_authz (counted in ratelimit.error and ratelimit.failure_mode_allowed),
  failure_mode_deny true answers 500 right there;
- an Envoy without a client certificate, or with one whose SAN is not allowed: the
  enforcer refuses the handshake / the call, ext_authz fails closed with its
  status_on_error (503), and the rate-limit filter fails open as for any error.
And Envoy itself accepts the shipped file with its commented blocks turned on."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.certs import Pki
from tests.e2e.meshes import REGION, Backends, GatewayParts, backends, gateway_parts, write_config
from tests.envoy.test_failure_modes import metric
from tests.support import ROOT, free_port
from tests.unit.enforcer_envoy.test_envoy_config import uncomment
from tools.envoy_gateway import (
    SHIPPED_TLS_FOLDER,
    TEMPLATE,
    EnvoyGateway,
    UpstreamTLS,
    http_filter,
    render,
    validate,
)

GATEWAY = "spiffe://mesh.test/ns/gateway/sa/envoy"
ENFORCER = "spiffe://mesh.test/ns/safeguards/sa/enforcer"
STRANGER = "spiffe://stranger.test/gateway"  # a valid certificate of the same CA, not allowed
RLS = "cluster.model_upstream.ratelimit."


@dataclass
class Mesh:
    tmp: Path
    pki: Pki
    backends: Backends
    parts: GatewayParts
    metrics_port: int
    envoys: dict[str, EnvoyGateway] = field(default_factory=dict)
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def envoy(self, name: str, tls: UpstreamTLS, *, rls_failure_mode_deny: bool = False) -> EnvoyGateway:
        """An Envoy on the shipped config with `tls` to the enforcer and the rate limiter
        (started once per name, stopped with the module)."""
        if name not in self.envoys:
            config = render(
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
                enforcer=self.parts.enforcer.address,
                ratelimit=self.backends.ratelimit.address,
                upstream=self.parts.upstream.address,
                jwks_path=self.parts.creds.jwks_path,
                upstream_tls=tls,
            )
            http_filter(config, "envoy.filters.http.ratelimit")["failure_mode_deny"] = rls_failure_mode_deny
            self.envoys[name] = EnvoyGateway(config, self.tmp / f"envoy-{name}").start()
        return self.envoys[name]

    def tls(self, client: str = "", san: str = "") -> UpstreamTLS:
        """TLS to both services (their certificate: localhost), presenting the client
        certificate `client` with the SAN `san` (none when empty)."""
        if client and client not in self.certs:
            self.certs[client] = self.pki.client(client, san)
        cert, key = self.certs[client] if client else ("", "")
        return UpstreamTLS(
            ca_file=self.pki.ca_file, cert_file=cert, key_file=key, enforcer_san="localhost", ratelimit_san="localhost"
        )

    def served(self, marker: str) -> bool:
        url = f"http://{self.parts.upstream.address}/_dev/requests"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return any(marker in r["body"] for r in json.loads(resp.read()))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("gateway-mtls")
    pki = Pki(tmp)
    cert, key = pki.server()
    ca = str(pki.ca_file)
    enforcer_cert, enforcer_key = pki.client("enforcer", ENFORCER)
    policies, rl, hmac = write_config(tmp)
    shutil.copy(ROOT / "config" / "ratelimit" / "gateway.yaml", rl / "gateway.yaml")  # the shipped gateway limits
    enforcer_callers = tmp / "enforcer-callers.yaml"
    enforcer_callers.write_text(f"callers:\n  {GATEWAY}: [acme]\n")
    ratelimit_callers = tmp / "ratelimit-callers.yaml"
    ratelimit_callers.write_text(f'callers:\n  {GATEWAY}: [acme]\n  {ENFORCER}: ["*"]\n')
    serve = ["--no-plaintext", "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-client-ca-file", ca]
    with backends(
        tmp,
        rl,
        classifier_args=[*serve, "--allowed-client-sans", ENFORCER],
        ratelimit_args=[
            *serve, "--allowed-client-sans", f"{GATEWAY},{ENFORCER}", "--caller-tenants-file", str(ratelimit_callers),
        ],
    ) as b:  # fmt: skip
        metrics = free_port()
        parts = gateway_parts(
            b,
            tmp,
            region=REGION,
            policies=policies,
            key=hmac,
            metrics_listen=f"127.0.0.1:{metrics}",
            enforcer_args=[
                *serve, "--allowed-client-sans", GATEWAY, "--caller-tenants-file", str(enforcer_callers),
                "--no-upstream-plaintext", "--upstream-ca-file", ca,
                "--upstream-cert-file", str(enforcer_cert), "--upstream-key-file", str(enforcer_key),
            ],
        )  # fmt: skip
        m = Mesh(tmp, pki, b, parts, metrics)
        try:
            yield m
        finally:
            for envoy in m.envoys.values():
                envoy.stop()


def ask(mesh: Mesh, envoy: EnvoyGateway, tenant: str) -> tuple[int, str, str]:
    """POST a benign Anthropic Messages request through `envoy` as `tenant`: (status,
    body, the marker in its prompt)."""
    marker = f"m-{uuid.uuid4().hex[:12]}"
    doc = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": f"Name a river. {marker}"}]}
    req = urllib.request.Request(
        f"http://{envoy.address}/v1/messages",
        data=json.dumps(doc).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {mesh.parts.creds.token(tenant, 'acct-1')}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), marker
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), marker


def test_the_gateway_speaks_for_its_bound_tenant(mesh) -> None:
    envoy = mesh.envoy("gateway", mesh.tls("gateway", GATEWAY))
    before = envoy.stats(RLS)
    status, body, marker = ask(mesh, envoy, "acme")
    assert status == 200, body
    assert json.loads(body)["type"] == "message" and mesh.served(marker)
    after = envoy.stats(RLS)
    # The rate limiter answered the gateway's descriptor (tenant acme) over mutual TLS.
    assert after[f"{RLS}ok"] == before.get(f"{RLS}ok", 0) + 1, after
    assert after.get(f"{RLS}error", 0) == before.get(f"{RLS}error", 0), after
    # The enforcer's own calls went through too: its limit check (its certificate, bound
    # to any tenant at the rate limiter) and the classifier's scores.
    for dependency in ("ratelimit", "classifier"):
        assert metric(mesh.metrics_port, "enforcer_dependency_failures", f'dependency="{dependency}"') == 0
    ssl = envoy.stats("cluster.safeguards_enforcer.ssl.")
    assert ssl.get("cluster.safeguards_enforcer.ssl.handshake", 0) >= 1, ssl


def test_a_tenant_the_gateway_is_not_bound_to_is_refused(mesh) -> None:
    envoy = mesh.envoy("gateway", mesh.tls("gateway", GATEWAY))
    before = envoy.stats(RLS)
    status, body, marker = ask(mesh, envoy, "globex")
    # The enforcer's ext_authz answer: a denial (403, the provider's error shape), which
    # names neither the tenant nor the caller.
    assert status == 403, body
    assert json.loads(body)["error"]["type"] == "permission_error" and "globex" not in body
    assert not mesh.served(marker)
    # The rate limiter refused the descriptor naming globex (PERMISSION_DENIED); the
    # shipped filter fails open on an error (failure_mode_deny: false), so the request
    # went on, and ext_authz is what refused it.
    after = envoy.stats(RLS)
    assert after[f"{RLS}error"] == before.get(f"{RLS}error", 0) + 1, after
    assert after[f"{RLS}failure_mode_allowed"] == before.get(f"{RLS}failure_mode_allowed", 0) + 1, after
    assert after.get(f"{RLS}ok", 0) == before.get(f"{RLS}ok", 0), after


def test_with_failure_mode_deny_the_rate_limiter_refusal_stops_the_request_itself(mesh) -> None:
    envoy = mesh.envoy("rls-deny", mesh.tls("gateway", GATEWAY), rls_failure_mode_deny=True)
    status, body, marker = ask(mesh, envoy, "globex")
    assert status == 500 and not mesh.served(marker), body  # the ratelimit filter's own status_on_error
    assert envoy.stats("http.model_api.ext_authz.").get("http.model_api.ext_authz.denied", 0) == 0
    status, body, marker = ask(mesh, envoy, "acme")
    assert status == 200 and mesh.served(marker), body


@pytest.mark.parametrize("caller", ["no-client-certificate", "san-not-allowed"])
def test_an_envoy_the_services_do_not_trust_fails_closed(mesh, caller) -> None:
    tls = mesh.tls() if caller == "no-client-certificate" else mesh.tls("stranger", STRANGER)
    envoy = mesh.envoy(caller, tls)
    status, body, marker = ask(mesh, envoy, "acme")
    # ext_authz could not get an answer (handshake refused, or PERMISSION_DENIED for the
    # SAN): it denies with status_on_error; the request never reaches the model.
    assert status == 503, body
    assert not mesh.served(marker)
    assert envoy.stats("http.model_api.ext_authz.")["http.model_api.ext_authz.error"] >= 1
    # The rate limiter refused it as well; the filter failed open, as for any RLS error.
    assert envoy.stats(RLS)[f"{RLS}failure_mode_allowed"] >= 1


def test_envoy_itself_accepts_the_shipped_block_uncommented(mesh) -> None:
    # The shipped file with its transport_socket blocks turned on, the certificate paths
    # and the JWKS pointed at real files.
    folder = mesh.tmp / "shipped-tls"
    folder.mkdir(exist_ok=True)
    cert, key = mesh.tls("gateway", GATEWAY).cert_file, mesh.tls("gateway", GATEWAY).key_file
    for src, name in ((cert, "tls.crt"), (key, "tls.key"), (mesh.pki.ca_file, "ca.crt")):
        shutil.copy(src, folder / name)
    text = uncomment(TEMPLATE.read_text(), "transport_socket:").replace(SHIPPED_TLS_FOLDER, str(folder))
    config = mesh.tmp / "shipped-mtls.yaml"
    config.write_text(text.replace("/etc/safeguards/gateway/jwks.json", str(mesh.parts.creds.jwks_path)))
    out = validate(config)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
