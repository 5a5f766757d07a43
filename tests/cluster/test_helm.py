"""The Helm chart: lint, render, schema, install, and RBAC that is both sufficient and minimal.

Rendering tests need only the helm binary; the rest run against the local control plane.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.config import OperatorConfig
from distillery.controller import metrics
from tests.cluster.chart import CHART, ChartIdentity, by_kind, helm, one, render
from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import REPO, Kube
from tests.cluster.operator_process import OperatorProcess
from tests.dockerfiles import parse_dockerfile

RBAC_DENIAL = re.compile(r'is forbidden: User "[^"]+" cannot')
VARIANTS = {
    "defaults": [],
    "watch-namespaces": ["--set-json", 'watchNamespaces=["team-a","team-b"]'],
    "service-monitor": ["--set", "metrics.serviceMonitor.enabled=true",
                        "--set-json", 'metrics.serviceMonitor.labels={"release":"prometheus"}'],
    "network-policy": ["--set", "networkPolicy.enabled=true",
                       "--set-json", 'networkPolicy.apiServer.cidrs=["10.0.0.1/32"]',
                       "--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":'
                                     '{"kubernetes.io/metadata.name":"monitoring"}}}]'],
    "dashboards": ["--set", "dashboards.enabled=true", "--set", "dashboards.namespace=monitoring"],
    "everything": ["--set-json", 'watchNamespaces=["team-a"]', "--set", "metrics.serviceMonitor.enabled=true",
                   "--set", "networkPolicy.enabled=true", "--set", "dashboards.enabled=true",
                   "--set", "image.digest=sha256:" + "a" * 64, "--set", "logLevel=debug",
                   "--set", "config.storageClassName=premium", "--set", "config.jobTtlSecondsAfterFinished=3600"],
}


def operator_config(docs: list[dict[str, Any]]) -> OperatorConfig:
    return OperatorConfig.model_validate(yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"]))


# Rendering -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_and_template_pass(variant: str) -> None:
    args = VARIANTS[variant]
    helm("lint", "--strict", str(CHART), *args)
    docs = render(*args)
    assert all(d.get("apiVersion") and d.get("kind") and d["metadata"].get("name") for d in docs)
    operator_config([d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")])


def test_runs_as_the_operator_images_user() -> None:
    user = parse_dockerfile((REPO / "images" / "operator" / "Dockerfile").read_text())[-1].last("USER")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert user == f"{values['runAsUser']}:{values['runAsGroup']}"


def test_default_render_is_a_hardened_single_operator() -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
                                               "Service", "ServiceAccount"]
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["args"][0] == "operator"
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config_map = one(docs, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert env["DISTILLERY_CONFIG"] == f"{mounts['config']}/config.yaml"
    assert operator_config(docs) == OperatorConfig()

    service = one(docs, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "ops"}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards_and_no_secrets(variant: str) -> None:
    for role in [d for d in render(*VARIANTS[variant]) if d["kind"] in ("Role", "ClusterRole")]:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"], rule)
            assert "resourceNames" not in rule
            assert not {"secrets", "clusterroles", "clusterrolebindings", "serviceaccounts/token"} & set(
                rule["resources"])
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_watch_namespaces_uses_roles_per_namespace() -> None:
    docs = render(*VARIANTS["watch-namespaces"])
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    cluster_resources = {r for rule in one(docs, "ClusterRole")["rules"] for r in rule["resources"]}
    assert cluster_resources == {"nodes", "customresourcedefinitions", "namespaces"}
    assert "distillations" in {r for rule in roles[0]["rules"] for r in rule["resources"]}
    assert operator_config(docs).namespaces == ["team-a", "team-b"]


def test_optional_resources_render_only_when_enabled() -> None:
    assert not {"ServiceMonitor", "NetworkPolicy"} & {d["kind"] for d in render()}
    monitor = one(render(*VARIANTS["service-monitor"]), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True

    policy = one(render(*VARIANTS["network-policy"]), "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    assert policy["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]

    docs = render(*VARIANTS["dashboards"])
    dashboard = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "distillery.json").read_text())
    assert json.loads(dashboard["data"]["distillery.json"]) == shipped


@pytest.mark.parametrize("args, complaint", [
    (["--set", "replicaCount=2"], "replicaCount"),
    (["--set", "replicas=1"], "replicas"),
    (["--set", "config.gpuCatalog.H100[0]=x"], "gpuCatalog"),
    (["--set", "image.tag=latest"], "tag"),
    (["--set", "networkPolicy.apiServer.ports[0]=0"], "ports"),
    (["--set", "logLevel=trace"], "logLevel"),
])
def test_schema_rejects_bad_values(args: list[str], complaint: str) -> None:
    result = helm("template", "rel", str(CHART), *args, check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_chart_crds_equal_the_generated_crds() -> None:
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert shipped == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/distillery/crds/{name} is stale: cp crds/{name} charts/distillery/crds/")


def _exposed_metric_names() -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    families = [*metrics.REGISTRY.collect(), *metrics.DistillationCollector(list).collect()]
    return {f.name + s for f in families for s in suffixes.get(f.type, [""])}


def test_dashboard_queries_name_metrics_the_operator_exposes() -> None:
    dashboard = json.loads((CHART / "dashboards" / "distillery.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used = {m for e in exprs for m in re.findall(r"\b(?:distillery|controller_runtime|workqueue)_[a-z_]+", e)}
    assert used, "the dashboard queries no operator metric"
    assert used <= _exposed_metric_names(), used - _exposed_metric_names()
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))


# Against the local control plane ---------------------------------------------------------------

@pytest.mark.cluster
def test_helm_install_creates_the_operator_deployment(kube: Kube, namespace: str, crd: None) -> None:
    # The strictest Pod Security level: a pod spec that is less than hardened is refused outright.
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
             "pod-security.kubernetes.io/warn=restricted")
    release = f"op-{namespace}"
    installed = helm("install", release, str(CHART), "-n", namespace, kubeconfig=kube.kubeconfig)
    try:
        assert "PodSecurity" not in installed.stderr, installed.stderr
        deploy = kube.get("deployment", f"{release}-distillery", namespace)
        assert deploy is not None
        assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/distillery-dev/operator:0.1.0"
        assert kube.get("clusterrole", f"{release}-distillery") is not None
        assert kube.get("configmap", f"{release}-distillery-config", namespace) is not None
        # Admission let the ReplicaSet create the pod. No image is pulled here; kwok may still
        # report it ready, and either way the objects are what the chart promises.
        kube.wait_for(lambda: kube.get("pods", namespace=namespace,
                                       selector=f"app.kubernetes.io/instance={release}")["items"],
                      30, what="operator pod admitted")
        status = helm("status", release, "-n", namespace, "-o", "json", kubeconfig=kube.kubeconfig).stdout
        assert json.loads(status)["info"]["status"] == "deployed"
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", kubeconfig=kube.kubeconfig)
    assert kube.get("clusterrole", f"{release}-distillery") is None
    assert kube.get("crd", "distillations.distillery.dev") is not None, "uninstall must keep the CRD"


@pytest.fixture(params=["cluster-wide", "watch-namespaces"])
def identity(request: pytest.FixtureRequest, kube: Kube, namespace: str, crd: None,
             tmp_path: Path) -> Iterator[ChartIdentity]:
    ident = ChartIdentity(kube, namespace, tmp_path, watch_own_namespace=request.param == "watch-namespaces")
    ident.create()
    yield ident
    ident.delete()


@pytest.mark.cluster
def test_chart_rbac_is_sufficient_for_the_whole_pipeline(kube: Kube, namespace: str,
                                                         identity: ChartIdentity, tmp_path: Path) -> None:
    op = OperatorProcess(identity.kubeconfig, tmp_path, identity.config)

    def nothing_forbidden() -> None:
        # A missing permission shows up at once in the operator's or kopf's log; fail then, not at the
        # timeout. Only the authorizer's denials count: a cluster-wide operator also meets other tests'
        # namespaces while they terminate, where the API server refuses new objects with a 403 of its own.
        forbidden = [line for line in op.logs().splitlines()
                     if RBAC_DENIAL.search(line) or "Not enough permissions" in line]
        assert not forbidden, "\n".join(forbidden)

    def succeeded() -> dict[str, Any] | None:
        nothing_forbidden()
        dist = kube.get("distillation", "rbac", namespace)
        return dist if (condition(dist, "Succeeded") or {}).get("status") == "True" else None

    op.start()
    try:
        kube.apply(distillation("rbac"), namespace=namespace)
        dist = kube.wait_for(succeeded, 120, what="Succeeded")
        assert condition(dist, "Ready")["status"] == "True"
        events = kube.get("events", namespace=namespace)["items"]
        assert {"Created", "Deleted", "StudentReady"} <= {
            e["reason"] for e in events if e["involvedObject"]["name"] == "rbac"}
        # Deletion must not hang on a finalizer this identity cannot remove.
        kube.run("delete", "distillation", "rbac", "-n", namespace, "--wait=true", "--timeout=60s")
        nothing_forbidden()
    finally:
        op.stop()


@pytest.mark.cluster
def test_chart_rbac_is_minimal(identity: ChartIdentity, namespace: str) -> None:
    denied = [
        ("list", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", namespace),
        ("delete", "nodes"),
        ("create", "clusterroles"),
        ("create", "clusterrolebindings"),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", namespace),
        ("create", "pods", "-n", namespace),
        ("patch", "distillations.distillery.dev", "-n", namespace),
        ("delete", "distillations.distillery.dev", "-n", namespace),
        ("create", "serviceaccounts", "--subresource=token", "-n", namespace),
        ("*", "*", "--all-namespaces"),
    ]
    allowed = [
        ("list", "nodes"),
        ("watch", "distillations.distillery.dev", "-n", namespace),
        ("patch", "distillations.distillery.dev", "--subresource=status", "-n", namespace),
        ("create", "jobs.batch", "-n", namespace),
        # Why a stage pod cannot mount its volumes is only in its Events.
        ("list", "events", "-n", namespace),
    ]
    assert [args for args in denied if identity.can(*args)] == []
    assert [args for args in allowed if not identity.can(*args)] == []
    real = identity.kubectl("get", "secrets", "--all-namespaces")
    assert real.returncode != 0 and "Forbidden" in real.stderr, real.stderr
    # It may create Roles for the stage pods, but none granting more than it holds itself.
    escalation = identity.kubectl("create", "role", "grab-secrets", "--verb=get", "--resource=secrets",
                                  "-n", namespace)
    assert escalation.returncode != 0 and "forbidden" in escalation.stderr.lower(), escalation.stderr
