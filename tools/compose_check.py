"""Validate compose.yaml without a Docker engine (no engine runs on our machines).

    python -m tools.compose_check [compose.yaml] [--no-external]

Three layers, every problem reported (one line each), exit status 1 when any:

1. the compose-spec JSON schema, vendored as deploy/compose-spec.schema.json (see
   deploy/compose-spec.schema.SOURCE for where it comes from), applied to the file after
   `${VAR:-default}` interpolation, as `docker compose` does;
2. the project's rules (`check_rules`): one image built from deploy/Dockerfile, and for
   every Safeguards service a healthcheck, a stop_grace_period covering its drain,
   metrics scraped by Prometheus (cross-checked with deploy/prometheus.yml), the
   documented ports, no fixed container_name or host port on anything scalable,
   depends_on that can be satisfied, a spool (and actions snapshot) on a volume of its
   own per replica, an action key ring for the enforcer and the monitor, key and password
   files on volumes, a consistent KRaft cluster that every service bootstraps from in
   full on a listener of its security protocol, and alert rule files that are mounted
   into Prometheus and exist;
3. external validators when their binaries exist (`--no-external` skips them): Debian's
   `docker-compose` (v1, `config -q` needs no engine), `promtool check config` and
   `promtool check rules` on the alert rules that prometheus.yml loads.

Tests import `service_env` and `service_command` to start the real processes with the very
same command and env vars that compose.yaml gives the containers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
SCHEMA_FILE = ROOT / "deploy" / "compose-spec.schema.json"
DOCKERFILE = "deploy/Dockerfile"
PROMETHEUS_CONFIG_TARGET = "/etc/prometheus/prometheus.yml"
HEALTHCHECK_MODULE = "services.common.healthcheck"


@dataclass(frozen=True)
class ServiceSpec:
    """What the project documents for one Safeguards service (README, issue #2)."""

    name: str
    env_prefix: str
    port: int
    metrics_port: int
    #: reads or writes the signed actions topic: needs the region's action key ring
    signs_actions: bool = False

    @property
    def module(self) -> str:
        return f"services.{self.name}"


SAFEGUARDS_SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec("enforcer", "ENFORCER_", 50051, 51051, signs_actions=True),
        ServiceSpec("classifier", "CLASSIFIER_", 50052, 51052),
        ServiceSpec("ratelimit", "RATELIMIT_", 50053, 51053),
        ServiceSpec("monitor", "MONITOR_", 50054, 51054, signs_actions=True),
    )
}

# Defaults of services.common.settings.ServiceSettings, used when compose leaves them out.
DEFAULT_SHUTDOWN_DELAY_S = 0.0
DEFAULT_DRAIN_GRACE_S = 10.0
# services.common.kafka.KafkaSettings' default, and Kafka's own defaults.
DEFAULT_KAFKA_SECURITY_PROTOCOL = "PLAINTEXT"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
DEFAULT_KAFKA_SASL_MECHANISMS = "GSSAPI"
#: files a service reads secrets or CAs from: each must be on a volume (or bind mount)
SECRET_FILE_SETTINGS = (
    "HMAC_KEY_FILE",
    "ACTION_KEYS_FILE",
    "KAFKA_CA_FILE",
    "KAFKA_CERT_FILE",
    "KAFKA_KEY_FILE",
    "KAFKA_SASL_PASSWORD_FILE",
)


class ComposeError(Exception):
    """The compose file cannot be read or interpolated."""


# --------------------------------------------------------------------------------------
# Loading and interpolation
# --------------------------------------------------------------------------------------

_VAR = re.compile(
    r"""\$(?:
        (?P<escaped>\$)
      | \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}
      | (?P<named>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<invalid>)
    )""",
    re.VERBOSE,
)


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Resolve compose's variable syntax in one string, from `variables` only.

    Supports `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}`
    (unset), `${VAR:?message}` / `${VAR?message}` (required), `${VAR:+alt}` / `${VAR+alt}`,
    and `$$` for a literal `$`. Unset variables without a default resolve to "" as in
    compose. Nested expressions in defaults are not supported (none are used here).
    """

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return variables.get(m.group("named"), "")
        name = m.group("braced")
        if name is None:
            raise ComposeError(f"invalid interpolation in {value!r} at offset {m.start()}")
        op, arg = m.group("op"), m.group("arg") or ""
        current = variables.get(name)
        if op is None:
            return current or ""
        unset_or_empty = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return arg if unset_or_empty else str(current)
        if op.endswith("+"):
            return "" if unset_or_empty else arg
        # "?" : required
        if unset_or_empty:
            raise ComposeError(f"required variable {name} is not set: {arg or 'no message'}")
        return str(current)

    return _VAR.sub(repl, value)


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables) for k, v in node.items()}
    return node


def load_compose(path: Path | str = COMPOSE_FILE, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose document with YAML anchors/merge keys and `${...}` resolved.

    `variables` defaults to an empty mapping, so every `${VAR:-default}` takes its default
    and the result does not depend on the caller's environment.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ComposeError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ComposeError(f"{path}: top level is not a mapping")
    return _interpolate_tree(raw, variables or {})


def _as_env_dict(env: Any) -> dict[str, str]:
    """A service's `environment` (mapping or KEY=VALUE list) as str -> str."""
    if env is None:
        return {}
    if isinstance(env, list):
        out: dict[str, str] = {}
        for item in env:
            key, sep, val = str(item).partition("=")
            out[key] = val if sep else os.environ.get(key, "")
        return out
    if isinstance(env, dict):
        return {str(k): _env_value(v) for k, v in env.items()}
    raise ComposeError(f"environment is neither a mapping nor a list: {env!r}")


def _env_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _read_env_file(path: Path, variables: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, val = line.partition("=")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        out[key.strip()] = interpolate(val, variables)
    return out


def service_env(
    service_name: str,
    variables: Mapping[str, str] | None = None,
    compose_file: Path | str = COMPOSE_FILE,
) -> dict[str, str]:
    """The environment compose gives `service_name`'s container, interpolated.

    `env_file` entries come first and `environment` overrides them, as in compose.
    `variables` is what `${REGION:-us-east-1}` and friends resolve from (default: none,
    so defaults apply); pass `os.environ` to resolve like `docker compose` would.
    """
    compose_file = Path(compose_file)
    variables = variables or {}
    doc = load_compose(compose_file, variables)
    services = doc.get("services") or {}
    if service_name not in services:
        raise KeyError(f"{compose_file}: no service {service_name!r} (services: {', '.join(sorted(services))})")
    svc = services[service_name] or {}
    env: dict[str, str] = {}
    env_files = svc.get("env_file") or []
    if isinstance(env_files, str | dict):
        env_files = [env_files]
    for entry in env_files:
        rel = entry["path"] if isinstance(entry, dict) else entry
        required = entry.get("required", True) if isinstance(entry, dict) else True
        p = (compose_file.parent / rel).resolve()
        if p.exists():
            env.update(_read_env_file(p, variables))
        elif required:
            raise ComposeError(f"service {service_name!r}: env_file {rel} does not exist")
    env.update(_as_env_dict(svc.get("environment")))
    return env


@cache
def dockerfile_entrypoint(dockerfile: Path = ROOT / DOCKERFILE) -> tuple[str, ...]:
    """The exec-form ENTRYPOINT of the (last stage of the) Dockerfile."""
    entry: tuple[str, ...] = ()
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"\s*ENTRYPOINT\s+(\[.*\])\s*$", line, re.IGNORECASE)
        if m:
            entry = tuple(json.loads(m.group(1)))
        elif re.match(r"\s*FROM\s", line, re.IGNORECASE):
            entry = ()
    return entry


def _as_argv(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def service_command(service_name: str, compose_file: Path | str = COMPOSE_FILE) -> list[str]:
    """The argv the container runs: the image's ENTRYPOINT (`python -m`) + `command`,
    e.g. ["python", "-m", "services.ratelimit"]. Tests run it with `sys.executable`
    in place of "python"."""
    compose_file = Path(compose_file)
    svc = (load_compose(compose_file).get("services") or {}).get(service_name)
    if svc is None:
        raise KeyError(f"{compose_file}: no service {service_name!r}")
    if "entrypoint" in svc:
        entry = _as_argv(svc["entrypoint"])
    else:
        entry = list(dockerfile_entrypoint(compose_file.parent / DOCKERFILE))
    return entry + _as_argv(svc.get("command"))


# --------------------------------------------------------------------------------------
# Layer 1: compose-spec schema
# --------------------------------------------------------------------------------------


def check_schema(doc: Mapping[str, Any], schema_file: Path = SCHEMA_FILE) -> list[str]:
    import jsonschema

    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        err = _most_specific(err)
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"schema: {where}: {_schema_message(err)}")
    return problems


