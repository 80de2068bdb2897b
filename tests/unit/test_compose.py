"""compose.yaml is valid (compose-spec schema + project rules) and is the source of truth
for how the services run: tests start processes with `service_env` / `service_command`.

No container is started here (no Docker engine on our machines); broken copies of the
file prove that each rule fails with its exact message.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import compose_check
from tools.compose_check import (
    COMPOSE_FILE,
    ROOT,
    SAFEGUARDS_SERVICES,
    ComposeError,
    check,
    interpolate,
    service_command,
    service_env,
)

RATELIMIT_ENV = {
    "RATELIMIT_LISTEN": "0.0.0.0:50053",
    "RATELIMIT_METRICS_LISTEN": "0.0.0.0:51053",
    "RATELIMIT_REDIS_URL": "redis://redis:6379/0",
    "RATELIMIT_CONFIG": "/app/config/ratelimit",
    "RATELIMIT_PLAINTEXT": "true",
    "RATELIMIT_REGION": "us-east-1",
    "RATELIMIT_SHUTDOWN_DELAY_SECONDS": "5",
    "RATELIMIT_DRAIN_GRACE_SECONDS": "10",
}


def _raw() -> dict:
    """compose.yaml as data (anchors and merge keys resolved, ${...} kept)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _project_copy(tmp_path: Path, doc: dict | None = None, prometheus: dict | None = None) -> Path:
    """A copy of the compose project (compose.yaml + the deploy/ files it refers to)."""
    (tmp_path / "deploy").mkdir()
    for name in ("Dockerfile", "prometheus.yml"):
        shutil.copy(ROOT / "deploy" / name, tmp_path / "deploy" / name)
    shutil.copytree(ROOT / "deploy" / "prometheus", tmp_path / "deploy" / "prometheus")
    if prometheus is not None:
        (tmp_path / "deploy" / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
    target = tmp_path / "compose.yaml"
    if doc is None:
        shutil.copy(COMPOSE_FILE, target)
    else:
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


def _broken(tmp_path: Path, mutate) -> list[str]:
    doc = _raw()
    mutate(doc)
    return check(_project_copy(tmp_path, doc), external=False)


# ---------------------------------------------------------------------------------------
# The real file
# ---------------------------------------------------------------------------------------


def test_compose_file_passes_schema_and_project_rules():
    assert check(COMPOSE_FILE, external=False) == []


def test_compose_file_passes_with_another_region():
    assert check(COMPOSE_FILE, {"REGION": "eu-west-1"}, external=False) == []


def test_yaml_dump_of_the_file_is_still_valid(tmp_path):
    """The broken-copy tests below dump YAML without anchors: the baseline must pass."""
    assert check(_project_copy(tmp_path, _raw()), external=False) == []


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose (v1) not installed")
def test_docker_compose_v1_config_accepts_the_file():
    assert compose_check.check_docker_compose_v1(COMPOSE_FILE) == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config():
    assert compose_check.check_promtool(ROOT / "deploy" / "prometheus.yml") == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_alert_rules_prometheus_loads():
    doc = compose_check.load_compose(COMPOSE_FILE)
    rule_files, problems = compose_check._rule_files(doc, ROOT, ROOT / "deploy" / "prometheus.yml")
    assert problems == []
    assert ROOT / "deploy" / "prometheus" / "rules" / "safeguards.yml" in rule_files
    assert compose_check.check_promtool_rules(rule_files) == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_rejects_a_broken_alert_rule(tmp_path):
    rules = tmp_path / "safeguards.yml"
    rules.write_text((ROOT / "deploy/prometheus/rules/safeguards.yml").read_text().replace("> 0.01", "> > 0.01", 1))
    problems = compose_check.check_promtool_rules([rules])
    assert problems and all(p.startswith("promtool: ") for p in problems), problems
    assert any("SafeguardsFailOpenShareHigh" in p or "parse error" in p for p in problems), problems


def test_rule_files_not_mounted_into_prometheus_are_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["prometheus"]["volumes"] = [
            v for v in doc["services"]["prometheus"]["volumes"] if "rules" not in v
        ]

    assert _broken(tmp_path, mutate) == [
        "prometheus.yml: rule_files '/etc/prometheus/rules/*.yml' is not mounted into the Prometheus service"
    ]


def test_rule_files_matching_no_file_are_rejected(tmp_path):
    path = _project_copy(tmp_path)
    (tmp_path / "deploy" / "prometheus" / "rules" / "safeguards.yml").unlink()
    assert check(path, external=False) == [
        f"prometheus.yml: rule_files '/etc/prometheus/rules/*.yml' matches no file "
        f"({tmp_path / 'deploy' / 'prometheus' / 'rules' / '*.yml'})"
    ]


def test_cli_exit_status_and_messages(tmp_path, capsys):
    assert compose_check.main([str(COMPOSE_FILE), "--no-external"]) == 0
    assert "OK (compose-spec schema, project rules)" in capsys.readouterr().out

    doc = _raw()
    del doc["services"]["ratelimit"]["healthcheck"]
    broken = _project_copy(tmp_path, doc)
    assert compose_check.main([str(broken), "--no-external"]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: service 'ratelimit': no healthcheck" in err
    assert f"{broken}: 2 problem(s)" in err  # and enforcer waits for it to be healthy


def test_vendored_schema_matches_its_recorded_source():
    source = (ROOT / "deploy" / "compose-spec.schema.SOURCE").read_text()
    recorded = re.search(r"sha256 ([0-9a-f]{64})", source).group(1)
    assert hashlib.sha256(compose_check.SCHEMA_FILE.read_bytes()).hexdigest() == recorded


def test_topics_and_broker_settings():
    doc = compose_check.load_compose(COMPOSE_FILE, {"REGION": "ap-south-1"})
    brokers = {n: s for n, s in doc["services"].items() if s.get("image", "").startswith("apache/kafka:")}
    brokers.pop("kafka-init")
    brokers.pop("kafka-certs")
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    for name, broker in brokers.items():
        env = broker["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_SSL://{name}:9092,BROKER://{name}:9094"
        assert compose_check._listener_protocols(env) == {
            9092: ("SASL_SSL", "SASL_SSL"),
            9093: ("CONTROLLER", "SSL"),
            9094: ("BROKER", "SSL"),
        }
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "BROKER"
        assert env["KAFKA_LISTENER_NAME_BROKER_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        # Each broker keeps its log on its own volume.
        assert broker["volumes"] == [f"{name}-data:/var/lib/kafka/data", "kafka-certs:/etc/kafka/secrets:ro"]
    assert sorted(b["environment"]["KAFKA_NODE_ID"] for b in brokers.values()) == ["1", "2", "3"]
    init = doc["services"]["kafka-init"]
    assert {d for d, c in init["depends_on"].items() if c["condition"] == "service_healthy"} == set(brokers)
    script = init["command"][0]
    assert init["environment"]["REGION"] == "ap-south-1"
    assert "bs=kafka-1:9094,kafka-2:9094,kafka-3:9094" in script
    # One `kafka-topics.sh --create` per topic: (topic, its continuation lines).
    creates = {
        m.group(1): m.group(0)
        for m in re.finditer(r'--create --if-not-exists \\\n\s*--topic "?([^" ]+)"?(?:[^\n]*\\\n)*[^\n]*', script)
    }
    assert sorted(creates) == [
        "safeguards.actions.${REGION}",
        "safeguards.alerts.${REGION}",
        "safeguards.rollup.global",
        "safeguards.signals.${REGION}",
    ]
    for topic, create in creates.items():
        assert "--replication-factor 3" in create, topic
    for topic in ("safeguards.signals.${REGION}", "safeguards.actions.${REGION}"):
        assert "--config min.insync.replicas=2" in creates[topic], topic
    assert "--config cleanup.policy=compact" in creates["safeguards.actions.${REGION}"]


@pytest.mark.parametrize("name", ["enforcer", "monitor"])
def test_each_replica_spools_to_its_own_volume(name):
    """An anonymous volume at <PREFIX>SPOOL_DIR: compose makes one per container, so
    `--scale enforcer=3` gives three spools, and keeps it when a container is recreated."""
    svc = compose_check.load_compose(COMPOSE_FILE)["services"][name]
    spool = service_env(name)[f"{SAFEGUARDS_SERVICES[name].env_prefix}SPOOL_DIR"]
    mounts = [compose_check._mount(v) for v in svc["volumes"]]
    assert ("anonymous", "", spool) in mounts
    assert not any(k == "volume" and "spool" in src for k, src, _ in mounts)


# ---------------------------------------------------------------------------------------
# What tests use to start the real processes
# ---------------------------------------------------------------------------------------


def test_service_env_of_ratelimit_is_the_documented_env():
    assert service_env("ratelimit") == RATELIMIT_ENV


def test_service_env_resolves_region_from_the_given_mapping():
    env = service_env("ratelimit", {"REGION": "eu-west-1"})
    assert env["RATELIMIT_REGION"] == "eu-west-1"
    assert service_env("enforcer", {"REGION": "eu-west-1"})["ENFORCER_REGION"] == "eu-west-1"


def test_service_env_of_the_other_services():
    assert service_env("classifier") == {
        "CLASSIFIER_LISTEN": "0.0.0.0:50052",
        "CLASSIFIER_METRICS_LISTEN": "0.0.0.0:51052",
        "CLASSIFIER_MODELS": "/app/models",
        "CLASSIFIER_PLAINTEXT": "true",
        "CLASSIFIER_REGION": "us-east-1",
        "CLASSIFIER_SHUTDOWN_DELAY_SECONDS": "5",
        "CLASSIFIER_DRAIN_GRACE_SECONDS": "10",
    }
    enforcer = service_env("enforcer")
    assert enforcer["ENFORCER_LISTEN"] == "0.0.0.0:50051"
    assert enforcer["ENFORCER_METRICS_LISTEN"] == "0.0.0.0:51051"
    assert enforcer["ENFORCER_CLASSIFIER_ADDR"] == "classifier:50052"
    assert enforcer["ENFORCER_RATELIMIT_ADDR"] == "ratelimit:50053"
    assert enforcer["ENFORCER_KAFKA_BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert enforcer["ENFORCER_KAFKA_IDEMPOTENCE"] == "true"
    assert enforcer["ENFORCER_POLICY"] == "/app/config/policies"


def test_service_env_reads_env_file_and_environment_overrides_it(tmp_path):
    doc = _raw()
    doc["services"]["ratelimit"]["env_file"] = ["ratelimit.env"]
    doc["services"]["ratelimit"]["environment"] = {"RATELIMIT_REGION": "${REGION:-us-east-1}"}
    (tmp_path / "ratelimit.env").write_text("# comment\nRATELIMIT_LISTEN=0.0.0.0:50053\nRATELIMIT_REGION=x\n")
    path = _project_copy(tmp_path, doc)
    assert service_env("ratelimit", {"REGION": "r1"}, path) == {
        "RATELIMIT_LISTEN": "0.0.0.0:50053",
        "RATELIMIT_REGION": "r1",
    }


def test_service_env_of_an_unknown_service_names_the_known_ones():
    with pytest.raises(KeyError, match="no service 'nope'.*ratelimit"):
        service_env("nope")


def test_service_command_is_python_dash_m_the_service_module():
    assert service_command("ratelimit") == ["python", "-m", "services.ratelimit"]
    assert service_command("enforcer") == ["python", "-m", "services.enforcer"]


@pytest.mark.parametrize("name", sorted(SAFEGUARDS_SERVICES))
def test_every_env_var_names_a_real_setting(name, monkeypatch):
    """A misspelt env var would be ignored silently by pydantic-settings: each one in
    compose.yaml must be a field of the service's settings class, and the whole env
    must validate."""
    try:
        module = importlib.import_module(f"services.{name}.settings")
    except ModuleNotFoundError:
        pytest.skip(f"services.{name}.settings does not exist yet")
    from services.common.settings import ServiceSettings

    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.model_config.get("env_prefix") == SAFEGUARDS_SERVICES[name].env_prefix
    ]
    assert classes, f"no settings class with env_prefix {SAFEGUARDS_SERVICES[name].env_prefix} in {module.__name__}"
    settings_cls = classes[0]
    env = service_env(name)
    prefix = SAFEGUARDS_SERVICES[name].env_prefix
    fields = {f"{prefix}{f.upper()}" for f in settings_cls.model_fields}
    assert sorted(set(env) - fields) == []
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_cls()
    assert settings.listen == env[f"{prefix}LISTEN"]
    assert settings.metrics_listen == env[f"{prefix}METRICS_LISTEN"]


# ---------------------------------------------------------------------------------------
# Broken copies fail with the exact message
# ---------------------------------------------------------------------------------------


def test_fixed_host_port_on_ratelimit_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["ports"] = ["50053:50053"]

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': fixed host port 50053 in ports entry '50053:50053' collides when scaled "
        "(use expose, an ephemeral '127.0.0.1::PORT' or a host port range)"
    ]


@pytest.mark.parametrize(
    "entry", ["127.0.0.1::50053", "50053", 50053, "127.0.0.1:50053-50055:50053", {"target": 50053}]
)
def test_ephemeral_and_ranged_host_ports_are_accepted(tmp_path, entry):
    def mutate(doc):
        doc["services"]["ratelimit"]["ports"] = [entry]

    assert _broken(tmp_path, mutate) == []


def test_long_syntax_fixed_host_port_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["ports"] = [{"target": 50053, "published": 50053, "host_ip": "127.0.0.1"}]

    problems = _broken(tmp_path, mutate)
    assert len(problems) == 1 and problems[0].startswith("service 'ratelimit': fixed host port 50053 in ports entry")


def test_missing_healthcheck_is_rejected(tmp_path):
    def mutate(doc):
        del doc["services"]["ratelimit"]["healthcheck"]

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': no healthcheck (expected test: "
        '["CMD", "python", "-m", "services.common.healthcheck", "127.0.0.1:50053"])',
        "service 'enforcer': depends_on 'ratelimit' being healthy, but 'ratelimit' has no healthcheck",
    ]


def test_healthcheck_on_the_wrong_port_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["healthcheck"]["test"][-1] = "127.0.0.1:50052"

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': healthcheck probes '127.0.0.1:50052' but RATELIMIT_LISTEN is port 50053"
    ]


def test_fixed_container_name_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["container_name"] = "ratelimit"

    assert _broken(tmp_path, mutate) == ["service 'ratelimit': fixed container_name 'ratelimit' prevents --scale"]


def test_stop_grace_period_shorter_than_the_drain_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["stop_grace_period"] = "10s"

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': stop_grace_period 10s is shorter than the drain "
        "(15s = RATELIMIT_SHUTDOWN_DELAY_SECONDS + RATELIMIT_DRAIN_GRACE_SECONDS)"
    ]


