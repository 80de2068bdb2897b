"""The mTLS variant's probe works: a server of the project's bootstrap with mutual TLS
and a SAN allow-list answers `python -m services.common.healthcheck` run with the very
argv of the rendered exec probe (paths mapped to a throwaway PKI), presenting the pod's
own certificate; without a client certificate, or with one whose SAN is not allowed,
the probe fails (Kubernetes' native gRPC probe, plaintext only, could never pass)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from services.common.server import App, GrpcServer
from services.ratelimit.settings import RatelimitSettings
from tests.certs import Pki
from tests.deploy import k8s
from tests.deploy.metrics import ROOT

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


def _probe_argv(service: str) -> list[str]:
    overlay = k8s.OVERLAYS[0]
    dep = k8s.objects(overlay, "Deployment")[service]
    return dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]


async def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.fixture
async def ratelimit_server(tmp_path):
    namespace = f"safeguards-{k8s.OVERLAYS[0].name}"
    pki = Pki(tmp_path)
    own = _service_cert(pki, "ratelimit", ["ratelimit", f"ratelimit.{namespace}.svc"])
    stranger = _service_cert(pki, "monitor", ["monitor", f"monitor.{namespace}.svc"])
    settings = RatelimitSettings(
        listen="127.0.0.1:0",
        metrics_listen="",
        tls_cert_file=str(own / "tls.crt"),
        tls_key_file=str(own / "tls.key"),
        tls_client_ca_file=str(own / "ca.crt"),
        allowed_client_sans=[f"enforcer.{namespace}.svc", f"ratelimit.{namespace}.svc"],
    )
    server = GrpcServer("ratelimit", settings, App(bindings=[]), CollectorRegistry())
    port = await server.start()
    try:
        yield port, own, stranger
    finally:
        await server.drain()


def _mapped(argv: list[str], port: int, certs) -> list[str]:
    out = [sys.executable if a == "python" else a.replace(TLS_DIR, str(certs)) for a in argv]
    out[3] = f"127.0.0.1:{port}"
    return out


async def test_the_rendered_mtls_probe_passes_with_the_pods_own_certificate(ratelimit_server):
    port, own, _ = ratelimit_server
    argv = _probe_argv("ratelimit")
    assert argv[3] == "127.0.0.1:50053"
    out = await _run(_mapped(argv, port, own))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SERVING"


async def test_the_probe_fails_without_a_client_certificate(ratelimit_server):
    port, own, _ = ratelimit_server
    argv = _mapped(_probe_argv("ratelimit"), port, own)
    i = argv.index("--cert-file")
    del argv[i : i + 4]  # --cert-file X --key-file Y
    out = await _run(argv)
    assert out.returncode == 1
    assert "unhealthy: UNAVAILABLE" in out.stderr


async def test_the_probe_fails_with_a_certificate_the_allow_list_does_not_name(ratelimit_server):
    port, own, stranger = ratelimit_server
    argv = _mapped(_probe_argv("ratelimit"), port, own)
    for flag in ("--cert-file", "--key-file"):
        i = argv.index(flag)
        argv[i + 1] = argv[i + 1].replace(str(own), str(stranger))
    out = await _run(argv)
    assert out.returncode == 1
    assert "unhealthy: PERMISSION_DENIED" in out.stderr
