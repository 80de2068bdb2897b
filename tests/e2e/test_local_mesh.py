"""`make run`'s mesh: embedded Redis and Kafka-compatible broker, every existing
service, Envoy in front with the development upstream, a readable summary (addresses,
dev credentials, logs in files), region topics created, the official SDK served
through Envoy with the printed token, and Ctrl-C stops everything with no orphan
processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import openai
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from safeguards.v1 import safeguards_pb2, safeguards_pb2_grpc

from tests.integration.ratelimit.conftest import OK, descriptor, request
from tests.support import ROOT
from tools.dev_upstream import DEV_TAG
from tools.run_mesh import LOGS, monitor_db_name


def children_of(pid: int) -> set[int]:
    """All descendants of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        nxt = {c for c, p in parents.items() if p in frontier} - found
        found |= nxt
        frontier = nxt
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


FREE_PORTS = {
    f"{svc}_{what}": "127.0.0.1:0"
    for svc in ("RATELIMIT", "CLASSIFIER", "ENFORCER", "MONITOR")
    for what in ("LISTEN", "METRICS_LISTEN")
} | {"MONITOR_CONSOLE_LISTEN": "127.0.0.1:0", "ENVOY_LISTEN": "127.0.0.1:0", "ENVOY_ADMIN_LISTEN": "127.0.0.1:0"}


class Mesh:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.run_mesh"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("mesh ready"):
                self.ready.set()
        self.ready.set()

    def address(self, name: str) -> str:
        line = next(x for x in self.lines if x.startswith(f"{name} listening on "))
        return line.split(" listening on ")[1].split()[0]


def test_local_mesh_starts_serves_and_stops_cleanly() -> None:
    mesh = Mesh({**FREE_PORTS, "REGION": "test-e2e"})
    try:
        assert mesh.ready.wait(90), mesh.lines
        assert mesh.proc.poll() is None, mesh.lines
        redis_addr, kafka_addr, rl_addr = mesh.address("redis"), mesh.address("kafka"), mesh.address("ratelimit")
        with grpc.insecure_channel(rl_addr) as ch:
            resp = rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(
                request(descriptor(("tenant", "e2e")), domain="llm"), timeout=5
            )
        assert resp.overall_code == OK
        with grpc.insecure_channel(mesh.address("enforcer")) as ch:
            decision = (
                safeguards_pb2_grpc.SafeguardsServiceStub(ch)
                .ScreenPrompt(
                    safeguards_pb2.ScreenPromptRequest(
                        context=safeguards_pb2.RequestContext(tenant="e2e", account="a"),
                        messages=[safeguards_pb2.ChatMessage(role="user", content="What is the capital of France?")],
                    ),
                    timeout=10,
                )
                .decision
            )
        assert decision.action == safeguards_pb2.ACTION_ALLOW and not decision.degraded

        async def topics() -> set[str]:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_addr)
            await admin.start()
            try:
                return set(await admin.list_topics())
            finally:
                await admin.close()

        assert {
            "safeguards.signals.test-e2e",
            "safeguards.actions.test-e2e",
            "safeguards.rollup.global",
        } <= asyncio.run(topics())
        assert redis_addr.startswith("127.0.0.1:")
        # The gateway: the SDK pointed at Envoy with the printed development token.
        token = next(x for x in mesh.lines if x.startswith("gateway client: authorization: Bearer ")).split()[-1]
        client = openai.OpenAI(base_url=f"http://{mesh.address('envoy')}/v1", api_key=token, max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name a river."}])
        assert DEV_TAG in reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://{mesh.address('envoy')}/v1", api_key="x", max_retries=0).models.list()
        # Readable: no JSON log lines among what `make run` prints; each service logs to its file.
        assert not [x for x in mesh.lines if x.startswith("{")], mesh.lines
        for name in ("ratelimit", "classifier", "enforcer", "dev-upstream"):
            assert " listening on " in (LOGS / f"{name}.log").read_text()
        assert any(
            x.startswith(f"monitor database: {monitor_db_name()}") or x.startswith("monitor skipped")
            for x in mesh.lines
        )
        # The console of the local run, with the dev users (needs the monitor, so PostgreSQL).
        if any(x.startswith("monitor listening on ") for x in mesh.lines):
            console = next(x for x in mesh.lines if x.startswith("console serving ")).split()[2]
            with urllib.request.urlopen(f"{console}signin", timeout=10) as page:
                assert page.status == 200 and b'name="password"' in page.read()
            assert any(x.startswith("monitor console: sign in as dev-reviewer") for x in mesh.lines)
        kids = children_of(mesh.proc.pid)
        assert len(kids) >= 7  # redis-server, tansu, ratelimit, classifier, enforcer, dev upstream, envoy
        mesh.proc.send_signal(signal.SIGINT)
        assert mesh.proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [k for k in kids if alive(k)], "orphan processes left behind"
    finally:
        if mesh.proc.poll() is None:
            mesh.proc.kill()


def test_redis_url_points_the_mesh_at_a_real_server() -> None:
    mesh = Mesh({**FREE_PORTS, "REDIS_URL": "redis://127.0.0.1:6379/0"})
    try:
        assert mesh.ready.wait(90), mesh.lines
        assert any(x.startswith("redis at redis://127.0.0.1:6379/0") for x in mesh.lines)
        assert not any(x.startswith("redis listening on") for x in mesh.lines)
        mesh.proc.send_signal(signal.SIGTERM)
        assert mesh.proc.wait(60) == 0
    finally:
        if mesh.proc.poll() is None:
            mesh.proc.kill()


def test_each_checkout_gets_a_monitor_database_of_its_own() -> None:
    a, b = monitor_db_name(Path("/home/me/mesh")), monitor_db_name(Path("/home/me/mesh-2"))
    assert a != b and a == monitor_db_name(Path("/home/me/mesh"))
    assert a.startswith("safeguards_monitor_") and a.replace("_", "").isalnum() and len(a) < 63
