"""The rate limiter takes tenants from its callers' descriptors: with mutual TLS and
--caller-tenants-file, an entry naming a tenant the caller's certificate is not bound to
is PERMISSION_DENIED, on ShouldRateLimit and on every lease call (a caller cannot spend,
or probe, another tenant's budget). Real process, real certificates, real Redis."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from safeguards.v1 import concurrency_pb2 as cpb
from safeguards.v1 import concurrency_pb2_grpc

from tests.certs import Pki
from tests.integration.ratelimit.conftest import OK, descriptor, request

PARTNER = "spiffe://partner-a.test/gateway"


@pytest.fixture
def secured(start_ratelimit, tmp_path):
    pki = Pki(tmp_path)
    cert, key = pki.server()
    callers = tmp_path / "callers.yaml"
    callers.write_text(f"callers:\n  {PARTNER}: [acme]\n")
    svc = start_ratelimit(
        "--no-plaintext", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-client-ca-file", str(pki.ca_file), "--caller-tenants-file", str(callers),
    )  # fmt: skip
    c, k = pki.client("partner", PARTNER)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_file.read_bytes(), private_key=k.read_bytes(), certificate_chain=c.read_bytes()
    )
    with grpc.secure_channel(f"localhost:{svc.port}", creds) as ch:
        yield ch


def test_descriptors_may_name_only_the_callers_tenants(secured) -> None:
    rls = rls_pb2_grpc.RateLimitServiceStub(secured)
    assert rls.ShouldRateLimit(request(descriptor(("tenant", "acme"))), timeout=5).overall_code == OK
    assert rls.ShouldRateLimit(request(descriptor(("account", "x"))), timeout=5).overall_code == OK
    for d in (descriptor(("tenant", "other")), descriptor(("tenant", "acme"), ("tenant", "other"))):
        with pytest.raises(grpc.RpcError) as err:
            rls.ShouldRateLimit(request(descriptor(("tenant", "acme")), d), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "other" not in err.value.details()


def test_leases_check_the_binding_too(secured) -> None:
    leases = concurrency_pb2_grpc.ConcurrencyLimitServiceStub(secured)

    def entries(tenant: str):
        return [cpb.DescriptorEntry(key="tenant", value=tenant), cpb.DescriptorEntry(key="streams", value="s1")]

    # Allowed: answered (whatever the lease rules say), not refused.
    granted = leases.AcquireLease(cpb.AcquireLeaseRequest(domain="test", entries=entries("acme")), timeout=5)
    for call in (
        lambda: leases.AcquireLease(cpb.AcquireLeaseRequest(domain="test", entries=entries("other")), timeout=5),
        lambda: leases.ReleaseLease(
            cpb.ReleaseLeaseRequest(domain="test", entries=entries("other"), lease_id=granted.lease_id or "x"),
            timeout=5,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
