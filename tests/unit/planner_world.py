"""The planner's tests' stand-in for the cluster: children as the API server would hold them, stepped through
plan(), and a minimal spec to vary."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, format_time
from distillery.controller.observe import NodeView, observe
from distillery.controller.planner import Apply, Create, Delete, Patch, Plan, plan
from distillery.resources.common import STAGE_LABEL, Owner

OWNER = Owner("demo", "team-a", "uid-1")
CONFIG = OperatorConfig()
H100 = NodeView(labels={"topology.kubernetes.io/region": "westus3", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                allocatable_gpus=8)
A100 = NodeView(labels={"topology.kubernetes.io/region": "eastus2", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                allocatable_gpus=8)


def make_spec(**overrides: Any) -> DistillationSpec:
    raw: dict[str, Any] = {
        "task": "nli",
        "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpus": 4, "tensorParallelSize": 4},
        "dataset": {"train": {"uri": "pvc://data/conjnli/train.jsonl"}},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpusPerNode": 2},
    }
    for path, value in overrides.items():
        node = raw
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DistillationSpec.model_validate(raw)


class World:
    """Children as the API server would hold them; tests flip their status like the controllers would."""

    def __init__(self, spec: DistillationSpec, nodes: tuple[NodeView, ...] = (H100, A100)) -> None:
        self.spec = spec
        self.nodes = nodes
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.status = DistillationStatus()
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
        self.history: list[Plan] = []
        self.config = CONFIG
        self.queue_messages: dict[str, str] = {}
        """Kueue's message per Job UID, as the Workload index holds it."""
        self.labels_source: dict[str, Any] | None = None
        """The Distillation that spec.dataset.labelsFrom names, as the cache holds it."""

    def step(self, minutes: float = 1) -> Plan:
        self.now += timedelta(minutes=minutes)
        observed = observe(OWNER.name, self.children.values(), self.pods, self.nodes, self.queue_messages,
                           self.labels_source)
        result = plan(OWNER, 1, self.spec, self.status, observed, self.now, self.config)
        for action in result.actions:
            if isinstance(action, Create):
                m = json.loads(json.dumps(action.manifest))
                m["metadata"]["uid"] = f"uid-{m['kind']}-{m['metadata']['name']}"
                self.children.setdefault((m["kind"], m["metadata"]["name"]), m)
            elif isinstance(action, Delete) and action.propagation == "Foreground":
                # Kept until its dependents are gone; tests remove it with gone().
                obj = self.children.get((action.kind, action.name))
                if obj is not None:
                    obj["metadata"]["deletionTimestamp"] = format_time(self.now)
            elif isinstance(action, Delete):
                self.children.pop((action.kind, action.name), None)
            elif isinstance(action, Patch):
                obj = self.children.get((action.kind, action.name))
                if obj is not None:
                    obj["spec"].update(action.patch["spec"])
            elif isinstance(action, Apply):
                m = json.loads(json.dumps(action.manifest))
                old = self.children[(m["kind"], m["metadata"]["name"])]
                m["metadata"]["uid"], m["status"] = old["metadata"]["uid"], old.get("status")
                self.children[(m["kind"], m["metadata"]["name"])] = m
        self.status = result.status
        self.history.append(result)
        return result

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self.children

    def complete_job(self, name: str, message: str | None = None, stage: str | None = None) -> None:
        self.children[("Job", name)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        if message is not None:
            self.pods.append(self.job_pod(name, str(stage), {
                "containerStatuses": [{"state": {"terminated": {"message": message}}}]}))

    def job_pod(self, job: str, stage: str, status: dict[str, Any]) -> dict[str, Any]:
        """A pod of one of this Distillation's Jobs, as the pod index projects it."""
        owner = self.children[("Job", job)]["metadata"]["uid"]
        return {"metadata": {"name": f"{job}-0", "labels": {STAGE_LABEL: stage}, "owners": [owner]},
                "status": status}

    def fail_job(self, name: str, reason: str = "BackoffLimitExceeded",
                 message: str = "Job has reached the specified backoff limit") -> None:
        self.children[("Job", name)]["status"] = {"conditions": [{
            "type": "Failed", "status": "True", "reason": reason, "message": message}]}

    def gone(self, kind: str, name: str) -> None:
        """A child deleted in the foreground, once its dependents have ended: it and its pods are gone."""
        uid = self.children.pop((kind, name))["metadata"]["uid"]
        self.pods = [p for p in self.pods if uid not in p["metadata"].get("owners", [])]

    def make_available(self, name: str) -> None:
        d = self.children[("Deployment", name)]
        d["metadata"]["generation"] = 1
        d["status"] = {"observedGeneration": 1, "availableReplicas": d["spec"]["replicas"]}

    def cond(self, type_: str) -> str:
        return next(c.status for c in self.status.conditions if c.type == type_)

    def reason(self, type_: str) -> str:
        return next(c.reason for c in self.status.conditions if c.type == type_)

    def created(self) -> list[str]:
        return [f"{a.manifest['kind']}/{a.manifest['metadata']['name']}" for p in self.history for a in p.actions
                if isinstance(a, Create)]
