"""--health-listen: a plaintext listener that serves grpc.health.v1 and nothing else, so
that Kubernetes' native gRPC probes (plaintext only) work while the main port requires
mutual TLS. A real rate-limit process with mutual TLS: the main port refuses a plaintext
client, the health port answers SERVING without a certificate, serves no other service,
and turns NOT_SERVING (Check and an open Watch) as soon as SIGTERM starts the drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.server import App, GrpcServer
from services.ratelimit.settings import RatelimitSettings
from tests.certs import Pki
from tests.support import ROOT, ServiceProcess, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SHUTDOWN_DELAY_S = 4


def _check(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _rls_request() -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="tenant", value="health-port")
    return rls_pb2.RateLimitRequest(domain="test", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def mtls_ratelimit(tmp_path: Path, pki: Pki):
    config = tmp_path / "config"
    config.mkdir()
    (config / "test.yaml").write_text(
        "domain: test\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: hour, requests_per_unit: 100}\n"
    )
    cert, key = pki.server()
    health_port = free_port()
    svc = ServiceProcess(
        "services.ratelimit",
        [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--health-listen",
            f"127.0.0.1:{health_port}",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-client-ca-file",
            str(pki.ca_file),
            "--config",
            str(config),
            "--redis-url",
            "redis://127.0.0.1:6379/0",
            "--key-prefix",
            f"health{health_port}:",
            "--shutdown-delay-seconds",
            str(SHUTDOWN_DELAY_S),
        ],
    )
    svc.start()
    try:
        yield svc, health_port
    finally:
        svc.stop()


def _mtls_channel(pki: Pki, port: int) -> grpc.Channel:
    ccert, ckey = pki.client("enforcer", "spiffe://mesh/enforcer")
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_file.read_bytes(), private_key=ckey.read_bytes(), certificate_chain=ccert.read_bytes()
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


def test_health_port_answers_in_plaintext_while_the_main_port_requires_mutual_tls(mtls_ratelimit, pki) -> None:
    svc, health_port = mtls_ratelimit
    # The main port: a plaintext client gets no answer at all.
    with grpc.insecure_channel(svc.address) as ch, pytest.raises(grpc.RpcError) as refused:
        _check(ch)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and a client with a certificate is served there.
    with _mtls_channel(pki, svc.port) as ch:
        assert _check(ch) == SERVING
    # The health port: plaintext, no certificate, the same statuses (per service too).
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
        assert _check(ch) == SERVING
        assert _check(ch, "envoy.service.ratelimit.v3.RateLimitService") == SERVING
        # The very probe compose and the exec probes run, without any TLS flag.
        out = subprocess.run(
            [sys.executable, "-m", "services.common.healthcheck", f"127.0.0.1:{health_port}"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert (out.returncode, out.stdout.strip()) == (0, "SERVING"), out.stderr


def test_health_port_serves_nothing_but_health(mtls_ratelimit) -> None:
    """No way around mutual TLS through the plaintext port: the rate-limit API and
    reflection are not there."""
    _, health_port = mtls_ratelimit
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
        with pytest.raises(grpc.RpcError) as rls:
            rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(_rls_request(), timeout=5)
        assert rls.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as refl:
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            next(stream)
        assert refl.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # A request far beyond any service name is refused, not buffered.
        with pytest.raises(grpc.RpcError) as huge:
            _check(ch, "x" * 100_000)
        assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _check(ch) == SERVING


def test_health_port_turns_not_serving_on_sigterm_and_closes_after_the_drain(mtls_ratelimit, pki) -> None:
    svc, health_port = mtls_ratelimit
    health = grpc.insecure_channel(f"127.0.0.1:{health_port}")
    main = _mtls_channel(pki, svc.port)
    try:
        watch = health_pb2_grpc.HealthStub(health).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == SERVING
        svc.signal(signal.SIGTERM)
        # The open Watch sees the drain start, and so does every new Check.
        assert next(watch).status == NOT_SERVING
        assert _check(health) == NOT_SERVING
        # Still inside the shutdown delay: the main port keeps serving calls (to certificate
        # holders only), reporting NOT_SERVING as its health too.
        with pytest.raises(grpc.RpcError):
            with grpc.insecure_channel(svc.address) as plain:
                _check(plain)
        assert _check(main) == NOT_SERVING
        answer = rls_pb2_grpc.RateLimitServiceStub(main).ShouldRateLimit(_rls_request(), timeout=5)
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK
        assert svc.wait(timeout=30) == 0
    finally:
        health.close()
        main.close()
    # After the drain both listeners are gone.
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch, pytest.raises(grpc.RpcError) as gone:
        _check(ch)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------
# Settings and start
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--listen", "127.0.0.1:50053", "--health-listen", "0.0.0.0:50053"],
            "--health-listen 0.0.0.0:50053 uses the port of --listen 127.0.0.1:50053",
        ),
        (
            ["--metrics-listen", "127.0.0.1:51053", "--health-listen", "127.0.0.1:51053"],
            "--health-listen 127.0.0.1:51053 uses the port of --metrics-listen 127.0.0.1:51053",
        ),
        (["--health-listen", "52053"], "address '52053' is not HOST:PORT"),
    ],
)
def test_bad_health_listen_is_one_error_line(args, message, capsys, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("RATELIMIT_")]:
        monkeypatch.delenv(key)
    with pytest.raises(SystemExit) as exited:
        RatelimitSettings.parse(["--plaintext", *args])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"python -m services.ratelimit: error: {message}\n"


def test_health_listen_is_read_from_the_env_and_off_by_default(monkeypatch) -> None:
    monkeypatch.delenv("RATELIMIT_HEALTH_LISTEN", raising=False)
    assert RatelimitSettings(plaintext=True).health_listen == ""
    monkeypatch.setenv("RATELIMIT_HEALTH_LISTEN", "0.0.0.0:52053")
    assert RatelimitSettings(plaintext=True).health_listen == "0.0.0.0:52053"


def test_health_listen_is_in_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.ratelimit", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "--health-listen" in out.stdout and "[env: RATELIMIT_HEALTH_LISTEN]" in out.stdout


async def test_a_taken_health_port_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = RatelimitSettings(plaintext=True, listen="127.0.0.1:0", health_listen=f"127.0.0.1:{port}")
        server = GrpcServer("ratelimit", settings, App(bindings=[]), CollectorRegistry())
        with pytest.raises(OSError, match=f"cannot bind --health-listen 127.0.0.1:{port}"):
            await server.start()


async def test_health_port_zero_picks_a_free_port_and_drain_stops_it() -> None:
    settings = RatelimitSettings(plaintext=True, listen="127.0.0.1:0", metrics_listen="", health_listen="127.0.0.1:0")
    server = GrpcServer("ratelimit", settings, App(bindings=[]), CollectorRegistry())
    await server.start()
    assert server.health_port and server.health_port != server.port
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
        await server.drain()
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=False)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