def test_missing_stop_grace_period_is_rejected(tmp_path):
    def mutate(doc):
        del doc["services"]["ratelimit"]["stop_grace_period"]

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': no stop_grace_period "
        "(needs >= 15s = RATELIMIT_SHUTDOWN_DELAY_SECONDS + RATELIMIT_DRAIN_GRACE_SECONDS)"
    ]


def test_missing_metrics_listener_is_rejected(tmp_path):
    def mutate(doc):
        del doc["services"]["ratelimit"]["environment"]["RATELIMIT_METRICS_LISTEN"]

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': no RATELIMIT_METRICS_LISTEN (metrics must be served for Prometheus; "
        "documented port 51053)"
    ]


def test_listen_port_other_than_the_documented_default_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["environment"]["RATELIMIT_LISTEN"] = "0.0.0.0:50054"
        doc["services"]["ratelimit"]["expose"][0] = "50054"
        doc["services"]["ratelimit"]["healthcheck"]["test"][-1] = "127.0.0.1:50054"

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': RATELIMIT_LISTEN=0.0.0.0:50054 port differs from the documented default 50053"
    ]


def test_loopback_listen_address_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["environment"]["RATELIMIT_METRICS_LISTEN"] = "127.0.0.1:51053"

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': RATELIMIT_METRICS_LISTEN=127.0.0.1:51053 listens on loopback only; "
        "other containers cannot reach it"
    ]


