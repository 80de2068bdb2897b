"""deploy/k8s: every kustomization renders, every object validates against the
Kubernetes schemas, and the manifests agree with the services (the flags and env vars
they pass exist in the settings classes and validate, probes and ports match the
listen addresses) and with the issue's rules (restricted pods, Secrets mounted,
headless backends, HPA + PDB + topology spread, deny-by-default NetworkPolicy, one
region per namespace, a GPU variant of the classifier, a Redis Cluster variant of
the rate limiter)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.deploy import k8s
from tests.deploy.k8s import BASE, COMPONENTS, OVERLAYS, RENDERED, containers, objects, render
from tests.deploy.netpol import Pod, may_connect

#: the oldest Kubernetes minor the manifests are written for (grpc probes GA in 1.27,
#: matchLabelKeys in topology spread, sidecar-free) and the newest the schemas know
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
SERVICES = ("enforcer", "classifier", "ratelimit", "monitor")


def _ids(paths):
    return [str(p.relative_to(k8s.K8S)) for p in paths]


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---------------------------------------------------------------------------------------
# Renders and validates
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(path, version):
    """Strict: an unknown or misspelt field fails (the API server would drop it silently
    with client-side apply, or refuse it with server-side field validation)."""
    errors = []
    for obj in render(path):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert errors == []


def test_schema_validation_catches_a_misspelt_field():
    dep = yaml.safe_load(yaml.safe_dump(objects(BASE, "Deployment")["enforcer"]))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError, match="prot"):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)


def test_schemas_ship_with_the_package_and_need_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for obj in render(OVERLAYS[0]):
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest_of_their_folder():
    """No orphan file that `kubectl apply -k` would silently leave out."""
    for folder in [BASE, *OVERLAYS, *COMPONENTS]:
        kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
        listed = set(kust.get("resources") or []) | {p["path"] for p in kust.get("patches") or [] if "path" in p}
        files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= listed, f"{folder.relative_to(k8s.K8S)}: not in kustomization.yaml: {files - listed}"
        for ref in listed:
            assert (folder / ref).exists(), f"{folder.relative_to(k8s.K8S)}: {ref} does not exist"


def test_each_service_has_deployment_service_hpa_and_pdb():
    for path in RENDERED:
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount"):
            assert set(objects(path, kind)) == set(SERVICES), (path, kind)


# ---------------------------------------------------------------------------------------
# The manifests and the services agree
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_env_vars_and_flags_are_settings_of_the_service(path, monkeypatch):
    """A misspelt env var is ignored silently by pydantic-settings: every one a manifest
    passes must be a field of the service's settings class (imported, not listed here),
    every `--flag` in args too, and the whole env must validate as the service would."""
    for dep, _, container, service in containers(path):
        assert service in SERVICES, f"{dep['metadata']['name']}: args {container.get('args')} run no service"
        cls = k8s.settings_class(service)
        prefix = cls.model_config["env_prefix"]
        fields = {f"{prefix}{name.upper()}" for name in cls.model_fields}
        env = k8s.env_values(path, container)
        assert sorted(set(env) - fields) == [], f"{service}: env vars that are no setting"
        flags = {f"--{name.replace('_', '-')}" for name in cls.model_fields}
        passed = [a.split("=")[0] for a in container.get("args", [])[1:] if a.startswith("--")]
        assert sorted(set(passed) - flags) == [], f"{service}: flags that are no setting"
        for key in [k for k in os.environ if k.startswith(prefix)]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = cls.parse(container.get("args", [])[1:])
        assert settings.region == env[f"{prefix}REGION"]


def test_the_settings_check_rejects_an_unknown_env_var():
    dep = objects(BASE, "Deployment")["ratelimit"]
    container = yaml.safe_load(yaml.safe_dump(dep["spec"]["template"]["spec"]["containers"][0]))
    container["env"].append({"name": "RATELIMIT_REDIS_MODE_CLUSTR", "value": "cluster"})
    cls = k8s.settings_class("ratelimit")
    fields = {f"RATELIMIT_{n.upper()}" for n in cls.model_fields}
    assert set(k8s.env_values(BASE, container)) - fields == {"RATELIMIT_REDIS_MODE_CLUSTR"}


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_probes_ports_and_scrape_annotations_match_the_listen_addresses(path):
    services = objects(path, "Service")
    for dep, _, c, service in containers(path):
        cls = k8s.settings_class(service)
        prefix = cls.model_config["env_prefix"]
        env = k8s.env_values(path, c)
        grpc_port, metrics_port = _port(env[f"{prefix}LISTEN"]), _port(env[f"{prefix}METRICS_LISTEN"])
        assert env[f"{prefix}LISTEN"].startswith("0.0.0.0:"), "pods are reached on their pod IP"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == grpc_port and ports["metrics"] == metrics_port
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        # The kubelet's gRPC probes speak plaintext: with TLS on the serving port they
        # must call the plaintext health-only listener.
        health = env.get(f"{prefix}HEALTH_LISTEN", "")
        if f"{prefix}TLS_CERT_FILE" in env:
            assert health, f"{service}: serves TLS but has no {prefix}HEALTH_LISTEN for its probes"
        probe_port = _port(health) if health else grpc_port
        if health:
            assert health.startswith("0.0.0.0:"), "the kubelet probes the pod IP"
            assert ports["health"] == probe_port and probe_port not in (grpc_port, metrics_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = c[probe]
            assert "exec" not in spec, f"{service}: {probe} starts a process per probe"
            assert spec["grpc"] == {"port": probe_port}, f"{service}: {probe}"
        svc = services[service]
        assert svc["spec"]["selector"] == {"app.kubernetes.io/name": service}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_termination_grace_covers_the_drain(path):
    for _, spec, c, service in containers(path):
        cls = k8s.settings_class(service)
        prefix = cls.model_config["env_prefix"]
        env = k8s.env_values(path, c)
        delay = float(env.get(f"{prefix}SHUTDOWN_DELAY_SECONDS", cls.model_fields["shutdown_delay_seconds"].default))
        grace = float(env.get(f"{prefix}DRAIN_GRACE_SECONDS", cls.model_fields["drain_grace_seconds"].default))
        assert delay > 0, f"{service}: no shutdown delay: endpoints would still send to a draining pod"
        assert spec["terminationGracePeriodSeconds"] >= delay + grace


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_backends_are_headless_and_the_enforcer_balances_over_them(path):
    services = objects(path, "Service")
    for name in ("classifier", "ratelimit", "enforcer"):
        assert services[name]["spec"]["clusterIP"] == "None", f"{name}: gRPC needs one address per pod"
    enforcer = next(c for _, _, c, s in containers(path) if s == "enforcer")
    env = k8s.env_values(path, enforcer)
    assert env["ENFORCER_CLASSIFIER_ADDR"] == f"dns:///classifier:{_port(env['ENFORCER_CLASSIFIER_ADDR'])}"
    assert env["ENFORCER_RATELIMIT_ADDR"] == f"dns:///ratelimit:{_port(env['ENFORCER_RATELIMIT_ADDR'])}"
    assert _port(env["ENFORCER_CLASSIFIER_ADDR"]) == services["classifier"]["spec"]["ports"][0]["port"]
    assert _port(env["ENFORCER_RATELIMIT_ADDR"]) == services["ratelimit"]["spec"]["ports"][0]["port"]


# ---------------------------------------------------------------------------------------
# Pod rules
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_pods_are_restricted(path):
    for _, spec, c, _ in containers(path):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert k8s.mounted_volume(spec, c, "/tmp")["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_files_the_services_read_or_write_are_mounted(path):
    """Writable paths are emptyDirs (the root filesystem is read-only), and the key,
    token, user and TLS files come from Secrets."""
    for _, spec, c, service in containers(path):
        prefix = k8s.settings_class(service).model_config["env_prefix"]
        env = k8s.env_values(path, c)
        for var, value in env.items():
            field = var.removeprefix(prefix)
            volume = k8s.mounted_volume(spec, c, value) if value.startswith("/") else None
            if field == "ACTIONS_SNAPSHOT_FILE":  # this pod's own state, next to its spool
                assert volume and "emptyDir" in volume, f"{var}: the snapshot must be writable"
                assert volume is k8s.mounted_volume(spec, c, env[f"{prefix}SPOOL_DIR"])
            elif field == "SPOOL_DIR":
                assert volume and "emptyDir" in volume, f"{var}: the spool must be writable"
                limit = volume["emptyDir"]["sizeLimit"]
                assert int(env[f"{prefix}SPOOL_MAX_BYTES"]) < _bytes(limit), f"{var}: spool limit over {limit}"
            elif field.endswith("_FILE") or field in ("ADMIN_TOKENS", "CONSOLE_USERS"):
                assert volume and "secret" in volume, f"{service}: {var}={value} is not in a Secret volume"
                assert volume["secret"]["defaultMode"] == 0o440
            elif field == "MODELS":
                assert volume and ("persistentVolumeClaim" in volume or "image" in volume)
        for required in ("HMAC_KEY_FILE", "ACTION_KEYS_FILE") if service in ("enforcer", "monitor") else ():
            assert f"{prefix}{required}" in env, f"{service}: no {prefix}{required}"
        if service in ("enforcer", "monitor"):  # one region-wide key ring, never the public one
            ring = k8s.mounted_volume(spec, c, env[f"{prefix}ACTION_KEYS_FILE"])
            assert ring["secret"]["secretName"] == "safeguards-action-keys"
            assert env.get(f"{prefix}INSECURE_DEV_ACTION_KEY", "false") == "false"
            assert f"{prefix}ACTION_KEYS" not in env, "keys belong in the Secret file, not in the pod spec"
    enforcer = next(c for _, _, c, s in containers(path) if s == "enforcer")
    assert "ENFORCER_ADMIN_TOKENS" in k8s.env_values(path, enforcer)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


@pytest.mark.parametrize("path", RENDERED, ids=_ids(RENDERED))
def test_resources_autoscaling_disruption_and_spread(path):
    hpas, pdbs = objects(path, "HorizontalPodAutoscaler"), objects(path, "PodDisruptionBudget")
    for dep, spec, c, service in containers(path):
        for what in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][what]), f"{service}: {what}"
        labels = dep["spec"]["template"]["metadata"]["labels"]
        hpa = hpas[service]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
        assert hpa["minReplicas"] >= 2, f"{service}: one replica cannot lose a pod"
        assert all(labels.get(k) == v for k, v in pdbs[service]["spec"]["selector"]["matchLabels"].items())
        assert pdbs[service]["spec"].get("maxUnavailable") == 1
        keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for t in spec["topologySpreadConstraints"]:
            assert all(labels.get(k) == v for k, v in t["labelSelector"]["matchLabels"].items())


# ---------------------------------------------------------------------------------------
# Regions, TLS and the GPU variant
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_one_region_per_namespace(path):
    region = path.name
    namespace = f"safeguards-{region}"
    (ns,) = objects(path, "Namespace").values()
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in render(path):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, f"{obj['kind']}/{obj['metadata']['name']}"
    for _, _, c, service in containers(path):
        prefix = k8s.settings_class(service).model_config["env_prefix"]
        env = k8s.env_values(path, c)
        assert env[f"{prefix}REGION"] == region
        if f"{prefix}KAFKA_BOOTSTRAP" in env:
            assert all(region in host for host in env[f"{prefix}KAFKA_BOOTSTRAP"].split(","))


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_overlays_speak_mutual_tls_between_services(path):
    for _, _, c, service in containers(path):
        prefix = k8s.settings_class(service).model_config["env_prefix"]
        env = k8s.env_values(path, c)
        assert f"{prefix}PLAINTEXT" not in env and f"{prefix}TLS_CERT_FILE" in env
        if service != "monitor":
            assert f"{prefix}TLS_CLIENT_CA_FILE" in env
            allowed = env[f"{prefix}ALLOWED_CLIENT_SANS"].split(",")
            # its own SAN (the probe) and, for the backends, the enforcer's
            assert f"{service}.safeguards-{path.name}.svc" in allowed
            if service in ("classifier", "ratelimit"):
                assert f"enforcer.safeguards-{path.name}.svc" in allowed
            # the gateway: ext_authz / ext_proc to the enforcer, its rate-limit filter to
            # the rate limiter (deploy/envoy/envoy.yaml)
            gateway = f"gateway.gateway-{path.name}.svc"
            assert (gateway in allowed) == (service in ("enforcer", "ratelimit")), service
        if service == "enforcer":
            assert "ENFORCER_UPSTREAM_PLAINTEXT" not in env and env["ENFORCER_UPSTREAM_CA_FILE"]


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_the_gateway_names_tenants_to_the_rate_limiter_as_to_the_enforcer(path):
    """Both take the gateway's tenant (its x-safeguards-tenant header, its descriptors'
    `tenant` entry) under one rule: bound by a caller-tenants file in both or in neither."""
    files = {}
    for _, _, c, service in containers(path):
        if service in ("enforcer", "ratelimit"):
            prefix = k8s.settings_class(service).model_config["env_prefix"]
            files[service] = k8s.env_values(path, c).get(f"{prefix}CALLER_TENANTS_FILE", "")
    assert bool(files["enforcer"]) == bool(files["ratelimit"]), files


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_overlays_reach_kafka_over_sasl_ssl_each_service_as_its_own_user(path):
    """The Kafka clients' settings validate (test_env_vars_and_flags_are_settings_of_the_service)
    and the CA and password come from Secrets (test_files_the_services_read_or_write_are_mounted);
    here: every Kafka client of every overlay is encrypted and authenticated, as itself."""
    users = {}
    for _, spec, c, service in containers(path):
        prefix = k8s.settings_class(service).model_config["env_prefix"]
        env = k8s.env_values(path, c)
        if f"{prefix}KAFKA_BOOTSTRAP" not in env:
            continue
        assert env[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", service
        assert env[f"{prefix}KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", service
        assert env[f"{prefix}KAFKA_CA_FILE"] and env[f"{prefix}KAFKA_SASL_PASSWORD_FILE"]
        assert f"{prefix}KAFKA_SASL_PASSWORD" not in env
        secret = k8s.mounted_volume(spec, c, env[f"{prefix}KAFKA_SASL_PASSWORD_FILE"])["secret"]["secretName"]
        users[service] = (env[f"{prefix}KAFKA_SASL_USERNAME"], secret)
        settings = k8s.settings_class(service)(**{"plaintext": True, **_kafka_fields(env, prefix)})
        assert settings.kafka_security().protocol == "SASL_SSL"
    assert users == {"enforcer": ("enforcer", "enforcer-kafka"), "monitor": ("monitor", "monitor-kafka")}


def _kafka_fields(env: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(f"{prefix}KAFKA_")}


def test_gpu_variant_of_the_classifier():
    with_gpu = [p for p in OVERLAYS if "../../components/gpu-classifier" in (p / "kustomization.yaml").read_text()]
    without = [p for p in OVERLAYS if p not in with_gpu]
    assert with_gpu and without, "one overlay of each kind shows both variants"
    for path in OVERLAYS:
        dep = objects(path, "Deployment")["classifier"]
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = k8s.env_values(path, c)
        if path in with_gpu:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert env["CLASSIFIER_EXECUTION_PROVIDER"] == "cuda"
        else:
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and "nodeSelector" not in spec
            assert env["CLASSIFIER_EXECUTION_PROVIDER"] == "cpu"


def test_redis_cluster_variant_of_the_rate_limiter():
    """components/redis-cluster: the rate limiter in cluster mode, its Secret's URL read
    as seed nodes; the other overlays say standalone (the base's) out loud."""
    component = "../../components/redis-cluster"
    with_cluster = [p for p in OVERLAYS if component in (p / "kustomization.yaml").read_text()]
    without = [p for p in OVERLAYS if p not in with_cluster]
    assert with_cluster and without, "one overlay of each kind shows both variants"
    cls = k8s.settings_class("ratelimit")
    for path in OVERLAYS:
        c = objects(path, "Deployment")["ratelimit"]["spec"]["template"]["spec"]["containers"][0]
        env = k8s.env_values(path, c)
        secret = next(e for e in c["env"] if e["name"] == "RATELIMIT_REDIS_URL")["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "ratelimit-redis", "key": "url"}, "the URL carries the password"
        settings = cls(**{k.removeprefix("RATELIMIT_").lower(): v for k, v in env.items()})
        if path in with_cluster:
            from services.ratelimit.store import cluster_seeds

            assert settings.redis_mode == "cluster"
            assert len(cluster_seeds(settings.redis_url)[1]) == 3
        else:
            assert settings.redis_mode == "standalone"


# ---------------------------------------------------------------------------------------
# NetworkPolicy: deny by default, then exactly the mesh's own paths
# ---------------------------------------------------------------------------------------

PORTS = [50051, 50052, 50053, 50054, 51051, 51052, 51053, 51054, 8054, 9092, 6379, 5432, 53]


def _world(path: Path) -> dict[str, Pod]:
    namespace = f"safeguards-{path.name}"
    (ns,) = objects(path, "Namespace").values()
    ns_labels = {**ns["metadata"]["labels"], "kubernetes.io/metadata.name": namespace}
    pods = {}
    for dep, _, c, service in containers(path):
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        pods[service] = Pod(service, namespace, dep["spec"]["template"]["metadata"]["labels"], ns_labels, ports)

    def outside(name, ns_name, labels, ns_extra=None):
        return Pod(name, ns_name, labels, {"kubernetes.io/metadata.name": ns_name, **(ns_extra or {})})

    gw = {"safeguards-mesh/gateway": "true"}
    op = {"safeguards-mesh/operator": "true"}
    pods["gateway"] = outside("gateway", "gateway", gw, gw)
    pods["gateway-impostor"] = outside("gateway-impostor", "tenant-apps", gw)  # right pod label, wrong namespace
    pods["operator"] = outside("operator", "ops", op, op)
    pods["prometheus"] = outside("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    pods["kafka"] = outside("kafka", "kafka", {"app.kubernetes.io/name": "kafka"})
    pods["redis"] = outside("redis", "redis", {"app.kubernetes.io/name": "redis"})
    pods["postgresql"] = outside("postgresql", "db", {"app.kubernetes.io/name": "postgresql"})
    pods["dns"] = outside("dns", "kube-system", {"k8s-app": "kube-dns"})
    pods["debug"] = Pod("debug", namespace, {"app.kubernetes.io/name": "debug"}, ns_labels)
    return pods


EXPECTED = {
    ("gateway", "enforcer", 50051),
    ("operator", "enforcer", 50051),
    ("operator", "monitor", 50054),
    ("operator", "monitor", 8054),
    ("enforcer", "classifier", 50052),
    ("enforcer", "ratelimit", 50053),
    ("gateway", "ratelimit", 50053),  # Envoy's rate-limit filter (domain "gateway")
    ("enforcer", "kafka", 9092),
    ("monitor", "kafka", 9092),
    ("ratelimit", "redis", 6379),
    ("monitor", "postgresql", 5432),
    ("prometheus", "enforcer", 51051),
    ("prometheus", "classifier", 51052),
    ("prometheus", "ratelimit", 51053),
    ("prometheus", "monitor", 51054),
}


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_network_policies_allow_exactly_the_mesh_paths(path):
    policies = list(objects(path, "NetworkPolicy").values())
    pods = _world(path)
    ours = set(SERVICES) | {"debug"}
    allowed = set()
    for src in pods.values():
        for dst in pods.values():
            if src is dst or (src.name not in ours and dst.name not in ours):
                continue  # traffic between outside pods is not ours to police
            for port in PORTS:
                if dst.name == "dns":
                    continue
                if may_connect(policies, src, dst, port):
                    allowed.add((src.name, dst.name, port))
    assert allowed == EXPECTED
    for name in ours:  # DNS works for every pod of the namespace, UDP included
        assert may_connect(policies, pods[name], pods["dns"], 53, "UDP")
        assert not may_connect(policies, pods[name], pods["dns"], 80)


def test_the_network_policy_check_notices_a_missing_default_deny():
    path = OVERLAYS[0]
    policies = [p for p in objects(path, "NetworkPolicy").values() if p["metadata"]["name"] != "default-deny-all"]
    pods = _world(path)
    # the debug pod is selected by no other policy: without the default deny it is open
    assert may_connect(policies, pods["gateway"], pods["debug"], 8080)
    assert not may_connect(list(objects(path, "NetworkPolicy").values()), pods["gateway"], pods["debug"], 8080)


# ---------------------------------------------------------------------------------------
# Prometheus on Kubernetes (deploy/prometheus/kubernetes.yml)
# ---------------------------------------------------------------------------------------


def _relabel(config: list[dict], meta: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep / replace) applied to one target's labels."""
    import re

    labels = dict(meta)
    for rule in config:
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if not m:
                return None
        elif m:
            labels[rule["target_label"]] = m.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return labels


@pytest.mark.parametrize("path", OVERLAYS, ids=_ids(OVERLAYS))
def test_prometheus_on_kubernetes_scrapes_each_pod_on_its_metrics_port_as_its_service(path):
    """Debian's promtool is built without Kubernetes discovery, so the relabelling is
    checked here: each pod becomes a target job=<service>, namespace=<region's>, on the
    metrics port, which is what the alert rules and the dashboard select on."""
    prom = yaml.safe_load((k8s.ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    compose_prom = yaml.safe_load((k8s.ROOT / "deploy" / "prometheus.yml").read_text())
    assert prom["rule_files"] == compose_prom["rule_files"]
    (job,) = prom["scrape_configs"]
    for dep, _, c, service in containers(path):
        template = dep["spec"]["template"]["metadata"]
        meta = {"__address__": "10.0.0.7:50051", "__meta_kubernetes_namespace": dep["metadata"]["namespace"]}
        meta["__meta_kubernetes_pod_name"] = f"{service}-abc"
        for k, v in template["labels"].items():
            meta["__meta_kubernetes_pod_label_" + k.replace(".", "_").replace("/", "_").replace("-", "_")] = v
        for k, v in template["annotations"].items():
            meta["__meta_kubernetes_pod_annotation_" + k.replace(".", "_").replace("/", "_").replace("-", "_")] = v
        target = _relabel(job["relabel_configs"], meta)
        metrics_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert target is not None, f"{service} is not scraped"
        assert target["__address__"] == f"10.0.0.7:{metrics_port}"
        assert (target["job"], target["namespace"]) == (service, f"safeguards-{path.name}")
    stranger = {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true", "__address__": "10.0.0.8:80"}
    assert _relabel(job["relabel_configs"], stranger) is None