def _most_specific(err: Any) -> Any:
    """For oneOf/anyOf failures, the error of the alternative that matched the value's
    type (e.g. a wrong depends_on condition, not "is not of type 'array'")."""
    while err.context:
        here = list(err.absolute_path)
        candidates = [e for e in err.context if not (e.validator == "type" and list(e.absolute_path) == here)]
        if not candidates:
            break
        err = max(candidates, key=lambda e: len(e.absolute_path))
    return err


def _schema_message(err: Any) -> str:
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties") or {})
        patterns = list(err.schema.get("patternProperties") or {})
        extra = sorted(k for k in err.instance if k not in allowed and not any(re.search(p, k) for p in patterns))
        if extra:
            return f"unknown key(s) {', '.join(repr(k) for k in extra)}"
    return err.message


# --------------------------------------------------------------------------------------
# Layer 2: project rules
# --------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """Seconds in a compose (Go) duration such as "20s" or "1m30s"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {value!r}")
    return total


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g}s"


def _port_of(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def _build_dockerfile(build: Any) -> tuple[str, str]:
    """(context, dockerfile path relative to the compose file's folder)."""
    if isinstance(build, str):
        return build, os.path.normpath(os.path.join(build, "Dockerfile"))
    context = str(build.get("context", "."))
    dockerfile = str(build.get("dockerfile", "Dockerfile"))
    return context, os.path.normpath(os.path.join(context, dockerfile))


def _fixed_host_ports(ports: Any) -> list[tuple[str, str]]:
    """(published host port, entry as written) for each port entry that pins one host port."""
    fixed = []
    for entry in ports or []:
        if isinstance(entry, dict):
            published = str(entry.get("published", "") or "")
            shown = json.dumps(entry, sort_keys=True)
        elif isinstance(entry, int):
            continue  # container port only: ephemeral host port
        else:
            shown = str(entry)
            spec = shown.split("/", 1)[0]
            # [IP:][HOST:]CONTAINER, IP possibly [v6]
            if spec.startswith("["):
                spec = spec[spec.index("]") + 1 :].lstrip(":")
            parts = spec.split(":")
            published = parts[-2] if len(parts) >= 2 else ""
        if published and "-" not in published and published != "0":
            fixed.append((published, shown))
    return fixed


def _profiles(svc: Mapping[str, Any]) -> list[str]:
    return [str(p) for p in svc.get("profiles") or []]


def _is_scalable(name: str, svc: Mapping[str, Any]) -> bool:
    if "build" in svc or name in SAFEGUARDS_SERVICES:
        return True
    replicas = (svc.get("deploy") or {}).get("replicas")
    return bool(replicas and int(replicas) > 1) or int(svc.get("scale") or 1) > 1


def _healthcheck_target(test: Any) -> str | None:
    """HOST:PORT that a `python -m services.common.healthcheck` test probes, else None."""
    argv = _as_argv(test)
    if argv and argv[0] in ("CMD", "CMD-SHELL"):
        if argv[0] == "CMD-SHELL":
            argv = shlex.split(" ".join(argv[1:]))
        else:
            argv = argv[1:]
    if HEALTHCHECK_MODULE not in argv:
        return None
    rest = [a for a in argv[argv.index(HEALTHCHECK_MODULE) + 1 :] if not a.startswith("-")]
    return rest[0] if rest else ""


def _prometheus_config(doc: Mapping[str, Any], base: Path) -> tuple[Path | None, list[str]]:
    """Find the Prometheus service and the host file mounted as its config."""
    services = doc.get("services") or {}
    for name, svc in services.items():
        if "prometheus" not in str((svc or {}).get("image", "")):
            continue
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                source, target = str(vol.get("source", "")), str(vol.get("target", ""))
            else:
                bits = str(vol).split(":")
                source, target = bits[0], bits[1] if len(bits) > 1 else ""
            if target == PROMETHEUS_CONFIG_TARGET and source.startswith((".", "/")):
                return (base / source).resolve(), []
        return None, [f"service '{name}': no config mounted at {PROMETHEUS_CONFIG_TARGET}"]
    return None, ["no Prometheus service (image prom/prometheus) to scrape the Safeguards services"]


def _rule_files(doc: Mapping[str, Any], base: Path, prom_file: Path) -> tuple[list[Path], list[str]]:
    """The host files behind prometheus.yml's rule_files, through the Prometheus
    service's bind mounts (a pattern no mount covers, or that matches nothing, is a
    problem: Prometheus would start without those alerts and say nothing)."""
    try:
        prom = yaml.safe_load(prom_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], []  # reported by _scrape_jobs
    mounts = []
    for svc in (doc.get("services") or {}).values():
        if "prometheus" in str((svc or {}).get("image", "")):
            mounts = [_mount(v) for v in svc.get("volumes") or []]
    found: list[Path] = []
    problems: list[str] = []
    for pattern in prom.get("rule_files") or []:
        pattern = str(pattern)
        covering = [(s, t) for k, s, t in mounts if k == "bind" and pattern.startswith(t.rstrip("/") + "/")]
        if not covering:
            problems.append(f"{prom_file.name}: rule_files '{pattern}' is not mounted into the Prometheus service")
            continue
        source, target = max(covering, key=lambda st: len(st[1]))
        host_pattern = (base / source).resolve() / pattern[len(target.rstrip("/")) + 1 :]
        matched = sorted(host_pattern.parent.glob(host_pattern.name))
        if not matched:
            problems.append(f"{prom_file.name}: rule_files '{pattern}' matches no file ({host_pattern})")
        found += matched
    return found, problems


def _scrape_jobs(prom_file: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    try:
        prom = yaml.safe_load(prom_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return {}, [f"{prom_file.name}: cannot read: {exc}"]
    jobs = {}
    for job in prom.get("scrape_configs") or []:
        jobs[str(job.get("job_name"))] = job
    return jobs, []


def check_rules(doc: Mapping[str, Any], compose_file: Path | str = COMPOSE_FILE) -> list[str]:
    """The project's rules; `doc` is the interpolated document (load_compose)."""
    compose_file = Path(compose_file)
    base = compose_file.parent
    problems: list[str] = []
    services: dict[str, Any] = {k: (v or {}) for k, v in (doc.get("services") or {}).items()}

    prom_file, prom_problems = _prometheus_config(doc, base)
    problems += prom_problems
    jobs: dict[str, dict[str, Any]] = {}
    if prom_file is not None:
        jobs, job_problems = _scrape_jobs(prom_file)
        problems += job_problems
        problems += _rule_files(doc, base, prom_file)[1]

    for name, svc in services.items():
        where = f"service '{name}'"
        scalable = _is_scalable(name, svc)

        # ---- build: one image, from deploy/Dockerfile at the repository root
        if "build" in svc:
            context, dockerfile = _build_dockerfile(svc["build"])
            if dockerfile != os.path.normpath(DOCKERFILE) or os.path.normpath(context) != ".":
                problems.append(
                    f"{where}: builds {dockerfile} with context '{context}'; "
                    f"expected {DOCKERFILE} with context '.' (the repository root)"
                )

        # ---- scaling: nothing pinned per container
        if scalable and svc.get("container_name"):
            problems.append(f"{where}: fixed container_name '{svc['container_name']}' prevents --scale")
        if scalable:
            for published, shown in _fixed_host_ports(svc.get("ports")):
                problems.append(
                    f"{where}: fixed host port {published} in ports entry '{shown}' collides when scaled "
                    f"(use expose, an ephemeral '127.0.0.1::PORT' or a host port range)"
                )

        # ---- depends_on: existing services, satisfiable conditions and profiles
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, opts in deps.items():
            if dep not in services:
                problems.append(f"{where}: depends_on unknown service '{dep}'")
                continue
            condition = (opts or {}).get("condition", "service_started")
            if condition == "service_healthy" and not _has_healthcheck(services[dep]):
                problems.append(f"{where}: depends_on '{dep}' being healthy, but '{dep}' has no healthcheck")
            dep_profiles, own_profiles = set(_profiles(services[dep])), set(_profiles(svc))
            if dep_profiles and (not own_profiles or not own_profiles <= dep_profiles):
                problems.append(
                    f"{where}: depends_on '{dep}', which only runs with profiles {sorted(dep_profiles)} "
                    f"({name} runs with {sorted(own_profiles) or 'no profile'})"
                )

        # ---- durations parse
        for key in ("interval", "timeout", "start_period", "start_interval"):
            value = (svc.get("healthcheck") or {}).get(key)
            if value is not None:
                try:
                    parse_duration(value)
                except ValueError as exc:
                    problems.append(f"{where}: healthcheck {key}: {exc}")

        spec = SAFEGUARDS_SERVICES.get(name)
        is_ours = "build" in svc or spec is not None
        if not is_ours:
            continue
        if spec is None:
            problems.append(
                f"{where}: built from {DOCKERFILE} but not a known Safeguards service "
                f"(known: {', '.join(sorted(SAFEGUARDS_SERVICES))}; add it to tools/compose_check.py)"
            )
            continue
        problems += _check_safeguards_service(spec, svc, jobs, prom_file)

    problems += _check_kafka(services)

    for job_name, job in jobs.items():
        for sd in job.get("dns_sd_configs") or []:
            for dns_name in sd.get("names") or []:
                if dns_name not in services:
                    problems.append(
                        f"{prom_file.name if prom_file else 'prometheus'}: job '{job_name}' resolves "
                        f"'{dns_name}', which is not a service in {compose_file.name}"
                    )
    return problems


def _has_healthcheck(svc: Mapping[str, Any]) -> bool:
    hc = svc.get("healthcheck")
    if not hc or hc.get("disable"):
        return False
    test = hc.get("test")
    return bool(test) and _as_argv(test)[:1] != ["NONE"]


def _check_safeguards_service(
    spec: ServiceSpec, svc: Mapping[str, Any], jobs: Mapping[str, Mapping[str, Any]], prom_file: Path | None
) -> list[str]:
    where = f"service '{spec.name}'"
    p = spec.env_prefix
    problems: list[str] = []

    # ---- image and command
    if "build" not in svc:
        problems.append(f"{where}: no build section (every Safeguards service is built from {DOCKERFILE})")
    command = _as_argv(svc.get("command"))
    if command[:1] != [spec.module] and "entrypoint" not in svc:
        problems.append(f"{where}: command {command} does not start with '{spec.module}' (ENTRYPOINT is python -m)")

    # ---- env: listen addresses on the documented ports, reachable from other containers
    try:
        env = _as_env_dict(svc.get("environment"))
    except ComposeError as exc:
        return problems + [f"{where}: {exc}"]
    if svc.get("env_file") and not env:
        problems.append(f"{where}: env only in env_file is not checked; put it in an x-{spec.name}-env anchor")
    documented = {f"{p}LISTEN": spec.port, f"{p}METRICS_LISTEN": spec.metrics_port}
    for var, want in documented.items():
        if var not in env:
            what = "metrics must be served for Prometheus" if "METRICS" in var else "the gRPC listen address"
            problems.append(f"{where}: no {var} ({what}; documented port {want})")
    for var, value in env.items():
        if not var.endswith("_LISTEN"):
            continue
        host, port = _port_of(value)
        want = documented.get(var)
        if port is None:
            problems.append(f"{where}: {var}={value} is not HOST:PORT")
            continue
        if want is not None and port != want:
            problems.append(f"{where}: {var}={value} port differs from the documented default {want}")
        if host in ("127.0.0.1", "localhost", "::1"):
            problems.append(f"{where}: {var}={value} listens on loopback only; other containers cannot reach it")
    grpc_port = _port_of(env.get(f"{p}LISTEN", ""))[1] or spec.port
    metrics_port = _port_of(env.get(f"{p}METRICS_LISTEN", ""))[1] or spec.metrics_port

    exposed = {str(e).split("/")[0] for e in svc.get("expose") or []}
    for port in (grpc_port, metrics_port):
        if str(port) not in exposed:
            problems.append(f"{where}: port {port} is not in expose")

    # ---- healthcheck: grpc.health.v1 through the image's own module
    expected_hc = f'["CMD", "python", "-m", "{HEALTHCHECK_MODULE}", "127.0.0.1:{grpc_port}"]'
    if not _has_healthcheck(svc):
        problems.append(f"{where}: no healthcheck (expected test: {expected_hc})")
    else:
        target = _healthcheck_target(svc["healthcheck"]["test"])
        if target is None:
            problems.append(f"{where}: healthcheck does not use {HEALTHCHECK_MODULE} (expected test: {expected_hc})")
        elif _port_of(target)[1] != grpc_port:
            problems.append(f"{where}: healthcheck probes '{target}' but {p}LISTEN is port {grpc_port}")

    # ---- the spool: one per replica, kept when the container is recreated
    volumes = svc.get("volumes") or []
    spool_dir = env.get(f"{p}SPOOL_DIR")
    if spool_dir:
        problems += _check_spool(where, f"{p}SPOOL_DIR", spool_dir, volumes)
    snapshot = env.get(f"{p}ACTIONS_SNAPSHOT_FILE")
    if snapshot:  # the applied actions of this replica: as private as its spool
        problems += _check_spool(where, f"{p}ACTIONS_SNAPSHOT_FILE", snapshot, volumes)

    # ---- the action key ring: enforcers and monitors refuse to start without one
    if spec.signs_actions:
        if env.get(f"{p}INSECURE_DEV_ACTION_KEY", "").lower() in ("1", "true", "yes", "on"):
            problems.append(
                f"{where}: {p}INSECURE_DEV_ACTION_KEY signs actions with the public development key "
                f"(anyone who reaches Kafka can forge them); give {p}ACTION_KEYS_FILE"
            )
        elif not (env.get(f"{p}ACTION_KEYS_FILE") or env.get(f"{p}ACTION_KEYS")):
            problems.append(
                f"{where}: no action key ring ({p}ACTION_KEYS_FILE or {p}ACTION_KEYS): the service refuses "
                f"to start without one"
            )
    for setting in SECRET_FILE_SETTINGS:
        path = env.get(f"{p}{setting}")
        if path and not _on_volume(path, volumes):
            problems.append(f"{where}: {p}{setting} {path} is on no volume of the service")

    # ---- graceful stop: compose must wait for the whole drain before SIGKILL
    try:
        delay = float(env.get(f"{p}SHUTDOWN_DELAY_SECONDS", DEFAULT_SHUTDOWN_DELAY_S))
        grace = float(env.get(f"{p}DRAIN_GRACE_SECONDS", DEFAULT_DRAIN_GRACE_S))
    except ValueError as exc:
        problems.append(f"{where}: drain settings are not numbers: {exc}")
        delay, grace = DEFAULT_SHUTDOWN_DELAY_S, DEFAULT_DRAIN_GRACE_S
    drain = delay + grace
    need = f"{_fmt_s(drain)} = {p}SHUTDOWN_DELAY_SECONDS + {p}DRAIN_GRACE_SECONDS"
    if "stop_grace_period" not in svc:
        problems.append(f"{where}: no stop_grace_period (needs >= {need})")
    else:
        try:
            period = parse_duration(svc["stop_grace_period"])
        except ValueError as exc:
            problems.append(f"{where}: stop_grace_period: {exc}")
        else:
            if period < drain:
                problems.append(
                    f"{where}: stop_grace_period {svc['stop_grace_period']} is shorter than the drain ({need})"
                )
    stop_signal = svc.get("stop_signal")
    if stop_signal not in (None, "SIGTERM", "TERM", 15):
        problems.append(f"{where}: stop_signal {stop_signal} does not drain (the services drain on SIGTERM)")

    # ---- Prometheus scrapes every replica
    prom_name = prom_file.name if prom_file else "prometheus config"
    job = jobs.get(spec.name)
    if prom_file is not None and job is None:
        problems.append(f"{where}: not scraped by Prometheus (no job '{spec.name}' in {prom_name})")
    elif job is not None:
        sds = [sd for sd in job.get("dns_sd_configs") or [] if spec.name in (sd.get("names") or [])]
        if not sds:
            problems.append(
                f"{where}: Prometheus job '{spec.name}' must use dns_sd_configs with names ['{spec.name}'] "
                f"so that every replica is scraped"
            )
        for sd in sds:
            if sd.get("type", "SRV") != "A" or sd.get("port") != metrics_port:
                problems.append(
                    f"{where}: Prometheus job '{spec.name}' resolves type {sd.get('type', 'SRV')} port "
                    f"{sd.get('port')}, expected type A port {metrics_port} ({p}METRICS_LISTEN)"
                )
    return problems


def _mount(entry: Any) -> tuple[str, str, str]:
    """(type, source, target) of a `volumes` entry: type is volume, bind or anonymous."""
    if isinstance(entry, dict):
        source, target = str(entry.get("source") or ""), str(entry.get("target") or "")
        kind = str(entry.get("type") or "volume")
    else:
        bits = str(entry).split(":")
        source, target = (bits[0], bits[1]) if len(bits) > 1 else ("", bits[0])
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if kind == "volume" and not source:
        kind = "anonymous"
    return kind, source, target


def _on_volume(path: str, volumes: list[Any]) -> bool:
    """Whether a volume or bind mount of the service covers `path`."""
    path = os.path.normpath(path)
    for entry in volumes:
        target = os.path.normpath(_mount(entry)[2])
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return True
    return False


def _check_spool(where: str, var: str, spool_dir: str, volumes: list[Any]) -> list[str]:
    """A spool holds records not yet delivered: it must survive the container being
    recreated (a volume) and belong to one replica only (two processes replaying and
    deleting the same files lose or duplicate records), so only an anonymous volume
    fits a scalable service: compose creates one per container and keeps it across
    recreation."""
    for entry in sorted(volumes, key=lambda e: -len(_mount(e)[2])):  # the deepest mount holds it
        kind, source, target = _mount(entry)
        if not _on_volume(spool_dir, [entry]):
            continue
        if kind == "anonymous":
            return []
        what = f"named volume '{source}'" if kind == "volume" else f"{kind} mount '{source}'"
        return [
            f"{where}: {var} {spool_dir} is on {what}, which every replica shares when scaled "
            f"(use an anonymous volume: one per replica)"
        ]
    lost = "spooled records are" if var.endswith("SPOOL_DIR") else "it is"
    return [
        f"{where}: {var} {spool_dir} is not on a volume: {lost} lost when the container "
        f"is recreated (mount an anonymous volume there)"
    ]


def _kafka_brokers(services: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Apache Kafka services that run the broker role, with their env."""
    brokers = {}
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("apache/kafka"):
            continue
        env = _as_env_dict(svc.get("environment"))
        if "broker" in env.get("KAFKA_PROCESS_ROLES", "").split(","):
            brokers[name] = env
    return brokers


def _listener_protocols(env: Mapping[str, str]) -> dict[int, tuple[str, str]]:
    """A broker's listeners by port: port -> (listener name, security protocol)."""
    mapping = dict(
        (name.strip().upper(), proto.strip().upper())
        for name, _, proto in (m.partition(":") for m in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(","))
        if name.strip()
    )
    out: dict[int, tuple[str, str]] = {}
    for listener in env.get("KAFKA_LISTENERS", "").split(","):
        name, sep, address = listener.strip().partition("://")
        port = _port_of(address)[1] if sep else None
        if port is not None:
            name = name.upper()
            out[port] = (name, mapping.get(name, name if name in KAFKA_PROTOCOLS else "PLAINTEXT"))
    return out


def _check_kafka_client(name: str, prefix: str, env: Mapping[str, str], brokers: Mapping[str, Any]) -> list[str]:
    """The service speaks the security protocol (and SASL mechanism) of the listener its
    bootstrap addresses reach on each broker: a mismatch fails only at connect time, as
    an endless reconnect loop with a TLS or SASL error."""
    where = f"service '{name}'"
    protocol = env.get(f"{prefix}KAFKA_SECURITY_PROTOCOL", DEFAULT_KAFKA_SECURITY_PROTOCOL).upper()
    mechanism = env.get(f"{prefix}KAFKA_SASL_MECHANISM", "").upper()
    problems: list[str] = []
    for address in (a.strip() for a in env.get(f"{prefix}KAFKA_BOOTSTRAP", "").split(",") if a.strip()):
        host, port = _port_of(address)
        if host not in brokers:
            continue  # reported by _check_kafka
        listeners = _listener_protocols(brokers[host])
        if port not in listeners:
            problems.append(f"{where}: {prefix}KAFKA_BOOTSTRAP names {address}, which is no listener of '{host}'")
            continue
        listener, broker_protocol = listeners[port]
        if broker_protocol != protocol:
            problems.append(
                f"{where}: {prefix}KAFKA_SECURITY_PROTOCOL is {protocol} but {address} is the {broker_protocol} "
                f"listener {listener} of '{host}'"
            )
        elif protocol.startswith("SASL_"):
            enabled = brokers[host].get("KAFKA_SASL_ENABLED_MECHANISMS", DEFAULT_KAFKA_SASL_MECHANISMS)
            if mechanism not in [m.strip().upper() for m in enabled.split(",")]:
                problems.append(
                    f"{where}: {prefix}KAFKA_SASL_MECHANISM {mechanism or '(none)'} is not enabled on '{host}' "
                    f"(KAFKA_SASL_ENABLED_MECHANISMS={enabled})"
                )
    return problems


def _check_kafka(services: Mapping[str, Any]) -> list[str]:
    """The KRaft cluster is consistent and every Safeguards service bootstraps from all
    of its brokers (any one may be down when a service starts), on a listener that
    speaks its security protocol."""
    brokers = _kafka_brokers(services)
    if not brokers:
        return []
    problems: list[str] = []
    ids: dict[str, str] = {}
    for name, env in brokers.items():
        node = env.get("KAFKA_NODE_ID", "")
        if node in ids:
            problems.append(f"service '{name}': KAFKA_NODE_ID {node} is also the id of '{ids[node]}'")
        ids[node] = name
        voters = dict(v.partition("@")[::2] for v in env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",") if v)
        if "controller" in env.get("KAFKA_PROCESS_ROLES", "").split(",") and voters.get(node, "").split(":")[0] != name:
            problems.append(
                f"service '{name}': node {node} is a controller but not the voter '{node}@{name}:PORT' "
                f"of KAFKA_CONTROLLER_QUORUM_VOTERS"
            )
        for var in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        ):
            if var in env and int(env[var]) > len(brokers):
                problems.append(f"service '{name}': {var}={env[var]} but the file runs {len(brokers)} broker(s)")
        rf, isr = env.get("KAFKA_DEFAULT_REPLICATION_FACTOR"), env.get("KAFKA_MIN_INSYNC_REPLICAS")
        if rf and isr and int(isr) > int(rf):
            problems.append(
                f"service '{name}': KAFKA_MIN_INSYNC_REPLICAS={isr} above the replication factor {rf} "
                f"(no acks=all write could succeed)"
            )
    for name, spec in SAFEGUARDS_SERVICES.items():
        env = _as_env_dict((services.get(name) or {}).get("environment"))
        var = f"{spec.env_prefix}KAFKA_BOOTSTRAP"
        if var not in env:
            continue
        hosts = [h.strip().rpartition(":")[0] for h in env[var].split(",") if h.strip()]
        unknown = [h for h in hosts if h not in brokers]
        if unknown:
            problems.append(f"service '{name}': {var} names {', '.join(unknown)}, not a Kafka broker of this file")
        missing = sorted(set(brokers) - set(hosts))
        if missing and not unknown:
            problems.append(
                f"service '{name}': {var} leaves out broker(s) {', '.join(missing)} "
                f"(a service must start while any one broker is down)"
            )
        problems += _check_kafka_client(name, spec.env_prefix, env, brokers)
    return problems


# --------------------------------------------------------------------------------------
# Layer 3: external validators, when installed
# --------------------------------------------------------------------------------------


def check_docker_compose_v1(compose_file: Path, binary: str | None = None) -> list[str]:
    """`docker-compose -f FILE config -q` (Debian's v1.29: validates, needs no engine)."""
    binary = binary or shutil.which("docker-compose")
    if not binary:
        return []
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    proc = subprocess.run(
        [binary, "-f", str(compose_file), "--profile", "full", "config", "-q"],
        cwd=compose_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        return []
    out = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
    return [f"docker-compose config: {line}" for line in out]


def check_promtool(prom_file: Path, binary: str | None = None) -> list[str]:
    binary = binary or shutil.which("promtool")
    if not binary or not prom_file.exists():
        return []
    proc = subprocess.run(
        [binary, "check", "config", "--syntax-only", str(prom_file)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 0:
        return []
    return [f"promtool: {line}" for line in (proc.stderr or proc.stdout).strip().splitlines()]


def check_promtool_rules(rule_files: list[Path], binary: str | None = None) -> list[str]:
    """`promtool check rules FILE...`: syntax, PromQL and templates of the alert rules."""
    binary = binary or shutil.which("promtool")
    if not binary or not rule_files:
        return []
    proc = subprocess.run([binary, "check", "rules", *map(str, rule_files)], capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return []
    return [f"promtool: {line}" for line in (proc.stderr or proc.stdout).strip().splitlines()]


# --------------------------------------------------------------------------------------


def check(
    compose_file: Path | str = COMPOSE_FILE,
    variables: Mapping[str, str] | None = None,
    external: bool = True,
) -> list[str]:
    """Every problem found in `compose_file` (empty list: valid)."""
    compose_file = Path(compose_file).resolve()
    try:
        doc = load_compose(compose_file, variables)
    except ComposeError as exc:
        return [str(exc)]
    problems = check_schema(doc)
    problems += check_rules(doc, compose_file)
    if external:
        problems += check_docker_compose_v1(compose_file)
        prom_file, _ = _prometheus_config(doc, compose_file.parent)
        if prom_file is not None:
            problems += check_promtool(prom_file)
            problems += check_promtool_rules(_rule_files(doc, compose_file.parent, prom_file)[0])
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compose_file", nargs="?", default=str(COMPOSE_FILE), help="default: compose.yaml")
    parser.add_argument(
        "--no-external", action="store_true", help="skip docker-compose (v1) and promtool even when installed"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a variable for ${...} interpolation (default: none, so defaults apply)",
    )
    ns = parser.parse_args(argv)
    variables = dict(kv.partition("=")[::2] for kv in ns.env)
    problems = check(ns.compose_file, variables, external=not ns.no_external)
    for line in problems:
        print(f"{ns.compose_file}: {line}", file=sys.stderr)
    if problems:
        print(f"{ns.compose_file}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    ran = ["compose-spec schema", "project rules"]
    if not ns.no_external:
        ran += [b for b in ("docker-compose", "promtool") if shutil.which(b)]
    print(f"{ns.compose_file}: OK ({', '.join(ran)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
