"""The rate limiter on a local 3-master Redis Cluster (one replica each, real
redis-server processes joined by `redis-cli --cluster create`): every key of one
descriptor lives in one slot, limits are exact across two service replicas, and
through a failover of a master the service keeps answering and stays exact apart
from the fail-open decisions its metrics count."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from safeguards.v1 import concurrency_pb2 as cpb
from safeguards.v1 import concurrency_pb2_grpc

from services.ratelimit.store import cluster_seeds
from tests.integration.ratelimit.conftest import (
    OK,
    OVER,
    RlsClient,
    degraded_count,
    descriptor,
    request,
    wait_until,
)
from tests.support import free_port
from tools.embedded import EmbeddedRedisCluster

LIMIT = 100  # the "exact" rule: 100 per day, no refill within a test


def cluster_keys(cluster: EmbeddedRedisCluster, prefix: str) -> dict[str, int]:
    """Every key under `prefix`, with the port of the primary that holds it."""
    out = {}
    for port in {p for _, _, p in cluster.slot_ranges()}:
        with cluster.client(port) as r:
            out.update({k: port for k in r.scan_iter(match=f"{prefix}*", count=1000)})
    return out


def role(cluster: EmbeddedRedisCluster, port: int) -> str:
    with cluster.client(port) as r:
        return r.info("replication")["role"]


def start_on_cluster(start_ratelimit, cluster: EmbeddedRedisCluster, *extra: str):
    return start_ratelimit("--redis-mode", "cluster", *extra, redis_url=cluster.url)


def test_each_descriptors_keys_share_one_slot(start_ratelimit, redis_cluster, key_prefix) -> None:
    svc = start_on_cluster(start_ratelimit, redis_cluster)
    client = RlsClient(svc.address)
    leases = concurrency_pb2_grpc.ConcurrencyLimitServiceStub(client.channel)
    # Values that would break a naive hash tag ({, }, the separators) and plain ones.
    values = ["a}b", "a}c", "{", "}", "{x}", "k=v:w", "é/ü", *(f"t{i}" for i in range(24))]
    try:
        for v in values:
            # Three keys per descriptor: the rule's GCRA bucket, an override's bucket,
            # and (for "streams") the concurrency lease set.
            assert client.check(descriptor(("tenant", v))).overall_code == OK
            over = descriptor(("tenant", v))
            over.limit.requests_per_unit, over.limit.unit = 5, 3  # 5 per HOUR
            assert client.check(over).overall_code == OK
            assert leases.AcquireLease(
                cpb.AcquireLeaseRequest(domain="test", entries=[cpb.DescriptorEntry(key="streams", value=v)])
            ).granted
            over.entries[0].key = "streams"
            assert client.check(over).overall_code == OK
    finally:
        client.close()

    keys = cluster_keys(redis_cluster, key_prefix)
    by_descriptor = collections.defaultdict(list)
    for key in keys:
        by_descriptor[key.rsplit(":", 1)[0]].append(key)  # strip the suffix (g, o5/hour, c)
    assert len(by_descriptor) == 2 * len(values)  # tenant=v and streams=v
    assert all(len(ks) == 2 for ks in by_descriptor.values())

    with redis_cluster.client(redis_cluster.live_ports()[0]) as r:
        slots = {d: {r.execute_command("CLUSTER KEYSLOT", k) for k in ks} for d, ks in by_descriptor.items()}
    assert all(len(s) == 1 for s in slots.values()), slots
    # Each descriptor's keys sit on one primary, and the descriptors spread over all three.
    assert all(len({keys[k] for k in ks}) == 1 for ks in by_descriptor.values())
    assert len(set(keys.values())) == 3
    # Escaping keeps descriptors that differ only after a "}" in distinct tags.
    distinct = {next(iter(s)) for d, s in slots.items() if "tenant=a%7D" in d}
    assert len(distinct) == 2


async def _hammer(addresses: list[str], reqs: list, per_request: int, concurrency: int) -> list[tuple[int, int]]:
    """(request index, overall code) of `per_request` calls of each request, spread
    round-robin over the service replicas."""
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int, int]:
        async with sem:
            which = i % len(reqs)
            resp = await stubs[i % len(stubs)].ShouldRateLimit(reqs[which], timeout=10)
            return which, resp.overall_code

    try:
        return await asyncio.gather(*(one(i) for i in range(per_request * len(reqs))))
    finally:
        for c in channels:
            await c.close()


def test_two_replicas_exact_on_a_cluster(start_ratelimit, redis_cluster, key_prefix) -> None:
    # Fail closed with a generous deadline: a decision that misses it (a loaded CI
    # box) answers OVER_LIMIT and is counted, so it can only lower the count.
    ports = [free_port(), free_port()]
    common = ("--fail-mode", "closed", "--redis-timeout-ms", "1000")
    a, b = (
        start_on_cluster(start_ratelimit, redis_cluster, *common, "--metrics-listen", f"127.0.0.1:{port}", *extra)
        for port, extra in zip(ports, (("--local-cache-entries", "0"), ()), strict=True)
    )
    names = [f"k{i}" for i in range(6)]
    reqs = [request(descriptor(("exact", n))) for n in names]
    results = asyncio.run(_hammer([a.address, b.address], reqs, 3 * LIMIT, 64))
    admitted = collections.Counter(i for i, code in results if code == OK)
    degraded = sum(degraded_count(port, "closed") for port in ports)
    for i in range(len(names)):
        assert LIMIT - degraded <= admitted[i] <= LIMIT, (admitted, degraded)
    # The six limits live on more than one primary: the exactness is per slot, not a
    # property of one server.
    assert len(set(cluster_keys(redis_cluster, key_prefix).values())) >= 2


async def _hammer_through(addresses: list[str], req, concurrency: int, event: Callable[[], object], after: int):
    """Call without pause from `concurrency` clients while `event` runs (in a
    thread), then on until `after` more answers came and one of them was
    OVER_LIMIT (a real decision: fail-open answers are OK), for at most 60 s.
    Returns (every code, the codes after the event, the event's result)."""
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    codes: list[int] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        while not stop.is_set():
            resp = await stubs[(i + len(codes)) % len(stubs)].ShouldRateLimit(req, timeout=10)
            codes.append(resp.overall_code)

    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    try:
        result = await asyncio.to_thread(event)
        mark = len(codes)
        deadline = asyncio.get_running_loop().time() + 60
        while not any(t.done() for t in tasks) and asyncio.get_running_loop().time() < deadline:
            if len(codes) >= mark + after and OVER in codes[mark:]:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)  # raises the first RPC error, if any
        return codes, codes[mark:], result
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for c in channels:
            await c.close()


