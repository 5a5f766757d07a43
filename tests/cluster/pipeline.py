"""One Distillation run end to end on the test cluster: the operator and the local workloads for it."""

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from distillery.devcluster.demo import LocalWorkloads, models_claim
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess


class Pipeline:
    """The operator and the local workloads for one Distillation in `namespace`."""

    def __init__(self, kube: Kube, namespace: str, tmp_path: Path, manifest: dict[str, Any],
                 hub_token: str | None = None) -> None:
        self.kube, self.namespace, self.manifest = kube, namespace, manifest
        self.name = manifest["metadata"]["name"]
        manifest["metadata"]["namespace"] = namespace
        self.config = tmp_path / "operator.yaml"
        self.operator = OperatorProcess(kube.kubeconfig, tmp_path, self.config)
        self.workloads = LocalWorkloads(manifest, kube.kubeconfig, tmp_path / "local", hub_token)

    def start(self) -> None:
        self.workloads.start()
        # Pods finish when their program does; kwok must not complete them first.
        config: dict[str, Any] = {"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "24h"},
                                  "resync_seconds": 10}
        if self.workloads.hub_token and self.workloads.hub is not None:
            config["hub_endpoint"] = self.workloads.hub.url
        self.config.write_text(yaml.safe_dump(config))
        self.operator.start()

    def apply(self) -> None:
        self.kube.apply(models_claim(self.namespace), self.manifest, namespace=self.namespace)

    def stop(self) -> None:
        self.workloads.stop()
        self.operator.stop()

    def get(self) -> dict[str, Any]:
        return self.kube.get("distillation", self.name, self.namespace) or {}

    def finished(self, timeout: float = 900) -> dict[str, Any]:
        dist: dict[str, Any] = self.kube.wait_for(
            lambda: (d := self.get()).get("status", {}).get("phase") in ("Succeeded", "Failed") and d,
            timeout, interval=2, what="a finished pipeline")
        return dist

    def teacher(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The local teacher's admin endpoints (/admin/stats, /admin/faults)."""
        assert self.workloads.teacher is not None
        base = self.workloads.teacher.url.removesuffix("/v1")
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer
