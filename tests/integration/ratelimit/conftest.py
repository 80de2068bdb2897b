"""Fixtures for rate-limit service tests: real processes, real Redis, real gRPC."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.support import ServiceProcess
from tools.embedded import EmbeddedRedisCluster, redis_cli_binary, redis_server_binary

SHARED_REDIS = "redis://127.0.0.1:6379/0"

TEST_CONFIG = """
domain: test
descriptors:
  - key: tenant
    rate_limit: {name: tenant-hourly, unit: hour, requests_per_unit: 10}
    descriptors:
      - key: model
        rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: fixed
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: fixed_window}
  - key: shadow
    rate_limit: {unit: hour, requests_per_unit: 2}
    shadow_mode: true
  - key: exact
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: unlimited
    rate_limit: {unlimited: true}
  - key: streams
    concurrency_limit: {max_concurrent: 2, lease_seconds: 1}
  - key: streams_shadow
    concurrency_limit: {max_concurrent: 1, lease_seconds: 5}
    shadow_mode: true
  - key: detailed
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ratelimit"
    d.mkdir()
    (d / "test.yaml").write_text(TEST_CONFIG)
    return d


@pytest.fixture
def key_prefix() -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield prefix
    r = redis.Redis.from_url(SHARED_REDIS)
    keys = list(r.scan_iter(f"{prefix}*"))
    if keys:
        r.delete(*keys)


@pytest.fixture
def start_ratelimit(config_dir: Path, key_prefix: str) -> Iterator[Callable[..., ServiceProcess]]:
    procs: list[ServiceProcess] = []

    def start(*extra: str, redis_url: str = SHARED_REDIS, env: dict[str, str] | None = None) -> ServiceProcess:
        args = [
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
            "--config",
            str(config_dir),
            "--key-prefix",
            key_prefix,
            "--metrics-listen",
            "",
            "--config-poll-seconds",
            "0.2",
            *extra,
        ]
        proc = ServiceProcess("services.ratelimit", args, env=env)
        procs.append(proc)
        return proc.start()

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def ratelimit(start_ratelimit) -> ServiceProcess:
    return start_ratelimit()


def descriptor(*entries: tuple[str, str], hits: int | None = None) -> ratelimit_pb2.RateLimitDescriptor:
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        d.hits_addend.value = hits
    return d


def request(*descriptors: ratelimit_pb2.RateLimitDescriptor, domain: str = "test", hits: int = 0):
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=list(descriptors), hits_addend=hits)


class RlsClient:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def check(self, *descriptors, domain: str = "test", hits: int = 0, metadata=None):
        return self.stub.ShouldRateLimit(request(*descriptors, domain=domain, hits=hits), timeout=5, metadata=metadata)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def rls(ratelimit: ServiceProcess) -> Iterator[RlsClient]:
    client = RlsClient(ratelimit.address)
    yield client
    client.close()


OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT


@pytest.fixture
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A private 3-master Redis Cluster, one replica per master (2-3 s to start)."""
    try:
        redis_server_binary()
        redis_cli_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        yield cluster


def degraded_count(metrics_port: int, mode: str) -> float:
    """ratelimit_degraded_decisions_total (domain "test") of one service, from its /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("ratelimit_degraded_decisions_total") and f'mode="{mode}"' in line:
            return float(line.split()[-1])
    return 0.0


def wait_until(fn, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
