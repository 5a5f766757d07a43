"""`distillery demo`: the local control plane, the operator, and a sample Distillation to Succeeded.

Stage pods run on kwok's simulated GPU nodes, so the demo shows the operator's
whole lifecycle (scheduling on the region's GPU pools, stage order, teacher
removal, status and events) in about a minute without a GPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from distillery.api.crd import render
from distillery.devcluster.cluster import DevCluster
from distillery.status_view import render

SAMPLE = {
    "apiVersion": "distillery.dev/v1alpha1",
    "kind": "Distillation",
    "metadata": {"name": "conjnli-demo", "namespace": "default"},
    "spec": {
        "task": "nli",
        "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpuType": "H100", "gpus": 8,
                    "tensorParallelSize": 8},
        "dataset": {"train": {"rows": [
            {"premise": "Not all birds can fly, but sparrows can.", "hypothesis": "Sparrows can fly.",
             "label": "entailment"},
            {"premise": "The shop opens at nine unless it is a holiday.", "hypothesis": "The shop never opens.",
             "label": "contradiction"},
            {"premise": "Either Ana or Ben will present, and Ben is sick.", "hypothesis": "Ana is tired.",
             "label": "neutral"},
        ]}},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpuType": "H100", "nodes": 2, "gpusPerNode": 8},
        "serving": {"gpuType": "H100", "gpus": 1},
    },
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery demo")
    parser.add_argument("--manifest", type=Path, help="a Distillation to apply instead of the built-in sample")
    parser.add_argument("--stage-seconds", default="3s", help="how long each simulated stage pod runs")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--down", action="store_true", help="stop the control plane afterwards")
    args = parser.parse_args(argv)

    cluster = DevCluster("dev")
    kubeconfig = cluster.up()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as crd_file:
        crd_file.write(render())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", crd_file.name)
    cluster.kubectl("wait", "--for=condition=Established", "crd/distillations.distillery.dev", "--timeout=60s")

    manifest = yaml.safe_load(args.manifest.read_text()) if args.manifest else SAMPLE
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace", "default")
    config = Path(tempfile.mkdtemp()) / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": args.stage_seconds}}))
    log_path = cluster.dir / "logs" / "operator.log"
    env = os.environ | {"KUBECONFIG": str(kubeconfig), "DISTILLERY_CONFIG": str(config)}
    with open(log_path, "ab") as log:
        operator = subprocess.Popen([sys.executable, "-m", "distillery.cli", "operator", "--metrics-port", "0",
                                     "--liveness", ""], stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"operator running (pid {operator.pid}, log {log_path})")
    try:
        cluster.kubectl("delete", "distillation", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        print(f"applied Distillation {namespace}/{name}; watching its status\n")
        return _watch(cluster, name, namespace, args.timeout, operator)
    finally:
        operator.terminate()
        operator.wait(15)
        if args.down:
            cluster.down()
        else:
            print(f"\nthe control plane keeps running: export KUBECONFIG={kubeconfig}  "
                  "(stop it with `distillery dev-cluster down`)")


def _watch(cluster: DevCluster, name: str, namespace: str, timeout: float, operator: subprocess.Popen) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            print(f"operator exited with {operator.returncode}", file=sys.stderr)
            return 1
        got = cluster.kubectl("get", "distillation", name, "-n", namespace, "-o", "json", check=False)
        if got.returncode == 0:
            obj = json.loads(got.stdout)
            status = obj.get("status") or {}
            line = f"{status.get('phase', 'Pending'):<16} {status.get('progressSummary', '')}"
            if line != last:
                print(f"{time.strftime('%H:%M:%S')}  {line}")
                last = line
            if status.get("phase") in ("Succeeded", "Failed"):
                print()
                print(cluster.kubectl("get", "distillation", name, "-n", namespace).stdout)
                print(render(obj))
                return 0 if status["phase"] == "Succeeded" else 1
        time.sleep(1)
    print("timed out waiting for the Distillation", file=sys.stderr)
    return 1
