"""`distillery demo`: the local control plane, the operator, and a sample Distillation to Succeeded.

Pods are placed on kwok's simulated GPU nodes. With `--workloads local` (the
default) the labeling, training and evaluation pods' programs really run on
this machine through a local kubelet: the labeler prompts a local
OpenAI-compatible teacher (it answers from the dataset's references, standing in
for a vLLM-served model), DeepSpeed fine-tunes a tiny student with LoRA on CPU,
and the evaluator's results land in the Distillation's status. With
`--workloads simulated` kwok only pretends to run them, which shows the
operator's lifecycle in seconds.
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distillery.api import crd
from distillery.api.spec import DistillationSpec
from distillery.cli import status as status_view
from distillery.controller.kube import KubeClient, load_configuration
from distillery.devcluster.cluster import LOCAL_WORKLOADS_DIR, DevCluster
from distillery.devcluster.local_kubelet import LocalKubelet, LocalVolumes

if TYPE_CHECKING:
    from distillery.devcluster.hub_server import HubServer
    from distillery.devcluster.teacher_server import TeacherServer

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


def local_sample(train_rows: int = 24, validation_rows: int = 12) -> dict[str, Any]:
    """The sample, sized for CPU: a tiny student on a claim the local kubelet provides."""
    from distillery.devcluster.tiny import synthetic_nli_rows

    manifest: dict[str, Any] = json.loads(json.dumps(SAMPLE))
    manifest["metadata"]["name"] = "nli-local-demo"
    manifest["spec"]["dataset"] = {"train": {"rows": synthetic_nli_rows(train_rows)},
                                   "validation": {"rows": synthetic_nli_rows(validation_rows, offset=train_rows)}}
    manifest["spec"]["teacher"]["sampling"] = {"maxTokens": 256}
    # A tiny random-init student needs a high learning rate and several epochs to learn the labels.
    manifest["spec"]["student"] = {
        "model": "pvc://models/tiny-student", "gpuType": "H100", "gpusPerNode": 1, "epochs": 8, "batchSize": 4,
        "learningRate": 0.01, "maxSeqLength": 128,
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    }
    return manifest


def models_claim(namespace: str) -> dict[str, Any]:
    """The claim the local sample's student comes from (pvc://models/...), as a user would have one."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": namespace},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}}


GATED_STUDENT = "distillery-test/tiny-student"
"""The tiny student as a gated repo on the local hub (LocalWorkloads with a hub_token)."""


