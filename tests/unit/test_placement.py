"""GPU placement on every node-pool profile: the rendered affinity selects exactly the nodes that have the
GPU type in the region, tolerates their taints, and the capacity check counts the same nodes."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.config import DEFAULT_GPU_CATALOGUE, OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.devcluster.nodepools import PROFILES, NodePools, node_manifests, profile_path
from distillery.resources import jobs, student, teacher
from distillery.resources.common import Owner, gpu_node_fits, node_matches_terms, node_selector_terms

OWNER = Owner("d", "ns", "uid")
CONFIG = OperatorConfig()
CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "distillery" / "values.yaml"


def spec(region: str, gpu_type: str) -> DistillationSpec:
    return DistillationSpec.model_validate({
        "task": "nli", "region": region,
        "teacher": {"model": "m", "gpuType": gpu_type, "gpus": 8, "tensorParallelSize": 8},
        "dataset": {"train": {"rows": [{"premise": "p", "hypothesis": "h", "label": "entailment"}]}},
        "student": {"model": "s", "gpuType": gpu_type, "nodes": 2, "gpusPerNode": 8},
        "serving": {"gpuType": gpu_type, "gpus": 1},
    })


def gpu_type_of(node: dict[str, Any]) -> str | None:
    """The GPU a simulated node has, read from its pool name (aks-h100, eks-p4d-a100, westus3-h100, ...)."""
    pool = node["metadata"]["labels"]["distillery.dev/node-pool"]
    return next((t for t in ("H100", "A100") if t.lower() in pool), None)


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint.get("value"):
            return True
    return False


def pod_specs(s: DistillationSpec, config: OperatorConfig) -> dict[str, dict[str, Any]]:
    return {
        "teacher": teacher.teacher_deployment(OWNER, s, config)["spec"]["template"]["spec"],
        "labeling": jobs.labeling_job(OWNER, s, config)["spec"]["template"]["spec"],
        "training": jobs.training_job(OWNER, s, config)["spec"]["template"]["spec"],
        "evaluation": jobs.evaluation_job(OWNER, s, config)["spec"]["template"]["spec"],
        "serving": student.student_deployment(OWNER, s, config)["spec"]["template"]["spec"],
    }


def can_schedule(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    """Required node affinity and NoSchedule taints, as the scheduler filters them."""
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    taints = [t for t in node["spec"]["taints"] if t["effect"] in ("NoSchedule", "NoExecute")]
    return (node_matches_terms(terms, node["metadata"]["labels"])
            and all(tolerates(pod["tolerations"], t) for t in taints))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("gpu_type", ["H100", "A100"])
def test_every_stage_lands_on_the_profiles_nodes_with_its_gpu_and_region(profile: str, gpu_type: str) -> None:
    nodes = node_manifests(NodePools.load(profile_path(profile)))
    regions = {n["metadata"]["labels"]["topology.kubernetes.io/region"] for n in nodes if gpu_type_of(n) == gpu_type}
    assert len(regions) == 1, f"{profile} has one {gpu_type} region"
    region = regions.pop()
    pods = pod_specs(spec(region, gpu_type), CONFIG)
    for stage in ("teacher", "training", "evaluation", "serving"):
        eligible = {n["metadata"]["name"] for n in nodes if can_schedule(pods[stage], n)}
        wanted = {n["metadata"]["name"] for n in nodes if gpu_type_of(n) == gpu_type}
        assert eligible == wanted, (profile, stage)
        assert len(eligible) >= 2, "two training nodes fit"
    in_region = {n["metadata"]["name"] for n in nodes
                 if n["metadata"]["labels"]["topology.kubernetes.io/region"] == region}
    assert {n["metadata"]["name"] for n in nodes if can_schedule(pods["labeling"], n)} <= in_region


@pytest.mark.parametrize("profile", PROFILES)
def test_capacity_check_counts_the_nodes_the_affinity_selects(profile: str) -> None:
    nodes = node_manifests(NodePools.load(profile_path(profile)))
    for region in {n["metadata"]["labels"]["topology.kubernetes.io/region"] for n in nodes}:
        for gpu_type in ("H100", "A100", "L4"):
            terms = node_selector_terms(CONFIG, region, gpu_type)
            for node in nodes:
                labels = node["metadata"]["labels"]
                gpus = int(node["status"]["allocatable"].get("nvidia.com/gpu", 0))
                fits = gpu_node_fits(CONFIG, labels, gpus, region, gpu_type, 8)
                assert fits == (node_matches_terms(terms, labels) and gpus >= 8), (profile, node["metadata"]["name"])
                assert fits == (gpu_type_of(node) == gpu_type
                                and labels["topology.kubernetes.io/region"] == region)
                assert not gpu_node_fits(CONFIG, labels, gpus, region, gpu_type, 16)


def test_capacity_check_honours_the_distillations_node_selector() -> None:
    labels = {"topology.kubernetes.io/region": "westus3", "node.kubernetes.io/instance-type": "p5.48xlarge",
              "team": "a"}
    assert gpu_node_fits(CONFIG, labels, 8, "westus3", "H100", 8, {"team": "a"})
    assert not gpu_node_fits(CONFIG, labels, 8, "westus3", "H100", 8, {"team": "b"})
    assert gpu_node_fits(CONFIG, {"topology.kubernetes.io/region": "westus3"}, 0, "westus3", None, 0)


def test_one_node_selector_term_per_way_of_recognising_the_gpu() -> None:
    terms = node_selector_terms(CONFIG, "westus3", "h100")
    assert [t["matchExpressions"][1]["key"] for t in terms] == list(DEFAULT_GPU_CATALOGUE["H100"])
    for term in terms:
        assert term["matchExpressions"][0] == {"key": "topology.kubernetes.io/region", "operator": "In",
                                               "values": ["westus3"]}
    assert node_selector_terms(CONFIG, "westus3", None) == [{"matchExpressions": [
        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["westus3"]}]}]


@pytest.mark.parametrize("profile", PROFILES)
def test_cpu_pods_prefer_nodes_without_gpus(profile: str) -> None:
    nodes = node_manifests(NodePools.load(profile_path(profile)))
    pod = pod_specs(spec("westus3", "H100"), CONFIG)["labeling"]
    (preferred,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    for node in nodes:
        has_gpus = "nvidia.com/gpu" in node["status"]["allocatable"]
        assert node_matches_terms([preferred["preference"]], node["metadata"]["labels"]) != has_gpus, node


def test_a_user_added_gpu_type_works_as_a_product_list_or_with_its_own_labels() -> None:
    config = OperatorConfig.model_validate(yaml.safe_load("""
