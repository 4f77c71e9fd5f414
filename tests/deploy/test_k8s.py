"""The Kubernetes manifests (deploy/k8s): the kustomize base and the example overlay.

The invariants are checked on the base's files as written and, where kubectl is
installed (`kubectl kustomize` renders offline), on the rendered base and overlay:
labels and selectors agree, ports follow metrics.port, probes, security settings,
the ConfigMap's fusion.toml is a valid config, replicas stay within the partition
count, and the termination grace period covers the shutdown budget.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from worker.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
PARTITIONS_ANNOTATION = "fusion-worker/input-partitions"
# Beyond kafka.shutdown_timeout_ms: leaving the group and the process exit.
SHUTDOWN_MARGIN_S = 5
# Config keys that name files the container must be able to read.
FILE_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file")
# kafka.sasl_mechanism -> the KEDA Kafka scaler's `sasl` value.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


@dataclass(frozen=True)
class Rendered:
    """The manifests of one kustomization, as Kubernetes would receive them."""

    name: str
    docs: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    @property
    def pod_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.deployment["spec"]["template"]["metadata"]["labels"]
        return labels

    @property
    def partitions(self) -> int:
        return int(self.deployment["metadata"]["annotations"][PARTITIONS_ANNOTATION])


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kustomization(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text("utf-8"))
    return data


def render_files(folder: Path) -> Rendered:
    """The base's resources as written, plus the ConfigMaps its generator would make
    (without kustomize's hash suffix)."""
    kust = kustomization(folder)
    docs: list[dict[str, Any]] = []
    for resource in kust["resources"]:
        docs += load_yaml_docs(folder / resource)
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for entry in gen["files"]:
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (folder / file).read_text(encoding="utf-8")
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    return Rendered(f"{folder.relative_to(K8S)} (files)", tuple(docs))


@functools.cache
def render_kustomize(folder: Path) -> Rendered:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the overlays")
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d is not None)
    return Rendered(f"{folder.relative_to(K8S)} (kustomize)", docs)


@pytest.fixture(
    scope="module",
    params=["base-files", "base", "overlays/example"],
)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    if request.param == "base-files":
        return render_files(BASE)
    return render_kustomize(K8S / request.param)


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount whose mountPath holds ``path``."""
    p = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        if p.is_relative_to(mount["mountPath"]):
            return dict(mount)
    raise AssertionError(f"{path} is on no volume the container mounts")


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment with stand-ins for values Kubernetes fills in."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = "stand-in-secret"
        else:
            env[var["name"]] = "fusion-worker-0"
    return env


def config_text(r: Rendered) -> tuple[str, str]:
    """(the --config path, the TOML the pod finds there)."""
    args = r.container["args"]
    path = args[args.index("--config") + 1]
    mount = mount_of(r.container, path)
    volume = next(v for v in r.pod["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{path} is not mounted from a ConfigMap"
    configmap = next(
        c for c in r.all("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]
    )
    key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    return path, configmap["data"][key]


def pod_config(r: Rendered, tmp: Path) -> Config:
    """The worker's configuration as the pod loads it: the ConfigMap's fusion.toml plus the
    container's environment. Files it names must be on a mounted volume; a stand-in file
    takes their place here."""
    _, text = config_text(r)
    for key in FILE_KEYS:
        m = re.search(rf'^{key}\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
        if m:
            mount_of(r.container, m.group(1))
            stand_in = tmp / key
            stand_in.write_text("stand-in\n", encoding="utf-8")
            text = text.replace(f'"{m.group(1)}"', json.dumps(str(stand_in)))
    file = tmp / "fusion.toml"
    file.write_text(text, encoding="utf-8")
    return load_config(file, env=container_env(r.container))


def cpu(quantity: str | int) -> float:
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory(quantity: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert m, f"cannot read memory quantity {quantity!r}"
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the files ---------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    """Every YAML file under deploy/k8s parses."""
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert load_yaml_docs(path), f"{path.relative_to(REPO)} is empty"


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kustomization_references_exist(folder: Path) -> None:
    """Resources, generator files and patches named by a kustomization exist."""
    kust = kustomization(folder)
    for resource in kust["resources"]:
        target = folder / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    for gen in kust.get("configMapGenerator", []):
        for entry in gen["files"]:
            assert (folder / entry.rpartition("=")[2]).is_file(), entry
    for patch in kust.get("patches", []):
        assert (folder / patch["path"]).is_file(), patch["path"]


def test_pod_runs_as_the_images_user() -> None:
    """runAsUser/runAsGroup are the uid:gid the Dockerfile's final USER names."""
    text = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    user = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, flags=re.MULTILINE)[-1]
    pod = render_files(BASE).pod["securityContext"]
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == user