def test_service_not_scraped_by_prometheus_is_rejected(tmp_path):
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    prom["scrape_configs"] = [j for j in prom["scrape_configs"] if j["job_name"] != "ratelimit"]
    problems = check(_project_copy(tmp_path, prometheus=prom), external=False)
    assert problems == ["service 'ratelimit': not scraped by Prometheus (no job 'ratelimit' in prometheus.yml)"]


def test_static_scrape_target_is_rejected_because_it_sees_one_replica(tmp_path):
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        if job["job_name"] == "ratelimit":
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": ["ratelimit:51053"]}]
    problems = check(_project_copy(tmp_path, prometheus=prom), external=False)
    assert problems == [
        "service 'ratelimit': Prometheus job 'ratelimit' must use dns_sd_configs with names ['ratelimit'] "
        "so that every replica is scraped"
    ]


def test_scrape_port_other_than_the_metrics_port_is_rejected(tmp_path):
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        if job["job_name"] == "ratelimit":
            job["dns_sd_configs"][0]["port"] = 50053
    problems = check(_project_copy(tmp_path, prometheus=prom), external=False)
    assert problems == [
        "service 'ratelimit': Prometheus job 'ratelimit' resolves type A port 50053, "
        "expected type A port 51053 (RATELIMIT_METRICS_LISTEN)"
    ]


