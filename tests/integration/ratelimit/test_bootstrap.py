"""The shared server bootstrap, proven on a real service process: health,
reflection, metrics, JSON logs with request ids, TLS / mutual TLS with the
caller's certificate SAN authorised, and a graceful drain on SIGTERM."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import grpc
import pytest
import redis as redis_lib
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.certs import Pki
from tests.integration.ratelimit.conftest import OK, descriptor, request
from tests.support import PrivateRedis, free_port


def health_status(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_reflection_and_metrics(start_ratelimit) -> None:
    port = free_port()
    svc = start_ratelimit("--metrics-listen", f"127.0.0.1:{port}")
    with grpc.insecure_channel(svc.address) as ch:
        assert health_status(ch) == health_pb2.HealthCheckResponse.SERVING
        assert (
            health_status(ch, "envoy.service.ratelimit.v3.RateLimitService") == health_pb2.HealthCheckResponse.SERVING
        )
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {
            "envoy.service.ratelimit.v3.RateLimitService",
            "safeguards.v1.ConcurrencyLimitService",
            "grpc.health.v1.Health",
        } <= names
        rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request(descriptor(("tenant", "m"))), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert (
        'grpc_server_started_total{grpc_method="ShouldRateLimit",'
        'grpc_service="envoy.service.ratelimit.v3.RateLimitService"} 1.0' in body
    )
    assert "grpc_server_handling_seconds_bucket" in body


def test_logs_are_json_with_the_callers_request_id(start_ratelimit) -> None:
    svc = start_ratelimit()
    with grpc.insecure_channel(svc.address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        with pytest.raises(grpc.RpcError):
            stub.ShouldRateLimit(
                request(descriptor(("tenant", "x")), domain="missing-domain"),
                timeout=5,
                metadata=[("x-request-id", "req-1234")],
            )
    time.sleep(0.2)
    records = [json.loads(line) for line in svc.logs().splitlines() if line.strip()]
    assert all({"ts", "level", "msg", "service", "region"} <= r.keys() for r in records)
    assert records[0]["service"] == "ratelimit"
    rejected = [r for r in records if r["msg"] == "rpc rejected"]
    assert rejected and rejected[0]["request_id"] == "req-1234"
    assert rejected[0]["grpc_code"] == "INVALID_ARGUMENT" and "missing-domain" in rejected[0]["error"]


def test_sigterm_drains_in_flight_calls_then_exits_zero(start_ratelimit) -> None:
    redis = PrivateRedis().start()
    try:
        svc = start_ratelimit(
            "--redis-timeout-ms",
            "5000",
            "--shutdown-delay-seconds",
            "0.5",
            "--drain-grace-seconds",
            "5",
            redis_url=redis.url,
        )
        ch = grpc.insecure_channel(svc.address)
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        assert stub.ShouldRateLimit(request(descriptor(("tenant", "warm"))), timeout=5).overall_code == OK
        # Pause Redis so the next call is in flight for ~1.5 s.
        redis_lib.Redis(port=redis.port).execute_command("CLIENT", "PAUSE", "1500", "ALL")
        result: dict = {}

        def slow_call() -> None:
            t0 = time.monotonic()
            resp = stub.ShouldRateLimit(request(descriptor(("tenant", "inflight"))), timeout=10)
            result.update(
                code=resp.overall_code, remaining=resp.statuses[0].limit_remaining, took=time.monotonic() - t0
            )

        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.3)
        svc.signal(15)
        time.sleep(0.1)
        # During the shutdown delay the server still answers, but health says NOT_SERVING.
        assert health_status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
        t.join(10)
        assert result["code"] == OK and result["remaining"] == 9  # a real Redis answer, not a degraded one
        assert result["took"] >= 1.0
        assert svc.wait(10) == 0
        ch.close()
        assert "stopped" in svc.logs()
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_plaintext_must_be_chosen_explicitly(config_dir) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "services.ratelimit", "--config", str(config_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "no transport security chosen" in out.stderr


def test_mutual_tls_authorises_callers_by_certificate_san(start_ratelimit, pki: Pki) -> None:
    cert, key = pki.server()
    svc = start_ratelimit(
        "--no-plaintext",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-client-ca-file",
        str(pki.ca_file),
        "--allowed-client-sans",
        "spiffe://mesh/enforcer",
    )
    port = svc.port
    ca = pki.ca_file.read_bytes()

    def call(client_name: str | None, uri: str = ""):
        kwargs = {}
        if client_name:
            c, k = pki.client(client_name, uri)
            kwargs = {"private_key": k.read_bytes(), "certificate_chain": c.read_bytes()}
        creds = grpc.ssl_channel_credentials(root_certificates=ca, **kwargs)
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            return rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(
                request(descriptor(("tenant", "tls"))), timeout=5
            )

    assert call("enforcer", "spiffe://mesh/enforcer").overall_code == OK
    with pytest.raises(grpc.RpcError) as denied:
        call("intruder", "spiffe://mesh/intruder")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as no_cert:
        call(None)
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_server_rejects_plaintext_clients(start_ratelimit, pki: Pki) -> None:
    cert, key = pki.server()
    svc = start_ratelimit("--no-plaintext", "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    with grpc.insecure_channel(svc.address) as ch, pytest.raises(grpc.RpcError):
        rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request(descriptor(("tenant", "p"))), timeout=3)
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
    with grpc.secure_channel(f"localhost:{svc.port}", creds) as ch:
        assert (
            rls_pb2_grpc.RateLimitServiceStub(ch)
            .ShouldRateLimit(request(descriptor(("tenant", "p"))), timeout=5)
            .overall_code
            == OK
        )


def test_calls_beyond_the_concurrency_limit_are_resource_exhausted(start_ratelimit) -> None:
    redis = PrivateRedis().start()
    try:
        svc = start_ratelimit("--max-concurrent-rpcs", "1", "--redis-timeout-ms", "5000", redis_url=redis.url)
        with grpc.insecure_channel(svc.address) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            stub.ShouldRateLimit(request(descriptor(("tenant", "warm"))), timeout=5)
            redis_lib.Redis(port=redis.port).execute_command("CLIENT", "PAUSE", "1000", "ALL")
            slow = stub.ShouldRateLimit.future(request(descriptor(("tenant", "a"))), timeout=10)
            time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as err:
                stub.ShouldRateLimit(request(descriptor(("tenant", "b"))), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert slow.result().overall_code == OK
    finally:
        redis.stop()


async def test_inter_service_client_speaks_mutual_tls(start_ratelimit, pki: Pki) -> None:
    """The channel helper services use to call each other presents its certificate
    and verifies the server's, and is refused without one."""
    from envoy.service.ratelimit.v3 import rls_pb2_grpc as stubs

    from services.common.tls import ClientTLS, secure_channel

    cert, key = pki.server()
    svc = start_ratelimit(
        "--no-plaintext",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-client-ca-file",
        str(pki.ca_file),
        "--allowed-client-sans",
        "spiffe://mesh/enforcer",
    )
    ccert, ckey = pki.client("enforcer2", "spiffe://mesh/enforcer")
    tls = ClientTLS(ca_file=str(pki.ca_file), cert_file=str(ccert), key_file=str(ckey), server_name="localhost")
    async with secure_channel(f"127.0.0.1:{svc.port}", tls) as ch:
        resp = await stubs.RateLimitServiceStub(ch).ShouldRateLimit(request(descriptor(("tenant", "c"))), timeout=5)
        assert resp.overall_code == OK
    async with secure_channel(
        f"127.0.0.1:{svc.port}", ClientTLS(ca_file=str(pki.ca_file), server_name="localhost")
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.RateLimitServiceStub(ch).ShouldRateLimit(request(descriptor(("tenant", "c"))), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