gpu_catalogue:
  B200: [NVIDIA-B200]
  MI300X: {amd.com/gpu.product-name: [AMD_Instinct_MI300X_OAM]}
"""))
    assert config.gpu_node_labels("b200") == {"nvidia.com/gpu.product": ["NVIDIA-B200"]}
    assert gpu_node_fits(config, {"topology.kubernetes.io/region": "r", "nvidia.com/gpu.product": "NVIDIA-B200"},
                         8, "r", "B200", 8)
    assert gpu_node_fits(config, {"topology.kubernetes.io/region": "r",
                                  "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}, 8, "r", "MI300X", 8)
    # Not in the catalogue at all: the name itself is the product label value.
    assert config.gpu_node_labels("GH200") == {"nvidia.com/gpu.product": ["GH200"]}


def test_the_charts_default_catalogue_is_the_operators() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())["config"]
    config = OperatorConfig.model_validate({"gpu_catalogue": values["gpuCatalogue"],
                                            "gpu_product_label": values["gpuProductLabel"]})
    assert config.gpu_catalogue == DEFAULT_GPU_CATALOGUE


@pytest.mark.parametrize(("expression", "labels", "holds"), [
    ({"key": "a", "operator": "In", "values": ["1"]}, {"a": "1"}, True),
    ({"key": "a", "operator": "In", "values": ["1"]}, {}, False),
    ({"key": "a", "operator": "NotIn", "values": ["1"]}, {}, True),
    ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "1"}, False),
    ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
    ({"key": "a", "operator": "DoesNotExist"}, {"a": ""}, False),
    ({"key": "a", "operator": "Gt", "values": ["4"]}, {"a": "8"}, True),
    ({"key": "a", "operator": "Lt", "values": ["4"]}, {"a": "8"}, False),
    ({"key": "a", "operator": "Gt", "values": ["4"]}, {"a": "x"}, False),
])
def test_node_selector_semantics(expression: dict[str, Any], labels: dict[str, str], holds: bool) -> None:
    assert node_matches_terms([{"matchExpressions": [expression]}], labels) is holds
    assert node_matches_terms([{"matchExpressions": [{"key": "zz", "operator": "Exists"}]},
                               {"matchExpressions": [expression]}], labels) is holds, "terms are ORed"
