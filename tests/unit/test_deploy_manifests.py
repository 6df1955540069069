"""deploy/: the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate,
offline, strict: an unknown or misspelt field fails), and what no schema knows: every
BATCHD_* variable is a real setting, the grace periods cover batchd's own, the probes ask the
right ports, the models file loads, the autoscaler scales the worker on a gauge batchd
exports. The compose file gets the same cross-checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batchd import metrics
from batchd.engines.registry import load_registry
from batchd.settings import Settings
from tests.support.server import REPO

pytestmark = pytest.mark.backend_independent

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest release still commonly run; newer ones accept it
SETTINGS = {f"BATCHD_{name.upper()}" for name in Settings.model_fields}
AWS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
       "AWS_ALLOW_HTTP"}
SHUTDOWN_GRACE = "BATCHD_SHUTDOWN_GRACE_SECONDS"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(KUBERNETES.rglob("*.yaml"))
            for doc in documents(path)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


CUSTOM_KINDS = {"Kustomization", "ScaledObject"}  # no schema of Kubernetes' own


@pytest.mark.parametrize(("path", "doc"), [m for m in manifests()
                                           if m[1]["kind"] not in CUSTOM_KINDS],
                         ids=lambda v: v.name if isinstance(v, Path) else v["kind"])
def test_each_manifest_is_valid_kubernetes(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    [kustomization] = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert all((KUBERNETES / name).is_file() for name in listed)
    own = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert own - listed == {"secret.example.yaml"}


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    specs = [doc["spec"]["template"]["spec"] for _, doc in manifests()
             if doc["kind"] in ("Deployment", "Job")]
    return [(spec, c) for spec in specs for c in spec["containers"]]


def config_env() -> dict[str, str]:
    return dict(by_kind("ConfigMap")["batchd"]["data"])


def test_every_variable_is_a_setting_or_a_standard_aws_one() -> None:
    names = set(config_env())
    for _, container in containers():
        names |= {e["name"] for e in container.get("env", [])}
    assert names, "no variables at all?"
    assert names <= SETTINGS | AWS, names - SETTINGS - AWS
    Settings(**{k.removeprefix("BATCHD_").lower(): v for k, v in config_env().items()
                if k.startswith("BATCHD_")})  # and each value is valid


def test_secrets_come_from_the_secret_the_example_defines() -> None:
    [example] = documents(KUBERNETES / "secret.example.yaml")
    keys = set(example["stringData"])
    for _, container in containers():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == example["metadata"]["name"] and ref["key"] in keys
    assert not {k for k in config_env() if "SECRET" in k or "PASSWORD" in k}


def test_grace_periods_cover_batchd_s_own_and_probes_ask_the_right_ports() -> None:
    grace = float(config_env()[SHUTDOWN_GRACE])
    for spec, container in containers():
        args = container["args"]
        if args[0] == "migrate":
            continue
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][1]) if pre_stop else 0.0
        assert spec["terminationGracePeriodSeconds"] > grace + sleep
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(config_env()["BATCHD_METRICS_PORT"])
        probes = {kind: container[f"{kind}Probe"]["httpGet"]
                  for kind in ("startup", "liveness", "readiness")}
        assert probes["liveness"]["path"] == "/healthz"
        assert probes["liveness"]["port"] == "metrics"  # up while the models load
        assert probes["readiness"]["path"] == "/readyz"
        assert probes["readiness"]["port"] == ("http" if args[0] == "serve" else "metrics")
        if args[0] == "serve":
            assert ports["http"] == Settings().port
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
        assert container["resources"]["requests"]


def test_the_models_file_in_the_config_map_loads(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(by_kind("ConfigMap")["batchd-models"]["data"]["models.yaml"])
    assert load_registry(path).served_ids() == ["SmolLM2-135M-Instruct"]


def test_autoscaling_scales_the_workers_on_the_backlog_gauge() -> None:
    exported = {name for name, _, _ in metrics._QUEUE_GAUGES}
    assert "batchd_backlog_requests" in exported
    [scaled] = by_kind("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind("Deployment")
    [trigger] = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert query.startswith('sum(max by (model) (batchd_backlog_requests{model=~'
                            '"SmolLM2-135M-Instruct|\\\\*"}))')
    [hpa] = by_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "batchd_backlog_requests"


def test_the_compose_stack_is_migrate_first_then_the_api_and_two_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "s3", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"}, "s3": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}}
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "batchd", "probe"]
        env = services[name]["environment"]
        assert set(env) <= SETTINGS | AWS, set(env) - SETTINGS - AWS
        grace = float(env[SHUTDOWN_GRACE])
        assert int(services[name]["stop_grace_period"].removesuffix("s")) > grace
    assert services["api"]["command"] == ["serve", "--no-worker"]
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert all("healthcheck" in services[n] for n in ("postgres", "s3", "api", "worker"))
    # The S3 identity and the API's credentials are the same variables.
    env = services["api"]["environment"]
    identities = compose["configs"]["s3-identities"]["content"]
    assert "${S3_ACCESS_KEY:-batchd}" in identities and \
        env["AWS_ACCESS_KEY_ID"] == "${S3_ACCESS_KEY:-batchd}"