def test_scrape_job_for_a_missing_service_is_rejected(tmp_path):
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    ghost = {"names": ["ghost"], "type": "A", "port": 51099}
    prom["scrape_configs"].append({"job_name": "ghost", "dns_sd_configs": [ghost]})
    problems = check(_project_copy(tmp_path, prometheus=prom), external=False)
    assert problems == ["prometheus.yml: job 'ghost' resolves 'ghost', which is not a service in compose.yaml"]


def test_depends_on_an_unknown_service_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["depends_on"]["memcached"] = {"condition": "service_started"}

    assert _broken(tmp_path, mutate) == ["service 'ratelimit': depends_on unknown service 'memcached'"]


def test_depends_on_a_service_of_an_inactive_profile_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["enforcer"]["profiles"] = ["full"]
        doc["services"]["ratelimit"]["depends_on"]["enforcer"] = {"condition": "service_healthy"}

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': depends_on 'enforcer', which only runs with profiles ['full'] "
        "(ratelimit runs with no profile)"
    ]


def test_depends_on_healthy_needs_a_healthcheck(tmp_path):
    def mutate(doc):
        del doc["services"]["redis"]["healthcheck"]

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': depends_on 'redis' being healthy, but 'redis' has no healthcheck"
    ]


def test_build_from_another_dockerfile_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["build"] = {"context": "services/ratelimit"}

    assert _broken(tmp_path, mutate) == [
        "service 'ratelimit': builds services/ratelimit/Dockerfile with context 'services/ratelimit'; "
        "expected deploy/Dockerfile with context '.' (the repository root)"
    ]