def _replicas_on_cluster(start_ratelimit, cluster):
    ports = [free_port(), free_port()]
    services = [
        start_on_cluster(
            start_ratelimit,
            cluster,
            "--fail-mode",
            "open",
            "--redis-timeout-ms",
            "200",
            "--metrics-listen",
            f"127.0.0.1:{port}",
            *extra,
        )
        for port, extra in zip(ports, (("--local-cache-entries", "0"), ()), strict=True)
    ]
    return services, ports


def real_decision_on_a_fresh_key(client: RlsClient) -> None:
    """A new key answers limit - 1 remaining: decided in Redis, not failed open (which
    reports 0). Retried on new keys: on a loaded box one call may miss its deadline."""
    keys = (f"fresh{i}" for i in range(1000))
    wait_until(lambda: client.check(descriptor(("exact", next(keys)))).statuses[0].limit_remaining == LIMIT - 1)


def _primary_holding(cluster: EmbeddedRedisCluster, prefix: str) -> int:
    keys = cluster_keys(cluster, prefix)
    assert len(keys) == 1, keys
    return cluster.primary_of(next(iter(keys)))


def test_planned_failover_keeps_answering_and_stays_exact(start_ratelimit, redis_cluster, key_prefix) -> None:
    (a, b), metrics = _replicas_on_cluster(start_ratelimit, redis_cluster)
    req = request(descriptor(("exact", "f")))
    clients = [RlsClient(a.address), RlsClient(b.address)]
    try:
        # Half the limit before the failover, all of it real.
        before = [clients[i % 2].check(descriptor(("exact", "f"))).overall_code for i in range(LIMIT // 2)]
        assert before == [OK] * (LIMIT // 2)
        primary = _primary_holding(redis_cluster, key_prefix)

        # CLUSTER FAILOVER on the primary's replica while 16 clients keep calling; then
        # 3x the limit more, so the limit is crossed on the new primary.
        after = 3 * LIMIT
        codes, later, new_primary = asyncio.run(
            _hammer_through([a.address, b.address], req, 16, lambda: redis_cluster.failover(primary), after)
        )
        assert new_primary != primary
        assert redis_cluster.primary_of(next(iter(cluster_keys(redis_cluster, key_prefix)))) == new_primary
        degraded = sum(degraded_count(port, "open") for port in metrics)
        admitted = before.count(OK) + codes.count(OK)
        # Never more than the limit, apart from the fail-open answers the metrics count;
        # never fewer: a failed-open call consumed at most one hit, as no call is resent.
        assert admitted - degraded <= LIMIT, (admitted, degraded)
        assert admitted >= LIMIT, (admitted, degraded)
        # Real decisions again after the failover: the limit was crossed on the new primary.
        assert OVER in later
        # The service makes real decisions again on the new primary (not fail-open).
        real_decision_on_a_fresh_key(clients[0])
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("failure", ["killed", "paused"])
def test_failed_master_replica_takes_over(start_ratelimit, redis_cluster, key_prefix, failure: str) -> None:
    """An unplanned failover: the master dies (SIGKILL: connections refused) or hangs
    (SIGSTOP: connections open, no replies) until its replica takes over."""
    (a, b), metrics = _replicas_on_cluster(start_ratelimit, redis_cluster)
    req = request(descriptor(("exact", "k")))
    client = RlsClient(a.address)
    try:
        assert client.check(descriptor(("exact", "k"))).overall_code == OK
        primary = _primary_holding(redis_cluster, key_prefix)
        replica = redis_cluster.replicas_of(primary)[0]
        node = next(n for n in redis_cluster.nodes if n.port == primary)

        def fail() -> None:
            if failure == "killed":
                node.proc.kill()
                node.proc.wait()
            else:
                os.kill(node.proc.pid, signal.SIGSTOP)
            # The replica takes over after the node timeout (1 s) and an election.
            wait_until(lambda: role(redis_cluster, replica) == "master", 30)
            if failure == "paused":
                os.kill(node.proc.pid, signal.SIGCONT)  # it comes back as a replica of the new master
            redis_cluster.wait_healthy()

        after = 3 * LIMIT
        codes, later, _ = asyncio.run(_hammer_through([a.address, b.address], req, 8, fail, after))
        # Every call was answered (an RPC error would have raised); while the slot had
        # no primary that answered, the answers failed open and were counted.
        assert sum(degraded_count(port, "open") for port in metrics) > 0
        assert OVER in later  # real decisions again, the limit crossed on the new primary
        # Real decisions again, on the promoted replica.
        real_decision_on_a_fresh_key(client)
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        client.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "unix:///tmp/redis.sock"], "redis:// or rediss://"),
        (["--redis-url", "redis://127.0.0.1:7000/3"], "only database 0"),
        (["--redis-url", "redis://127.0.0.1:7000,127.0.0.1:x"], "bad cluster seed"),
        (["--key-prefix", "rl{x}:"], "must not contain { or }"),
    ],
)
def test_cluster_settings_refuse_what_would_break_it(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.ratelimit", "--plaintext", "--redis-mode", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_cluster_mode_from_the_env_var() -> None:
    env = dict(os.environ, RATELIMIT_REDIS_MODE="cluster", RATELIMIT_REDIS_URL="unix:///tmp/redis.sock")
    out = subprocess.run(
        [sys.executable, "-m", "services.ratelimit", "--plaintext"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2 and "redis:// or rediss://" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("url", "first", "seeds"),
    [
        ("redis://10.0.0.1:7000", "redis://10.0.0.1:7000", [("10.0.0.1", 7000)]),
        # Credentials, database 0 and options stay on the URL the client reads them from.
        (
            "rediss://u:p%40ss@a:7000, b:7001,c/0?socket_keepalive=true",
            "rediss://u:p%40ss@a:7000/0?socket_keepalive=true",
            [("a", 7000), ("b", 7001), ("c", 6379)],
        ),
        ("redis://[::1]:7000,[::2]", "redis://[::1]:7000", [("::1", 7000), ("::2", 6379)]),
    ],
)
def test_cluster_seeds_from_the_url(url: str, first: str, seeds: list[tuple[str, int]]) -> None:
    assert cluster_seeds(url) == (first, seeds)