# --- invariants of every rendering -------------------------------------------------------


def test_manifests_have_kind_and_name(rendered: Rendered) -> None:
    """Every manifest names its apiVersion, kind and metadata.name."""
    kinds = {d["kind"] for d in rendered.docs}
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    assert {"PodMonitor", "ScaledObject"} <= kinds
    for doc in rendered.docs:
        assert doc["apiVersion"]
        assert doc["metadata"]["name"]
    assert rendered.one("PodMonitor")["apiVersion"] == "monitoring.coreos.com/v1"
    assert rendered.one("ScaledObject")["apiVersion"] == "keda.sh/v1alpha1"


def test_labels_and_selectors_agree(rendered: Rendered) -> None:
    """Deployment selector, pod labels, Service, PDB and PodMonitor select the same pods."""
    pod_labels = rendered.pod_labels
    selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    assert selector
    assert selects(selector, pod_labels)
    assert rendered.one("Service")["spec"]["selector"] == selector
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert rendered.one("PodMonitor")["spec"]["selector"]["matchLabels"] == selector


def test_ports_follow_the_metrics_port(rendered: Rendered, tmp_path: Path) -> None:
    """The container port, the Service and the PodMonitor use the config's metrics.port."""
    port = pod_config(rendered, tmp_path).metrics.port
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert ports == {"metrics": port}
    service_ports = rendered.one("Service")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service_ports] == [(port, "metrics")]
    endpoints = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")]


def test_probes_use_healthz_and_readyz(rendered: Rendered) -> None:
    """Liveness (and start-up) probe /healthz; readiness probes /readyz; all on metrics."""
    c = rendered.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_security_settings(rendered: Rendered) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities."""
    pod, c = rendered.pod["securityContext"], rendered.container["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["runAsNonRoot"] is True
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"]
    assert not c["capabilities"].get("add")
    assert rendered.pod["automountServiceAccountToken"] is False
    mount_of(rendered.container, "/tmp/scratch")


def test_resources_have_requests_within_limits(rendered: Rendered) -> None:
    """CPU and memory have requests and limits, each request at most its limit."""
    res = rendered.container["resources"]
    assert cpu(res["requests"]["cpu"]) <= cpu(res["limits"]["cpu"])
    assert memory(res["requests"]["memory"]) <= memory(res["limits"]["memory"])


def test_configmap_fusion_toml_is_a_valid_config(rendered: Rendered, tmp_path: Path) -> None:
    """The fusion.toml the pod mounts, with the pod's environment, passes load_config."""
    path, _ = config_text(rendered)
    assert path == "/etc/fusion-worker/fusion.toml"
    cfg = pod_config(rendered, tmp_path)
    assert cfg.kafka.input_topics
    assert mount_of(rendered.container, path)["readOnly"] is True


def test_replicas_stay_within_the_partition_count(rendered: Rendered) -> None:
    """Deployment replicas, the scaler's bounds and a rollout never exceed the partitions."""
    partitions = rendered.partitions
    spec = rendered.deployment["spec"]
    assert 1 <= spec["replicas"] <= partitions
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0
    scaler = rendered.one("ScaledObject")["spec"]
    assert 1 <= scaler["minReplicaCount"] <= scaler["maxReplicaCount"] <= partitions
    for trigger in scaler["triggers"]:
        assert trigger["metadata"].get("allowIdleConsumers", "false") == "false"


def test_scaler_reads_the_workers_group(rendered: Rendered, tmp_path: Path) -> None:
    """KEDA scales this Deployment on the lag of the worker's group, topics and brokers."""
    cfg = pod_config(rendered, tmp_path)
    scaler = rendered.one("ScaledObject")["spec"]
    assert scaler["scaleTargetRef"]["name"] == rendered.deployment["metadata"]["name"]
    (trigger,) = scaler["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == cfg.kafka.group_id
    assert meta["topic"] in cfg.kafka.input_topics
    assert meta["bootstrapServers"] == cfg.kafka.bootstrap_servers
    if cfg.kafka.security_protocol.startswith("SASL"):
        assert meta["sasl"] == KEDA_SASL[cfg.kafka.sasl_mechanism]
        auth = rendered.one("TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    expected_tls = "enable" if cfg.kafka.security_protocol.endswith("SSL") else "disable"
    assert meta.get("tls", "disable") == expected_tls


def test_grace_period_exceeds_the_shutdown_budget(rendered: Rendered, tmp_path: Path) -> None:
    """Kubernetes waits longer than kafka.shutdown_timeout_ms plus a margin before SIGKILL."""
    budget_s = pod_config(rendered, tmp_path).kafka.shutdown_timeout_ms / 1000
    assert rendered.pod["terminationGracePeriodSeconds"] >= budget_s + SHUTDOWN_MARGIN_S


def test_sasl_password_comes_from_an_optional_secret(rendered: Rendered) -> None:
    """FUSION_KAFKA__SASL_PASSWORD is an optional secretKeyRef; no ConfigMap holds one."""
    env = {v["name"]: v for v in rendered.container["env"]}
    ref = env["FUSION_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    assert ref["name"]
    assert ref["key"]
    for configmap in rendered.all("ConfigMap"):
        for text in configmap["data"].values():
            assert not re.search(r"^\s*sasl_password\s*=", text, flags=re.MULTILINE)
    assert not rendered.all("Secret"), "credentials do not belong in the manifests"


def test_podmonitor_job_is_the_prometheus_job(rendered: Rendered) -> None:
    """The PodMonitor's job label is the job the alert rules and the compose scrape use."""
    prometheus = yaml.safe_load(
        (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    )
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    monitor = rendered.one("PodMonitor")["spec"]
    assert rendered.pod_labels[monitor["jobLabel"]] in jobs


# --- kustomize-only ----------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["base", "overlays/example"])
def test_kustomize_points_the_pods_at_the_hashed_configmap(folder: str) -> None:
    """The generated ConfigMap gets a content hash suffix and the pods mount that name,
    so a change to fusion.toml rolls the Deployment."""
    r = render_kustomize(K8S / folder)
    (configmap,) = r.all("ConfigMap")
    assert re.fullmatch(r"fusion-worker-config-[a-z0-9]{10}", configmap["metadata"]["name"])
    names = [v["configMap"]["name"] for v in r.pod["volumes"] if "configMap" in v]
    assert names == [configmap["metadata"]["name"]]


def test_overlay_uses_its_namespace_image_and_secrets() -> None:
    """The example overlay puts everything in its namespace, pins its registry image, and
    KEDA reads the same Secret key for the password as the worker."""
    r = render_kustomize(OVERLAY)
    namespace = r.one("Namespace")["metadata"]["name"]
    for doc in r.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    assert re.fullmatch(r"[\w.-]+/[\w./-]+:\d+\.\d+\.\d+", r.container["image"])
    env = {v["name"]: v for v in r.container["env"]}
    worker_ref = env["FUSION_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    refs = {p["parameter"]: p for p in r.one("TriggerAuthentication")["spec"]["secretTargetRef"]}
    assert (refs["password"]["name"], refs["password"]["key"]) == (
        worker_ref["name"],
        worker_ref["key"],
    )