def test_unknown_service_built_from_the_image_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["ghost"] = copy.deepcopy(doc["services"]["ratelimit"])

    problems = _broken(tmp_path, mutate)
    assert problems == [
        "service 'ghost': built from deploy/Dockerfile but not a known Safeguards service "
        "(known: classifier, enforcer, monitor, ratelimit; add it to tools/compose_check.py)"
    ]


def test_schema_violation_names_the_unknown_key(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["stop_grace_perod"] = doc["services"]["ratelimit"].pop("stop_grace_period")

    problems = _broken(tmp_path, mutate)
    assert "schema: services.ratelimit: unknown key(s) 'stop_grace_perod'" in problems


def test_schema_violation_in_a_one_of_names_the_real_mistake(tmp_path):
    def mutate(doc):
        doc["services"]["ratelimit"]["depends_on"]["redis"]["condition"] = "service_ready"

    problems = _broken(tmp_path, mutate)
    assert problems == [
        "schema: services.ratelimit.depends_on.redis.condition: 'service_ready' is not one of "
        "['service_started', 'service_healthy', 'service_completed_successfully']"
    ]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose (v1) not installed")
def test_docker_compose_v1_rejects_a_broken_file(tmp_path):
    doc = _raw()
    doc["services"]["ratelimit"]["stop_grace_perod"] = "20s"
    problems = compose_check.check_docker_compose_v1(_project_copy(tmp_path, doc))
    assert any("stop_grace_perod" in p for p in problems), problems


def test_spool_on_a_named_volume_is_rejected_because_replicas_share_it(tmp_path):
    def mutate(doc):
        doc["services"]["enforcer"]["volumes"][1] = "enforcer-spool:/var/lib/safeguards/spool"
        doc["volumes"]["enforcer-spool"] = None

    assert _broken(tmp_path, mutate) == [
        "service 'enforcer': ENFORCER_SPOOL_DIR /var/lib/safeguards/spool is on named volume 'enforcer-spool', "
        "which every replica shares when scaled (use an anonymous volume: one per replica)",
        "service 'enforcer': ENFORCER_ACTIONS_SNAPSHOT_FILE /var/lib/safeguards/spool/actions.snapshot is on named "
        "volume 'enforcer-spool', which every replica shares when scaled (use an anonymous volume: one per replica)",
    ]


def test_spool_on_a_bind_mount_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["monitor"]["volumes"][0] = {
            "type": "bind",
            "source": "./spool",
            "target": "/var/lib/safeguards/spool",
        }

    assert _broken(tmp_path, mutate) == [
        "service 'monitor': MONITOR_SPOOL_DIR /var/lib/safeguards/spool is on bind mount './spool', "
        "which every replica shares when scaled (use an anonymous volume: one per replica)"
    ]


def test_spool_without_a_volume_is_rejected(tmp_path):
    def mutate(doc):
        del doc["services"]["enforcer"]["volumes"][1]

    assert _broken(tmp_path, mutate) == [
        "service 'enforcer': ENFORCER_SPOOL_DIR /var/lib/safeguards/spool is not on a volume: spooled records "
        "are lost when the container is recreated (mount an anonymous volume there)",
        "service 'enforcer': ENFORCER_ACTIONS_SNAPSHOT_FILE /var/lib/safeguards/spool/actions.snapshot is not on a "
        "volume: it is lost when the container is recreated (mount an anonymous volume there)",
    ]


def test_bootstrap_that_leaves_out_a_broker_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["enforcer"]["environment"]["ENFORCER_KAFKA_BOOTSTRAP"] = "kafka-1:9092,kafka-2:9092"

    assert _broken(tmp_path, mutate) == [
        "service 'enforcer': ENFORCER_KAFKA_BOOTSTRAP leaves out broker(s) kafka-3 "
        "(a service must start while any one broker is down)"
    ]


def test_bootstrap_naming_an_unknown_host_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["monitor"]["environment"]["MONITOR_KAFKA_BOOTSTRAP"] = "kafka:9092"

    assert _broken(tmp_path, mutate) == [
        "service 'monitor': MONITOR_KAFKA_BOOTSTRAP names kafka, not a Kafka broker of this file"
    ]


def test_duplicate_node_id_and_missing_voter_are_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["kafka-3"]["environment"]["KAFKA_NODE_ID"] = "2"

    assert _broken(tmp_path, mutate) == [
        "service 'kafka-3': KAFKA_NODE_ID 2 is also the id of 'kafka-2'",
        "service 'kafka-3': node 2 is a controller but not the voter '2@kafka-3:PORT' of "
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
    ]


def test_replication_beyond_the_broker_count_is_rejected(tmp_path):
    def mutate(doc):
        for name in ("kafka-2", "kafka-3"):
            del doc["services"][name]
            del doc["services"]["kafka-init"]["depends_on"][name]
        env = doc["services"]["kafka-1"]["environment"]
        env["KAFKA_CONTROLLER_QUORUM_VOTERS"] = "1@kafka-1:9093"
        env["KAFKA_MIN_INSYNC_REPLICAS"] = "4"
        for svc in ("enforcer", "monitor"):
            prefix = SAFEGUARDS_SERVICES[svc].env_prefix
            doc["services"][svc]["environment"][f"{prefix}KAFKA_BOOTSTRAP"] = "kafka-1:9092"

    assert _broken(tmp_path, mutate) == [
        "service 'kafka-1': KAFKA_DEFAULT_REPLICATION_FACTOR=3 but the file runs 1 broker(s)",
        "service 'kafka-1': KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=3 but the file runs 1 broker(s)",
        "service 'kafka-1': KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=3 but the file runs 1 broker(s)",
        "service 'kafka-1': KAFKA_MIN_INSYNC_REPLICAS=4 above the replication factor 3 "
        "(no acks=all write could succeed)",
    ]


# ---------------------------------------------------------------------------------------
# Interpolation and durations
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${REGION:-us-east-1}", {}, "us-east-1"),
        ("${REGION:-us-east-1}", {"REGION": ""}, "us-east-1"),
        ("${REGION-us-east-1}", {"REGION": ""}, ""),
        ("${REGION}", {"REGION": "eu"}, "eu"),
        ("$REGION/x", {"REGION": "eu"}, "eu/x"),
        ("${UNSET}", {}, ""),
        ("${A:+set}", {"A": "1"}, "set"),
        ("$${REGION} costs $$5", {"REGION": "eu"}, "${REGION} costs $5"),
    ],
)
def test_interpolation(text, variables, expected):
    assert interpolate(text, variables) == expected


