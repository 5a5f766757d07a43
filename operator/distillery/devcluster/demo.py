"""`distillery demo`: the local control plane, the operator, and a sample Distillation to Succeeded.

Pods are placed on kwok's simulated GPU nodes. With `--workloads local` (the default) the teacher's, labeling,
training and evaluation pods' programs really run on this machine through a local kubelet, on CPU: with
`--models real` (the default) the teacher pod serves a pretrained model with llama.cpp, the labeler prompts it with
chain-of-thought over real GSM8K rows, DeepSpeed fine-tunes a pretrained student with LoRA, and the evaluator's
real results land in the Distillation's status (devcluster/real_sample.py). `--models tiny` runs a random tiny
student against the fault-injection teacher double, which answers from the rows' references (so its scores say
nothing about distillation). With `--workloads simulated` kwok only pretends to run the pods, which shows the
operator's lifecycle in seconds.
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distillery.api import crd
from distillery.api.spec import DistillationSpec
from distillery.cli import status as status_view
from distillery.controller.kube import KubeClient, load_configuration
from distillery.devcluster.cluster import LOCAL_WORKLOADS_DIR, DevCluster
from distillery.devcluster.local_kubelet import LocalKubelet, LocalVolumes
from distillery.devcluster.real_sample import real_sample

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
    """The local kubelet on its own event loop in a thread, with the teacher either a pod it runs (`real_models`:
    the teacher Deployment's vLLM container as `distillery serve` on the real model, which `dev-cluster models`
    installs) or, by default, the fault-injection teacher double (`teacher_server.py`, answering from the rows'
    references); with `hub_token`, also a local model hub (HF_ENDPOINT) serving the tiny student as
    GATED_STUDENT, readable only with that token."""

    def __init__(self, manifest: dict[str, Any], kubeconfig: Path, root: Path, hub_token: str | None = None,
                 real_models: bool = False) -> None:
        self.manifest, self.kubeconfig, self.root = manifest, kubeconfig, root
        self.hub_token = hub_token
        self.real_models = real_models
        self.hub: HubServer | None = None
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.teacher: TeacherServer | None = None
        self.kubelet: LocalKubelet | None = None
        self.log_dir = root / "pods"

    def start(self) -> None:
        """Returns once the kubelet runs (with real models, after their install: minutes on a cold cache)."""
        self.thread.start()
        while not self.ready.wait(1):
            if not self.thread.is_alive():
                raise RuntimeError("the local workloads did not start (see the error above)")

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
        if self.real_models:
            from distillery.devcluster import models, real_sample

            await asyncio.to_thread(models.install, [real_sample.TEACHER_MODEL, real_sample.STUDENT_MODEL],
                                    pvc_base)
        elif not (pvc_base / "models" / "tiny-student" / "config.json").exists():
            save_tiny_model(pvc_base / "models" / "tiny-student")
        task = get_task(spec.task, spec.prompt, spec.dataset.columns)
        sources = [s for s in (spec.dataset.train, spec.dataset.validation) if s is not None]
        rows = [row for source in sources for row in source.rows or []]
        log_dir = self.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        hub_repo = self.root / "hub" / GATED_STUDENT
        if self.hub_token and not (hub_repo / "config.json").exists():
            save_tiny_model(hub_repo)
        async with contextlib.AsyncExitStack() as stack:
            teacher_url, urls = None, {}
            if not self.real_models:
                lookup = lookup_from_rows(task, rows)
                # Several teachers: the first answers right, the others wrong on a quarter of the rows each
                # (different rows), so votes, agreement and disagreements are real.
                teachers = [TeacherServer(TaskAwareResponder(lookup)), *(
                    TeacherServer(TaskAwareResponder(lookup, wrong_share=0.25, wrong_salt=t.name))
                    for t in (spec.teachers or [])[1:])]
                for server in teachers:
                    await stack.enter_async_context(server)
                self.teacher, teacher_url = teachers[0], teachers[0].url
                urls = ({t.name: server.url for t, server in zip(spec.teachers, teachers, strict=True)}
                        if spec.teachers else {})
            self.hub = await stack.enter_async_context(
                HubServer({GATED_STUDENT: hub_repo}, gated=[GATED_STUDENT], token=self.hub_token))
            client = await stack.enter_async_context(KubeClient(load_configuration(str(self.kubeconfig))))
            kubelet = LocalKubelet(client, self.manifest["metadata"].get("namespace", "default"),
                                   LocalVolumes(root=self.root, pvc_base=pvc_base), teacher_url, log_dir, urls,
                                   self.kubeconfig, run_servers=self.real_models)
            self.kubelet = kubelet
            # Hub downloads land here, as on a fresh node, never in this machine's own cache.
            kubelet.pod_env["HF_HOME"] = str(self.root / "hf-home")
            where = f"local teacher at {teacher_url}" if teacher_url else "the teacher pod runs here (llama.cpp)"
            print(f"{where}; stage pods run here, logs in {log_dir}")
            self.ready.set()
            try:
                await kubelet.run_forever()
            finally:
                kubelet.kill_all()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery demo")
    parser.add_argument("--manifest", type=Path, help="a Distillation to apply instead of the built-in sample")
    parser.add_argument("--workloads", choices=("local", "simulated"), default="local",
                        help="run the stage programs here (local) or let kwok pretend (simulated)")
    parser.add_argument("--models", choices=("real", "tiny"), default="real",
                        help="real: a pretrained teacher and student on GSM8K rows (devcluster/real_sample.py); "
                             "tiny: a random tiny student and the stand-in teacher that answers from the references")
    parser.add_argument("--stage-seconds", default="3s", help="how long each simulated stage pod runs")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--down", action="store_true", help="stop the control plane afterwards")
    args = parser.parse_args(argv)
    # Stopped with SIGTERM as with Ctrl-C: the cleanup below ends the pods' processes (the teacher's server
    # would otherwise keep the CPUs busy after the demo is gone).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

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
        manifest = (real_sample() if args.models == "real" else local_sample()) if local else SAMPLE
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
    workloads = LocalWorkloads(manifest, kubeconfig, cluster.dir / LOCAL_WORKLOADS_DIR,
                               real_models=args.models == "real" and not args.manifest) if local else None
    try:
        if workloads:
            workloads.start()
        cluster.kubectl("delete", "distillation", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        if local:
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(models_claim(namespace)))
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        print(f"applied Distillation {namespace}/{name}; watching its status\n")
        code = _watch(cluster, name, namespace, args.timeout, operator)
        if code == 0 and workloads is not None and workloads.real_models:
            ask_the_served_student(cluster, workloads, manifest)
        return code
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


def ask_the_served_student(cluster: DevCluster, workloads: LocalWorkloads, manifest: dict[str, Any]) -> None:
    """The request a user would send to the finished student: its Service's pod runs here, so the URL is
    this machine's (in a cluster: `kubectl port-forward svc/<name>-student 8000`)."""
    from distillery.devcluster.local_kubelet import service_host
    from distillery.resources.student import SERVED_NAME
    from distillery.workloads.tasks import get_task

    meta = manifest["metadata"]
    got = cluster.kubectl("get", "distillation", meta["name"], "-n", meta.get("namespace", "default"), "-o", "json")
    endpoint = (json.loads(got.stdout).get("status") or {}).get("studentEndpoint")
    if not endpoint or workloads.kubelet is None:
        print("the student is not served (serving disabled?)")
        return
    service = service_host(endpoint)
    deadline = time.monotonic() + 300
    while (url := workloads.kubelet.served.get(service)) is None:
        if time.monotonic() > deadline or service in workloads.kubelet.ended:
            print(f"the student's server did not start; see {workloads.log_dir}")
            return
        time.sleep(0.5)
    spec = DistillationSpec.model_validate(manifest["spec"])
    task = get_task(spec.task, spec.prompt, spec.dataset.columns)
    question = {"question": "A baker makes 24 muffins and sells 3 boxes of 6 muffins each. "
                            "How many muffins are left?"}
    body = {"model": SERVED_NAME, "messages": task.student_messages(question), "max_tokens": 256,
            "temperature": 0}
    print(f"\nThe distilled student answers (its Service {endpoint} runs here at {url}):\n"
          f"  curl -s {url}/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            reply = json.loads(response.read())
    except OSError as err:
        print(f"  the request failed: {err}")
        return
    choice = reply["choices"][0]
    print(f"  -> ({choice['finish_reason']}, {reply['usage']['completion_tokens']} tokens)\n"
          + "\n".join(f"     {line}" for line in choice["message"]["content"].splitlines()))
    print(f"  parsed answer: {task.prediction(choice['message']['content'], question) or '(none)'}; expected 6")


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
