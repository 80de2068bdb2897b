"""The mTLS variant's probes work: a server of the project's bootstrap, configured with the
rendered overlay's own env (mutual TLS, a SAN allow-list, the health-only listener; paths
mapped to a throwaway PKI, ports to free ones), answers the kubelet's probe, a plaintext
grpc.health.v1 Check on the probe's port, with SERVING; the same plaintext probe on the
serving port fails (which is why the probes do not go there), and a certificate the
allow-list does not name is still refused on the serving port."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.server import App, GrpcServer
from services.ratelimit.settings import RatelimitSettings
from tests.certs import Pki
from tests.deploy import k8s

TLS_DIR = "/var/run/secrets/safeguards/tls"


def _service_cert(pki: Pki, name: str, sans: list[str]):
    """A certificate like the one cert-manager issues a service: DNS SANs, server and
    client auth (the pod presents it to its own probe)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(pki.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(pki.ca_key, hashes.SHA256())
    )
    folder = pki.folder / name
    folder.mkdir()
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    return folder


def _rendered(service: str) -> tuple[dict, dict[str, str]]:
    overlay = k8s.OVERLAYS[0]
    container = k8s.objects(overlay, "Deployment")[service]["spec"]["template"]["spec"]["containers"][0]
    return container, k8s.env_values(overlay, container)


def _kubelet_probe(port: int) -> grpc.StatusCode | int:
    """What the kubelet's `grpc:` probe does: plaintext Check of service ''."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError as exc:
            return exc.code()


@pytest.fixture
async def ratelimit_server(tmp_path):
    namespace = f"safeguards-{k8s.OVERLAYS[0].name}"
    pki = Pki(tmp_path)
    own = _service_cert(pki, "ratelimit", ["ratelimit", f"ratelimit.{namespace}.svc"])
    stranger = _service_cert(pki, "monitor", ["monitor", f"monitor.{namespace}.svc"])
    container, env = _rendered("ratelimit")
    fields = {
        k.removeprefix("RATELIMIT_").lower(): v.replace(TLS_DIR, str(own))
        for k, v in env.items()
        if k.startswith("RATELIMIT_") and k.removeprefix("RATELIMIT_") in _SERVING_FIELDS
    }
    assert fields["tls_client_ca_file"] and fields["allowed_client_sans"], "the overlay requires mutual TLS"
    probe_port = container["readinessProbe"]["grpc"]["port"]
    assert fields["health_listen"] == f"0.0.0.0:{probe_port}"
    fields.update(listen="127.0.0.1:0", metrics_listen="", health_listen="127.0.0.1:0")
    settings = RatelimitSettings(**fields)
    server = GrpcServer("ratelimit", settings, App(bindings=[]), CollectorRegistry())
    port = await server.start()
    try:
        yield server, port, own, stranger
    finally:
        await server.drain()


_SERVING_FIELDS = {"TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE", "ALLOWED_CLIENT_SANS", "HEALTH_LISTEN"}


async def test_the_rendered_probe_passes_in_plaintext_on_the_health_port(ratelimit_server):
    server, port, _, _ = ratelimit_server
    assert await asyncio.to_thread(_kubelet_probe, server.health_port) == health_pb2.HealthCheckResponse.SERVING
    # On the serving port the same probe could never pass.
    assert await asyncio.to_thread(_kubelet_probe, port) == grpc.StatusCode.UNAVAILABLE


async def test_the_serving_port_still_refuses_a_certificate_the_allow_list_does_not_name(ratelimit_server):
    _, port, own, stranger = ratelimit_server
    creds = grpc.ssl_channel_credentials(
        root_certificates=(own / "ca.crt").read_bytes(),
        private_key=(stranger / "tls.key").read_bytes(),
        certificate_chain=(stranger / "tls.crt").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "ratelimit")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_health_port_turns_not_serving_when_the_drain_starts(ratelimit_server):
    server, _, _, _ = ratelimit_server
    await server.health.enter_graceful_shutdown()  # what drain() does first on SIGTERM
    status = await asyncio.to_thread(_kubelet_probe, server.health_port)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
