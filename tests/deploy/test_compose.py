"""The docker compose stack (docker-compose.yml), checked by loading the YAML: services,
ports, healthchecks, start order, mounted files, and that the worker's configuration
agrees with the topics, Prometheus and Grafana around it. No Docker engine is needed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from worker.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
WORKER_CONFIG = "/etc/fusion-worker/fusion.toml"
SERVICES = ("kafka", "topic-init", "worker", "producers", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith((".", "/")):
            out[container] = (REPO / host).resolve()
    return out


def host_file(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind ``container_path``: its own bind or one of a parent directory."""
    for target, host in binds(service).items():
        if container_path == target:
            return host
        if container_path.startswith(target.rstrip("/") + "/"):
            return host / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not mounted")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def worker_config(service: dict[str, Any]) -> Config:
    """The configuration the service's command loads: its mounted TOML plus its environment."""
    cmd = service["command"]
    path = cmd[cmd.index("--config") + 1]
    return load_config(host_file(service, path), env=environment(service))


def created_topics(service: dict[str, Any]) -> dict[str, int]:
    """Topic -> partitions, from the kafka-topics.sh --create lines of the init job."""
    script = "\n".join(service["command"])
    topics: dict[str, int] = {}
    for line in script.splitlines():
        words = shlex.split(line)
        if not words or not words[0].endswith("kafka-topics.sh") or "--create" not in words:
            continue
        assert "--if-not-exists" in words, f"not idempotent: {line}"
        topics[words[words.index("--topic") + 1]] = int(words[words.index("--partitions") + 1])
    return topics


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert m, f"cannot read duration {duration!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port."""
    out: dict[int, int] = {}
    for port in service.get("ports", []):
        parts = str(port).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def test_every_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    """Kafka, the topic job, the worker, the producers, Prometheus and Grafana are there."""
    assert set(SERVICES) <= set(services)


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    """Every pulled image names a version tag, and Kafka is a 4.x release."""
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image!r} names no repository"
        assert tag not in ("", "latest"), f"{name}: image {image!r} is not pinned"
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    """The broker runs KRaft with a consistent listener set and one-replica internal topics."""
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"]))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    advertised = [item.split("://")[0] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners) - {controller}
    node, _, address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    assert address == f"kafka:{listeners[controller]}"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_kafka_healthcheck_asks_the_broker(services: dict[str, dict[str, Any]]) -> None:
    """Kafka is healthy once kafka-broker-api-versions.sh gets an answer."""
    test = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in test
    assert "--bootstrap-server" in test