def test_required_variable_raises_with_its_message():
    with pytest.raises(ComposeError, match="required variable TOKEN is not set: give a token"):
        interpolate("${TOKEN:?give a token}", {})


@pytest.mark.parametrize(("text", "seconds"), [("20s", 20), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), (15, 15)])
def test_parse_duration(text, seconds):
    assert compose_check.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "20", "20 s", "s20", "1x"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match="not a duration"):
        compose_check.parse_duration(text)


# ---------------------------------------------------------------------------------------
# Signed actions and Kafka security
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["enforcer", "monitor"])
def test_service_without_an_action_key_ring_is_rejected(tmp_path, name):
    prefix = SAFEGUARDS_SERVICES[name].env_prefix

    def mutate(doc):
        del doc["services"][name]["environment"][f"{prefix}ACTION_KEYS_FILE"]

    assert _broken(tmp_path, mutate) == [
        f"service '{name}': no action key ring ({prefix}ACTION_KEYS_FILE or {prefix}ACTION_KEYS): the service "
        f"refuses to start without one"
    ]


def test_the_public_development_action_key_is_rejected(tmp_path):
    def mutate(doc):
        env = doc["services"]["enforcer"]["environment"]
        del env["ENFORCER_ACTION_KEYS_FILE"]
        env["ENFORCER_INSECURE_DEV_ACTION_KEY"] = "true"

    assert _broken(tmp_path, mutate) == [
        "service 'enforcer': ENFORCER_INSECURE_DEV_ACTION_KEY signs actions with the public development key "
        "(anyone who reaches Kafka can forge them); give ENFORCER_ACTION_KEYS_FILE"
    ]


def test_key_files_on_no_volume_are_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["monitor"]["volumes"] = [
            v for v in doc["services"]["monitor"]["volumes"] if "safeguards-keys" not in str(v)
        ]

    assert _broken(tmp_path, mutate) == [
        "service 'monitor': MONITOR_HMAC_KEY_FILE /var/lib/safeguards/keys/hmac.key is on no volume of the service",
        "service 'monitor': MONITOR_ACTION_KEYS_FILE /var/lib/safeguards/keys/action-keys is on no volume of the "
        "service",
    ]