class LocalWorkloads:
    """A local teacher server and the local kubelet, on their own event loop in a thread; with `hub_token`, also a
    local model hub (HF_ENDPOINT) serving the tiny student as GATED_STUDENT, readable only with that token."""

    def __init__(self, manifest: dict[str, Any], kubeconfig: Path, root: Path, hub_token: str | None = None) -> None:
        self.manifest, self.kubeconfig, self.root = manifest, kubeconfig, root
        self.hub_token = hub_token
        self.hub: HubServer | None = None
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.teacher: TeacherServer | None = None
        self.log_dir = root / "pods"

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(120)

    def stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.thread.join(10)

    def stop_teacher(self) -> None:
        """Take the local teacher away: its port refuses connections, as a killed teacher pod's Service does."""
        assert self.teacher is not None
        asyncio.run_coroutine_threadsafe(self.teacher.stop(), self.loop).result(60)

    def start_teacher(self) -> None:
        """Bring the teacher back on the same port, with the request counts it had."""
        assert self.teacher is not None
        asyncio.run_coroutine_threadsafe(self.teacher.start(), self.loop).result(60)

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._run())
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        from distillery.devcluster.hub_server import HubServer
        from distillery.devcluster.teacher_server import TaskAwareResponder, TeacherServer, lookup_from_rows
        from distillery.devcluster.tiny import save_tiny_model
        from distillery.workloads.tasks import get_task

        spec = DistillationSpec.model_validate(self.manifest["spec"])
        pvc_base = self.root / "pvc"
        model_dir = pvc_base / "models" / "tiny-student"
        if not (model_dir / "config.json").exists():
            save_tiny_model(model_dir)
        task = get_task(spec.task, spec.prompt, spec.dataset.columns)
        sources = [s for s in (spec.dataset.train, spec.dataset.validation) if s is not None]
        rows = [row for source in sources for row in source.rows or []]
        log_dir = self.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        lookup = lookup_from_rows(task, rows)
        hub_repo = self.root / "hub" / GATED_STUDENT
        if self.hub_token and not (hub_repo / "config.json").exists():
            save_tiny_model(hub_repo)
        # Several teachers: the first answers right, the others wrong on a quarter of the rows each (different
        # rows), so votes, agreement and disagreements are real.
        others = [TeacherServer(TaskAwareResponder(lookup, wrong_share=0.25, wrong_salt=t.name))
                  for t in (spec.teachers or [])[1:]]
        async with TeacherServer(TaskAwareResponder(lookup)) as teacher, contextlib.AsyncExitStack() as stack, \
                HubServer({GATED_STUDENT: hub_repo}, gated=[GATED_STUDENT], token=self.hub_token) as hub, \
                KubeClient(load_configuration(str(self.kubeconfig))) as client:
            for server in others:
                await stack.enter_async_context(server)
            urls = ({t.name: server.url for t, server in zip(spec.teachers, [teacher, *others], strict=True)}
                    if spec.teachers else {})
            self.teacher, self.hub = teacher, hub
            kubelet = LocalKubelet(client, self.manifest["metadata"].get("namespace", "default"),
                                   LocalVolumes(root=self.root, pvc_base=pvc_base), teacher.url, log_dir, urls,
                                   self.kubeconfig)
            # Hub downloads land here, as on a fresh node, never in this machine's own cache.
            kubelet.pod_env["HF_HOME"] = str(self.root / "hf-home")
            print(f"local teacher at {teacher.url}; stage pods run here, logs in {log_dir}")
            self.ready.set()
            await kubelet.run_forever()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery demo")
    parser.add_argument("--manifest", type=Path, help="a Distillation to apply instead of the built-in sample")
    parser.add_argument("--workloads", choices=("local", "simulated"), default="local",
                        help="run the stage programs here (local) or let kwok pretend (simulated)")
    parser.add_argument("--stage-seconds", default="3s", help="how long each simulated stage pod runs")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--down", action="store_true", help="stop the control plane afterwards")
    args = parser.parse_args(argv)

    cluster = DevCluster("dev")
    kubeconfig = cluster.up()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as crd_file:
        crd_file.write(crd.render())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", crd_file.name)
    cluster.wait_established("distillations.distillery.dev")

    local = args.workloads == "local"
    if args.manifest:
        manifest = yaml.safe_load(args.manifest.read_text())
    else:
        manifest = local_sample() if local else SAMPLE
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace", "default")
    config = Path(tempfile.mkdtemp()) / "operator.yaml"
    # Locally run pods finish when their program does; kwok must not complete them first.
    delay = {"pod-complete.stage.kwok.x-k8s.io/delay": "24h" if local else args.stage_seconds}
    config.write_text(yaml.safe_dump({"pod_annotations": delay}))
    log_path = cluster.dir / "logs" / "operator.log"
    env = os.environ | {"KUBECONFIG": str(kubeconfig), "DISTILLERY_CONFIG": str(config)}
    with open(log_path, "ab") as log:
        operator = subprocess.Popen([sys.executable, "-m", "distillery.cli", "operator", "--metrics-port", "0",
                                     "--liveness", ""], stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"operator running (pid {operator.pid}, log {log_path})")
    workloads = LocalWorkloads(manifest, kubeconfig, cluster.dir / LOCAL_WORKLOADS_DIR) if local else None
    try:
        if workloads:
            workloads.start()
        cluster.kubectl("delete", "distillation", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        if local:
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(models_claim(namespace)))
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        print(f"applied Distillation {namespace}/{name}; watching its status\n")
        return _watch(cluster, name, namespace, args.timeout, operator)
    finally:
        if workloads:
            workloads.stop()
        operator.terminate()
        operator.wait(15)
        if args.down:
            cluster.down()
        else:
            print(f"\nthe control plane keeps running: export KUBECONFIG={kubeconfig}  "
                  "(stop it with `distillery dev-cluster down`)")


def _watch(cluster: DevCluster, name: str, namespace: str, timeout: float, operator: subprocess.Popen[bytes]) -> int:
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
                print(status_view.render(obj))
                return 0 if status["phase"] == "Succeeded" else 1
        time.sleep(1)
    print("timed out waiting for the Distillation", file=sys.stderr)
    return 1