def test_topic_init_creates_co_partitioned_topics_after_kafka(
    services: dict[str, dict[str, Any]],
) -> None:
    """topic-init waits for a healthy broker, uses the same image, and creates topics
    idempotently against the in-network listener."""
    init = services["topic-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    topics = created_topics(init)
    assert {"predictions", "fused", "fusion-dlq", "fusion-late"} <= set(topics)
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for line in "\n".join(init["command"]).splitlines():
        if "--bootstrap-server" in line:
            server = shlex.split(line)[shlex.split(line).index("--bootstrap-server") + 1]
            assert f"://{server}" in advertised


@pytest.mark.parametrize("name", ["worker", "producers"])
def test_worker_images_start_after_broker_and_topics(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """The worker and the producers wait for a healthy broker and a finished topic-init."""
    depends = services[name]["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["topic-init"]["condition"] == "service_completed_successfully"


def test_worker_builds_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    """The worker and the producers are built from deploy/Dockerfile as one image."""
    worker, producers = services["worker"], services["producers"]
    context = REPO / worker["build"]["context"]
    assert (context / worker["build"]["dockerfile"]).resolve() == REPO / "deploy" / "Dockerfile"
    assert producers["image"] == worker["image"]


def test_worker_config_parses_with_the_compose_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    """The mounted fusion.toml plus the service's FUSION_* variables is a valid config
    that reaches the broker's in-network listener."""
    cfg = worker_config(services["worker"])
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for server in cfg.kafka.bootstrap_servers.split(","):
        assert f"://{server}" in advertised


def test_worker_topics_are_created_by_topic_init(services: dict[str, dict[str, Any]]) -> None:
    """Every topic the worker reads or writes is created, and the inputs share a
    partition count (the worker refuses to start otherwise)."""
    cfg = worker_config(services["worker"])
    topics = created_topics(services["topic-init"])
    needed = {*cfg.kafka.input_topics, cfg.kafka.output_topic, cfg.kafka.dlq_topic}
    needed |= {cfg.kafka.late_topic} - {""}
    assert needed <= set(topics), f"not created: {sorted(needed - set(topics))}"
    assert len({topics[t] for t in cfg.kafka.input_topics}) == 1


def test_worker_publishes_and_probes_the_metrics_port(
    services: dict[str, dict[str, Any]],
) -> None:
    """Port metrics.port is published, and the healthcheck asks /healthz on it."""
    worker = services["worker"]
    port = worker_config(worker).metrics.port
    assert published(worker).get(port) == port
    test = " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in test


def test_worker_stop_grace_exceeds_the_shutdown_budget(
    services: dict[str, dict[str, Any]],
) -> None:
    """docker stop waits longer than kafka.shutdown_timeout_ms before it kills the worker."""
    worker = services["worker"]
    budget_s = worker_config(worker).kafka.shutdown_timeout_ms / 1000
    assert seconds(worker["stop_grace_period"]) > budget_s


def test_producers_simulate_the_worker_config(services: dict[str, dict[str, Any]]) -> None:
    """The producers run `simulate` on the worker's own config, with no HTTP healthcheck."""
    producers = services["producers"]
    assert producers["command"][0] == "simulate"
    assert "--rate" in producers["command"]
    assert worker_config(producers).model_names == worker_config(services["worker"]).model_names
    assert producers["healthcheck"] == {"disable": True}


def test_mounted_host_files_exist(services: dict[str, dict[str, Any]]) -> None:
    """Every host path a service mounts exists in the repository."""
    count = 0
    for name, service in services.items():
        for target, host in binds(service).items():
            assert host.exists(), f"{name}: {host.relative_to(REPO)} (for {target}) is missing"
            assert REPO in host.parents, f"{name}: {host} lies outside the repository"
            count += 1
    assert count >= 5


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    """Kafka, the worker, Prometheus and Grafana report health to compose."""
    for name in ("kafka", "worker", "prometheus", "grafana"):
        check = services[name]["healthcheck"]
        assert check.get("test"), name
        assert not check.get("disable"), name


def test_prometheus_scrapes_the_worker_service(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus' config names the worker's compose service and metrics port as a target."""
    prometheus = services["prometheus"]
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    config = yaml.safe_load(host_file(prometheus, config_path).read_text(encoding="utf-8"))
    port = worker_config(services["worker"]).metrics.port
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"worker:{port}" in targets


def test_prometheus_rule_files_are_mounted_beside_its_config(
    services: dict[str, dict[str, Any]],
) -> None:
    """Each rule_files entry (relative to the config file) is a mounted repository file."""
    prometheus = services["prometheus"]
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    config = yaml.safe_load(host_file(prometheus, config_path).read_text(encoding="utf-8"))
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        container_path = str(Path(config_path).parent / rule_file)
        assert host_file(prometheus, container_path).is_file()
    assert 9090 in published(prometheus)


def test_grafana_lets_anonymous_users_view(services: dict[str, dict[str, Any]]) -> None:
    """Grafana is open to anonymous viewers (a demo) and to nobody else without login."""
    env = environment(services["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert 3000 in published(services["grafana"])


def test_grafana_datasource_is_the_prometheus_service(
    services: dict[str, dict[str, Any]],
) -> None:
    """The provisioned datasource URL is the Prometheus service on its container port."""
    grafana = services["grafana"]
    folder = host_file(grafana, "/etc/grafana/provisioning/datasources")
    urls = [
        urlparse(source["url"])
        for path in sorted(folder.glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
        if source["type"] == "prometheus"
    ]
    assert urls
    for url in urls:
        assert url.hostname in services
        assert url.port in published(services[url.hostname])


def test_grafana_dashboards_are_mounted_where_the_provider_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every file dashboard provider's path is a mounted folder holding the dashboards,
    and the home dashboard setting names one of them."""
    grafana = services["grafana"]
    folder = host_file(grafana, "/etc/grafana/provisioning/dashboards")
    paths = [
        provider["options"]["path"]
        for path in sorted(folder.glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
        if provider.get("type", "file") == "file"
    ]
    assert paths
    for path in paths:
        assert list(host_file(grafana, path).glob("*.json")), f"no dashboard in {path}"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_file(grafana, home).is_file()