def test_kafka_client_speaking_another_protocol_than_the_listener_is_rejected(tmp_path):
    def mutate(doc):
        env = doc["services"]["enforcer"]["environment"]
        for key in [k for k in env if k.startswith("ENFORCER_KAFKA_") and ("SASL" in k or "CA_FILE" in k)]:
            del env[key]
        env["ENFORCER_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"

    assert _broken(tmp_path, mutate) == [
        f"service 'enforcer': ENFORCER_KAFKA_SECURITY_PROTOCOL is PLAINTEXT but kafka-{n}:9092 is the SASL_SSL "
        f"listener SASL_SSL of 'kafka-{n}'"
        for n in (1, 2, 3)
    ]


def test_kafka_client_without_a_security_protocol_is_rejected(tmp_path):
    """PLAINTEXT is the services' default: leaving the setting out is the same mistake."""

    def mutate(doc):
        del doc["services"]["monitor"]["environment"]["MONITOR_KAFKA_SECURITY_PROTOCOL"]

    problems = _broken(tmp_path, mutate)
    assert problems[0] == (
        "service 'monitor': MONITOR_KAFKA_SECURITY_PROTOCOL is PLAINTEXT but kafka-1:9092 is the SASL_SSL "
        "listener SASL_SSL of 'kafka-1'"
    )
    assert len(problems) == 3


def test_kafka_client_on_the_mutual_tls_listener_is_rejected(tmp_path):
    def mutate(doc):
        env = doc["services"]["monitor"]["environment"]
        env["MONITOR_KAFKA_BOOTSTRAP"] = "kafka-1:9094,kafka-2:9092,kafka-3:9092"

    assert _broken(tmp_path, mutate) == [
        "service 'monitor': MONITOR_KAFKA_SECURITY_PROTOCOL is SASL_SSL but kafka-1:9094 is the SSL listener "
        "BROKER of 'kafka-1'"
    ]


def test_kafka_bootstrap_on_no_listener_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["enforcer"]["environment"]["ENFORCER_KAFKA_BOOTSTRAP"] = (
            "kafka-1:9092,kafka-2:9092,kafka-3:29092"
        )

    assert _broken(tmp_path, mutate) == [
        "service 'enforcer': ENFORCER_KAFKA_BOOTSTRAP names kafka-3:29092, which is no listener of 'kafka-3'"
    ]


def test_sasl_mechanism_the_brokers_do_not_enable_is_rejected(tmp_path):
    def mutate(doc):
        doc["services"]["enforcer"]["environment"]["ENFORCER_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-256"

    assert _broken(tmp_path, mutate) == [
        f"service 'enforcer': ENFORCER_KAFKA_SASL_MECHANISM SCRAM-SHA-256 is not enabled on 'kafka-{n}' "
        f"(KAFKA_SASL_ENABLED_MECHANISMS=SCRAM-SHA-512)"
        for n in (1, 2, 3)
    ]


def _shell_commands(script: str) -> list[str]:
    """The script's commands, continuation lines joined."""
    return [c.strip() for c in script.replace("\\\n", " ").splitlines() if c.strip()]


def test_only_the_enforcer_and_the_monitor_may_write_the_actions_topic_and_each_has_its_scram_user():
    doc = compose_check.load_compose(COMPOSE_FILE)
    script = doc["services"]["kafka-init"]["command"][0]
    writers: set[str] = set()
    for cmd in _shell_commands(script):
        if "--operation Write" in cmd and '--topic "safeguards.actions.${REGION}"' in cmd:
            assert "--allow-principal" in cmd and "--deny-principal" not in cmd
            writers |= set(re.findall(r"--allow-principal (\S+)", cmd))
    assert writers == {"User:enforcer", "User:monitor"}
    assert "for user in enforcer monitor; do" in script
    env = {name: service_env(name) for name in ("enforcer", "monitor")}
    for name, e in env.items():
        prefix = SAFEGUARDS_SERVICES[name].env_prefix
        assert e[f"{prefix}KAFKA_SASL_USERNAME"] == name
        assert e[f"{prefix}KAFKA_SASL_PASSWORD_FILE"] == f"/var/lib/safeguards/kafka/{name}.password"
    brokers = [s for n, s in doc["services"].items() if re.fullmatch(r"kafka-\d", n)]
    for broker in brokers:  # ACLs are enforced: nothing is allowed without one
        assert broker["environment"]["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert broker["environment"]["KAFKA_SUPER_USERS"] == "User:kafka-broker;User:kafka-admin"


def test_hmac_init_creates_the_action_key_ring_once_readable_by_the_services_only(tmp_path):
    """The very script of compose.yaml (its keys folder mapped to a temporary one)."""
    from services.actions.records import KeyRing

    svc = compose_check.load_compose(COMPOSE_FILE)["services"]["hmac-init"]
    assert svc["entrypoint"] == ["python", "-c"]
    script = svc["command"][0].replace("/var/lib/safeguards/keys", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENFORCER_", "MONITOR_"))}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=30)
    ring_file = tmp_path / "action-keys"
    ring = KeyRing.parse(ring_file.read_text())
    ((kid, secret),) = ring.keys
    assert kid == "k1" and len(secret) == 32
    st = ring_file.stat()
    assert oct(st.st_mode & 0o777) == "0o600"
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (10001, 10001)  # the Safeguards image's user
    assert len(bytes.fromhex((tmp_path / "hmac.key").read_text())) == 32
    # Once: a second run keeps both keys.
    before = ring_file.read_bytes(), (tmp_path / "hmac.key").read_bytes()
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=30)
    assert (ring_file.read_bytes(), (tmp_path / "hmac.key").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["action-keys", "hmac.key"]
    # The services read it from the volume hmac-init writes.
    for name in ("enforcer", "monitor"):
        prefix = SAFEGUARDS_SERVICES[name].env_prefix
        assert service_env(name)[f"{prefix}ACTION_KEYS_FILE"] == "/var/lib/safeguards/keys/action-keys"
        assert "safeguards-keys:/var/lib/safeguards/keys:ro" in _raw()["services"][name]["volumes"]
    assert svc["volumes"] == ["safeguards-keys:/var/lib/safeguards/keys"]


@pytest.mark.skipif(shutil.which("keytool") is None, reason="keytool (a JRE) not installed")
def test_kafka_certs_make_a_pki_the_services_verify_the_brokers_with(tmp_path):
    """The very kafka-certs script (folders mapped), then a real TLS handshake: a server
    with the brokers' keystore, requiring the admin's certificate, verified by a client
    with the services' CA file for each broker host name, as aiokafka does."""
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    d, c = tmp_path / "secrets", tmp_path / "client"
    d.mkdir()
    c.mkdir()
    svc = compose_check.load_compose(COMPOSE_FILE)["services"]["kafka-certs"]
    script = svc["command"][0].replace("/etc/kafka/secrets", str(d)).replace("/var/lib/safeguards/kafka", str(c))
    if os.geteuid() != 0:
        script = script.replace("chown -R", ": chown -R")
    subprocess.run(["/bin/bash", "-ec", script], check=True, capture_output=True, timeout=300)

    password = (d / "keystore-password").read_text().encode()
    pems = {}
    for name in ("kafka-broker", "kafka-admin"):
        key, cert, chain = pkcs12.load_key_and_certificates((d / f"{name}.p12").read_bytes(), password)
        assert cert.subject.rfc4514_string() == f"CN={name}"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["kafka-1", "kafka-2", "kafka-3", "localhost"]
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        pems[name] = pem
    assert not (d / "ca.p12").exists(), "the CA key is not kept"
    assert "ssl.keystore.password=" + password.decode() in (d / "admin.properties").read_text()
    assert "ScramLoginModule required;" in (d / "kafka_server_jaas.conf").read_text()
    assert (c / "ca.crt").read_bytes() == (d / "ca.crt").read_bytes()
    for user in ("enforcer", "monitor"):
        assert re.fullmatch(r"[0-9a-f]{64}", (c / f"{user}.password").read_text())
        assert oct((c / f"{user}.password").stat().st_mode & 0o777) == "0o600"
    assert oct((d / "keystore-password").stat().st_mode & 0o777) == "0o600"

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.crt"))
    server_ctx.load_cert_chain(pems["kafka-broker"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # the brokers' mutual-TLS listener

    def serve(listener: socket.socket, seen: list) -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen.append(tls.getpeercert()["subject"])
        except (ssl.SSLError, OSError) as exc:
            seen.append(exc)

    def handshake(host: str) -> list:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            seen: list = []
            thread = threading.Thread(target=serve, args=(listener, seen))
            thread.start()
            client_ctx = ssl.create_default_context(cafile=str(c / "ca.crt"))
            client_ctx.load_cert_chain(pems["kafka-admin"])
            try:
                with socket.create_connection(listener.getsockname()) as raw:
                    with client_ctx.wrap_socket(raw, server_hostname=host) as tls:
                        tls.sendall(b"x")
            finally:
                thread.join(10)
            return seen

    for host in ("kafka-1", "kafka-3", "localhost"):
        assert handshake(host) == [((("commonName", "kafka-admin"),),)]
    # A host name outside the certificate fails verification.
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake("kafka-4")

    # Once per volume: a second run keeps everything.
    before = {p.name: p.read_bytes() for p in [*d.iterdir(), *c.iterdir()]}
    subprocess.run(["/bin/bash", "-ec", script], check=True, capture_output=True, timeout=300)
    assert {p.name: p.read_bytes() for p in [*d.iterdir(), *c.iterdir()]} == before
