"""The whole pipeline with real models: the teacher Deployment's pod serves Qwen2.5-Coder-0.5B-Instruct under
llama.cpp, the labeler asks it for chain-of-thought on real GSM8K rows, DeepSpeed fine-tunes SmolLM2-135M-Instruct
with LoRA, the evaluator scores all three, and the student Deployment's pod serves the adapter and answers.

A handful of rows, so it says nothing about quality (tests/bench/bench_quality.py does); it shows that real
output flows through every stage. The first run installs both models (`distillery dev-cluster models`)."""

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.demo import LocalWorkloads, models_claim
from distillery.devcluster.local_kubelet import service_host
from distillery.devcluster.real_sample import real_sample
from distillery.resources.student import SERVED_NAME
from distillery.workloads.labels import read_labels
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.workload]

TRAIN_ROWS, VALIDATION_ROWS = 4, 3
MAX_TOKENS = 384
"""The teacher's chain-of-thought on these 7 rows is 141-326 tokens; the evaluator's reasoning passes generate up to
this many, so it bounds the test's CPU time: 4 min here alone (beside another real-model run it outgrew pytest's
900 s)."""


def test_real_models_label_train_evaluate_and_serve(kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "24h"}}))
    operator = OperatorProcess(kube.kubeconfig, tmp_path, config)
    manifest = real_sample(train_rows=TRAIN_ROWS, validation_rows=VALIDATION_ROWS, max_tokens=MAX_TOKENS)
    manifest["metadata"] |= {"name": "real", "namespace": namespace}
    manifest["spec"]["student"]["epochs"] = 1
    workloads = LocalWorkloads(manifest, kube.kubeconfig, tmp_path / "local", real_models=True)
    operator.start()
    try:
        workloads.start()
        kube.apply(models_claim(namespace), manifest, namespace=namespace)
        dist: dict[str, Any] = kube.wait_for(
            lambda: ((d := kube.get("distillation", "real", namespace)).get("status") or {}).get("phase")
            in ("Succeeded", "Failed") and d, 840, interval=2, what="a finished pipeline")
        status = dist["status"]
        assert status["phase"] == "Succeeded", status
        progress = status["progress"]
        assert progress["rowsLabeled"] + progress.get("rowsRejected", 0) == TRAIN_ROWS + VALIDATION_ROWS
        assert progress["rowsLabeled"] >= TRAIN_ROWS
        assert progress["trainStep"] == progress["trainSteps"] > 0
        results = {r["model"]: r for r in status["results"]}
        assert set(results) == {"teacher", "base-student", "distilled-student"}
        assert all(r["rows"] == VALIDATION_ROWS for r in results.values()), results

        # The labels are the real teacher's chain-of-thought, not the references.
        [workspace] = (tmp_path / "local" / "claims").glob("real-workspace-*")
        labels = [r for r in read_labels(workspace / "labels", "train") if r.status == "ok"]
        assert labels and all(len(r.rationale) > 50 for r in labels)

        # The served student: its Deployment's pod runs here; the Service routes to it.
        assert workloads.kubelet is not None
        service = service_host(status["studentEndpoint"])
        url = kube.wait_for(lambda: workloads.kubelet.served.get(service), 300, what="the student's server")
        body = {"model": SERVED_NAME, "max_tokens": 32, "temperature": 0,
                "messages": [{"role": "user", "content": "Problem: What is 7 + 5?\n\nGive the final numeric answer."}]}
        request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            reply = json.loads(response.read())
        assert reply["model"] == SERVED_NAME and reply["choices"][0]["message"]["content"].strip()
        assert 0 < reply["usage"]["completion_tokens"] <= 32
    finally:
        workloads.stop()
        operator.stop()
