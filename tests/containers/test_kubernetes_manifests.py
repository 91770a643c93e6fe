"""The Kubernetes base in deploy/k8s validates offline against the Kubernetes API schemas and hangs together.

Every manifest the kustomization lists is checked with ``kubernetes-validate`` (the API's JSON schemas, strict:
no unknown fields); when ``kubectl`` is installed, the rendered ``kubectl kustomize`` output is checked too.
Beyond the schemas: every service in services/ has a Deployment with probes, resources and a disruption
budget, selectors match their pods, and every ConfigMap and Secret a pod reads is either in the base or one
of the secrets the operator creates (README.md in deploy/k8s).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
"""The oldest Kubernetes release the base is written for."""

OPERATOR_SECRETS = {
    "stella-database",
    "stella-database-roles",
    "stella-evidence-key",
    "stella-events-key",
    "stella-integration-master-key",
}
"""Secrets the base reads but does not hold (their values are the operator's)."""

HEADLESS_SERVICES_WITHOUT_DEPLOYMENT = {"agent", "cli"}
"""Packages in services/ that are not deployed in the cluster (the agent runs on target hosts, the CLI is a client)."""


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _base_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents += _documents((BASE / resource).read_text())
    return documents


def _pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    documents = _base_documents()
    assert documents
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (the schema check still runs)")
def test_the_rendered_kustomization_validates() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    documents = _documents(rendered)
    assert len(documents) == len(_base_documents())
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_service_is_deployed_with_probes_resources_and_a_disruption_budget() -> None:
    documents = _base_documents()
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    budgets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PodDisruptionBudget"}
    services = {p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()}
    wanted = {f"stella-{name}" for name in services - HEADLESS_SERVICES_WITHOUT_DEPLOYMENT} | {"stella-pgbouncer"}
    assert wanted <= set(deployments), wanted - set(deployments)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        assert deployment["spec"]["replicas"] >= 2, name
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= container.keys(), name
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, name
            assert container["resources"]["limits"]["memory"], name
        budget = budgets[name]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_services_run_unprivileged_and_migrations_run_first() -> None:
    documents = _base_documents()
    for name, spec in _pod_specs(documents):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if container["image"] == "stella" and name != "stella-migrate":
                # Its own login role with only its grants: no owner's credentials in the pod.
                service = name.removeprefix("stella-")
                assert env["STELLA_DATABASE_URL"] == f"postgresql://stella-pgbouncer:6432/{service}", name
                assert "@" not in env["STELLA_DATABASE_DIRECT_URL"], name
                assert f"STELLA_{service.upper()}_DATABASE_PASSWORD" in env, name
                assert "DB_PASSWORD" not in env, name
    config = next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stella-config")
    assert config["data"]["STELLA_MIGRATE_ON_START"] == "false"
    assert config["data"]["STELLA_DATABASE_POOL_MODE"] == "transaction"
    assert config["data"]["STELLA_DATABASE_SERVICE_ROLES"] == "true"
    job = next(d for d in documents if d["kind"] == "Job")
    assert "stella.kit.migrate" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])


def test_every_referenced_config_and_secret_exists_or_is_the_operators() -> None:
    documents = _base_documents()
    config_maps = {d["metadata"]["name"] for d in documents if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"} | OPERATOR_SECRETS
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    for name, spec in _pod_specs(documents):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, name
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in config_maps, name
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets, name
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, name
    # The Service and the Ingress reach the gateway's named port.
    gateway = services["stella-gateway"]
    assert gateway["spec"]["selector"] == {"app.kubernetes.io/name": "stella-gateway"}
    ingress = next(d for d in documents if d["kind"] == "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in services
