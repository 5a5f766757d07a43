"""Run stage pods' programs for real on this machine, as a kubelet would.

kwok simulates the nodes, so by itself a Job pod only pretends to run. For the
demo (and the operator-workload contract test), a pod's container is started
here instead: its command, args and env exactly as the pod spec says, its
volumes as local directories, its Services' addresses mapped to local servers.
When the program exits, the pod's status gets its phase, exit code and
termination message, which is what the operator reads.
"""

import asyncio
import base64
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from distillery.api.modelref import PVC_MOUNT_ROOT
from distillery.api.pipeline import (
    CONFIG_FILE,
    JOB_COMPLETION_INDEX_ENV,
    PVC_BASE_ENV,
    TERMINATION_MESSAGE_ENV,
    WORKSPACE_DIR,
    WORKSPACE_ENV,
    PipelineConfig,
    TeacherClientConfig,
)
from distillery.api.status import format_time
from distillery.controller.kube import ApiError, KubeClient
from distillery.devcluster.ports import free_port
from distillery.resources.common import PARENT_LABEL, STAGE_LABEL

EXECUTABLES = {
    "distillery": [sys.executable, "-m", "distillery.cli"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def resolve_env(container: dict[str, Any], namespace: str, completion_index: str = "0",
                secrets: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            resolved[item["name"]] = expand(item["value"], resolved)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            resolved[item["name"]] = namespace if path == "metadata.namespace" else completion_index
        elif "secretKeyRef" in source and secrets is not None:
            ref = source["secretKeyRef"]
            if (ref["name"], ref["key"]) in secrets:
                resolved[item["name"]] = secrets[(ref["name"], ref["key"])]
    return resolved


VLLM_FLAGS_WITH_VALUE = {"--served-model-name", "--max-logprobs", "--chat-template"}
"""The flags of `vllm serve` that `distillery serve` takes with the same meaning; the others (the placement ones:
tensor parallelism, host, port; and a user's extraArgs tuning vLLM's GPU engine) have no CPU counterpart."""


def vllm_as_local_serve(args: list[str]) -> list[str]:
    """A `vllm serve` container's args as `distillery serve`'s: the same model, served name and logprobs bound,
    a LoRA module as the adapter merged at load under its name, on a port of its own (the Service's port is
    this machine's to route, see LocalKubelet.served)."""
    out = ["distillery", "serve", "--model", args[0], "--port", "0"]
    rest = iter(args[1:])
    for flag in rest:
        name, _, value = flag.partition("=")
        if name in VLLM_FLAGS_WITH_VALUE:
            out += [name, value or next(rest)]
        elif name == "--lora-modules":
            served, _, adapter = (value or next(rest)).partition("=")
            out += ["--served-model-name", served, "--adapter", adapter]
    return out


def local_argv(container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
    """The container's command and args here: executables by module, mounted paths remapped. A vLLM container
    (the image's entrypoint is `vllm serve`) runs as `distillery serve` on CPU."""
    argv = [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]
    if not container.get("command"):
        argv = vllm_as_local_serve(argv)
    out = [*EXECUTABLES[argv[0]]]
    for arg in argv[1:]:
        for mount, local in mounts.items():
            if arg.startswith(mount + "/"):
                arg = str(local) + arg[len(mount):]
        out.append(arg)
    return out


@dataclass
class LocalVolumes:
    """Where a pod's volumes live on this machine."""

    root: Path
    pvc_base: Path
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    claim_uids: dict[str, str] = field(default_factory=dict)
    """A claim's uid picks its directory, so a new claim with an old name starts empty, as a new volume does."""

    def mounts(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                target = self.root / "configmaps" / name
                target.mkdir(parents=True, exist_ok=True)
                for key, value in self.configmaps.get(name, {}).items():
                    (target / key).write_text(value)
                out[mount["mountPath"]] = target
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                uid = self.claim_uids.get(claim)
                own = self.root / "claims" / (f"{claim}-{uid}" if uid else claim)
                if mount["mountPath"].startswith(PVC_MOUNT_ROOT + "/"):
                    # Programs find pvc:// claims under pvc_base. One volume per claim wherever it is mounted:
                    # a workspace another Distillation reads through pvc:// (dataset.labelsFrom) is the
                    # directory its own pods wrote.
                    path = self.pvc_base / claim
                    if own.is_dir() and not (path.is_symlink() and path.readlink() == own):
                        if path.is_symlink():
                            path.unlink()  # a claim of the same name that was deleted
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.symlink_to(own, target_is_directory=True)
                    out[mount["mountPath"]] = path
                else:
                    out[mount["mountPath"]] = own
                out[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
        return out


async def run_container(pod: dict[str, Any], volumes: LocalVolumes, extra_env: dict[str, str],
                        log_path: Path, cwd: Path | None = None, master_port: int | None = None,
                        on_start: Callable[[asyncio.subprocess.Process], None] | None = None,
                        secrets: dict[tuple[str, str], str] | None = None) -> tuple[int, str]:
    """Run the pod's first container to completion; returns (exit code, termination message).

    `master_port`: the rendezvous port of the pod's Job (its pods share it); `on_start` gets the process, so that
    it can be signalled as a kubelet would."""
    spec, meta = pod["spec"], pod["metadata"]
    container = spec["containers"][0]
    index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0")
    env = resolve_env(container, meta.get("namespace", "default"), index, secrets)
    if "MASTER_ADDR" in env:
        # Pod 0's name behind the headless Service is this machine; its port may be taken here.
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(master_port or free_port())
    mounts = volumes.mounts(spec, container)
    workspace = next((p for m, p in mounts.items() if m == WORKSPACE_DIR), None)
    termination = log_path.with_suffix(".termination")
    termination.unlink(missing_ok=True)
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "KUBECONFIG")}
    # The pod runs the code of the process that hosts this kubelet, wherever the venv points.
    package_root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    child_env |= env | extra_env | {
        JOB_COMPLETION_INDEX_ENV: index,
        TERMINATION_MESSAGE_ENV: str(termination),
        PVC_BASE_ENV: str(volumes.pvc_base),
        "DS_ACCELERATOR": "cpu",
    }
    if workspace is not None:
        child_env[WORKSPACE_ENV] = str(workspace)
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(*local_argv(container, env, mounts), env=child_env, cwd=cwd,
                                                    stdout=log, stderr=asyncio.subprocess.STDOUT)
        if on_start is not None:
            on_start(proc)
        code = await proc.wait()
    message = termination.read_text() if termination.exists() else ""
    if not message and code:
        message = log_path.read_text(errors="replace")[-1500:]
    return code, message


def reroute_teacher(configmaps: dict[str, dict[str, str]], teacher_url: str | None,
                    teacher_urls: Mapping[str, str] | None = None, served: Mapping[str, str] | None = None) -> None:
    """Point pipeline configs at local teachers, as kube-proxy would route the teacher Services: a Service whose
    pod runs here (`served`, by Service name) at that pod's server; otherwise with several teachers each in-cluster
    one (and a judge that is one of them) at its own server by name, else at `teacher_url`."""
    for data in configmaps.values():
        if CONFIG_FILE in data:
            cfg = PipelineConfig.model_validate_json(data[CONFIG_FILE])
            for client in in_cluster_clients(cfg):
                url = (served or {}).get(service_host(client.base_url)) or (teacher_urls or {}).get(
                    str(client.name), teacher_url)
                if url is not None:
                    client.base_url = url
            data[CONFIG_FILE] = cfg.to_json()


def in_cluster_clients(cfg: PipelineConfig) -> list[TeacherClientConfig]:
    """The config's teacher clients (and a strategy judge) that call a Service of this cluster."""
    clients = [cfg.teacher, *(cfg.teachers or []), *([cfg.strategy_judge] if cfg.strategy_judge else [])]
    return [client for client in clients if ".svc:" in client.base_url]


def service_host(url: str) -> str:
    """The Service name of an in-cluster URL (http://NAME.NAMESPACE.svc:PORT/...)."""
    return url.split("//", 1)[-1].split(".", 1)[0]


def services_asked(configmaps: dict[str, dict[str, str]]) -> set[str]:
    """The in-cluster Services the pipeline configs send requests to."""
    return {service_host(client.base_url) for data in configmaps.values() if CONFIG_FILE in data
            for client in in_cluster_clients(PipelineConfig.model_validate_json(data[CONFIG_FILE]))}


def service_of(pod: dict[str, Any]) -> str:
    """The Deployment (and so the Service) a server pod belongs to: its ReplicaSet's name less the hash."""
    refs = pod["metadata"].get("ownerReferences") or []
    replica_set = next((r["name"] for r in refs if r.get("kind") == "ReplicaSet"), pod["metadata"]["name"])
    return str(replica_set.rsplit("-", 1)[0])


SERVING_AT = re.compile(r"^serving .* on (http://\S+)$", re.MULTILINE)
"""The line `distillery serve` prints once it listens."""


class LocalKubelet:
    """Watches a namespace's stage pods that kwok has started and runs them here, each as it starts.

    Like a kubelet, it ends a pod's processes when the pod is deleted (SIGTERM, SIGKILL after the grace
    period, at most KILL_AFTER_S here), and a pod whose node is deleted freezes (SIGSTOP): a vanished
    machine's processes neither exit nor answer, so its peers block as they would on a lost node."""

    STAGES = ("generation", "labeling", "training", "evaluation")
    SERVERS = ("teacher", "serving")
    """With `run_servers`: the teacher's and the student's Deployment pods, their vLLM container as
    `distillery serve`."""
    KILL_AFTER_S = 20.0

    def __init__(self, client: KubeClient, namespace: str, volumes: LocalVolumes, teacher_url: str | None,
                 log_dir: Path, teacher_urls: Mapping[str, str] | None = None,
                 kubeconfig: Path | None = None, run_servers: bool = False) -> None:
        self.client = client
        self.pod_env = {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}
        """A pod's credentials for its progress reports (in a cluster, its ServiceAccount's token)."""
        self.namespace = namespace
        self.volumes = volumes
        self.teacher_url = teacher_url
        self.teacher_urls = dict(teacher_urls or {})
        """Several teachers: each one's local server by name."""
        self.log_dir = log_dir
        self.done: set[str] = set()
        self.processes: dict[str, tuple[dict[str, Any], asyncio.subprocess.Process]] = {}
        self.frozen: set[str] = set()
        self.ending: set[str] = set()
        self.ports: dict[str, int] = {}
        """Rendezvous port per Job UID: the pods of one training Job meet there."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.run_servers = run_servers
        self.served: dict[str, str] = {}
        """Service name -> base URL (with /v1) of the server pod of it that runs here and listens."""
        self.ended: set[str] = set()
        """Services whose server pod here has exited: they route nowhere (a pod asking them finds it out)."""

    async def run_forever(self, poll: float = 0.5) -> None:
        while True:
            await self.step()
            await asyncio.sleep(poll)

    async def step(self) -> None:
        pods = await self.client.list("Pod", self.namespace, label_selector=PARENT_LABEL)
        live = {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}
        if self.processes:
            nodes = {n["metadata"]["name"] for n in await self.client.list("Node")}
            for name, (pod, proc) in list(self.processes.items()):
                if name in self.frozen and any(other not in self.frozen and _job_of(other_pod) == _job_of(pod)
                                               for other, (other_pod, _) in self.processes.items()):
                    # A lost machine's processes vanish without closing their connections: its peers keep
                    # waiting. Ended here only once no peer of its Job runs, so no peer sees them close.
                    continue
                if name not in live and name not in self.ending:
                    self.ending.add(name)
                    grace = min(float(pod["spec"].get("terminationGracePeriodSeconds", 30)), self.KILL_AFTER_S)
                    task = asyncio.create_task(self.end(proc, 0 if name in self.frozen else grace))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif pod["spec"].get("nodeName") not in nodes and name not in self.frozen:
                    self.frozen.add(name)
                    _signal(_tree(proc), signal.SIGSTOP)
        for name, pod in live.items():
            stage = pod["metadata"]["labels"].get(STAGE_LABEL)
            server = self.run_servers and stage in self.SERVERS
            if (stage not in self.STAGES and not server) or name in self.done \
                    or (pod.get("status") or {}).get("phase") != "Running":
                continue
            self.done.add(name)
            if server:
                self.ended.discard(service_of(pod))  # a new pod of a Service whose earlier one has gone
            task = asyncio.create_task(self.run_server(pod) if server else self.run_pod(pod))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def kill_all(self) -> None:
        """Every process still running here (the teacher's server runs until it is killed), as a node going away
        takes its pods' processes."""
        for _, proc in self.processes.values():
            _signal(_tree(proc), signal.SIGKILL)

    @staticmethod
    async def end(proc: asyncio.subprocess.Process, grace: float) -> None:
        """A deleted pod's processes: SIGTERM, then SIGKILL once the grace period is over."""
        tree = _tree(proc)
        if grace:
            _signal(tree, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        _signal(tree, signal.SIGKILL)

    async def run_server(self, pod: dict[str, Any]) -> None:
        """A server pod (the teacher's vLLM) runs here until its pod is deleted; once it prints where it listens,
        its Service routes there. A server that exits is a crashed pod: its Service routes nowhere."""
        service, name = service_of(pod), pod["metadata"]["name"]
        log = self.log_dir / f"{name}.log"

        async def listening() -> None:
            while True:
                found = SERVING_AT.search(log.read_text(errors="replace")) if log.exists() else None
                if found:
                    self.served[service] = found.group(1) + "/v1"
                    return
                await asyncio.sleep(0.2)

        watch = asyncio.create_task(listening())
        try:
            await self.run_pod(pod)
        finally:
            watch.cancel()
            self.served.pop(service, None)
            self.ended.add(service)

    async def run_pod(self, pod: dict[str, Any]) -> None:
        for volume in pod["spec"].get("volumes", []):
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                cm = await self.client.get("ConfigMap", name, self.namespace)
                self.volumes.configmaps[name] = dict((cm or {}).get("data") or {})
            elif "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                claim = await self.client.get("PersistentVolumeClaim", name, self.namespace)
                if claim:
                    self.volumes.claim_uids[name] = claim["metadata"]["uid"]
        if self.run_servers and pod["metadata"]["labels"].get(STAGE_LABEL) not in self.SERVERS:
            # A pod that asks the teacher starts once the teacher's server here listens (or has exited): its
            # config is written once, with the address the Service has then.
            while services_asked(self.volumes.configmaps) - set(self.served) - self.ended:
                await asyncio.sleep(0.2)
        if self.teacher_url or self.served:
            reroute_teacher(self.volumes.configmaps, self.teacher_url, self.teacher_urls, self.served)
        secrets: dict[tuple[str, str], str] = {}
        for item in pod["spec"]["containers"][0].get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            secret = await self.client.get("Secret", ref["name"], self.namespace) if ref else None
            if ref and secret and ref["key"] in (secret.get("data") or {}):
                secrets[(ref["name"], ref["key"])] = base64.b64decode(secret["data"][ref["key"]]).decode()
        name = pod["metadata"]["name"]
        port = self.ports.setdefault(_job_of(pod), free_port())
        code, message = await run_container(pod, self.volumes, self.pod_env, self.log_dir / f"{name}.log",
                                            master_port=port,
                                            on_start=lambda proc: self.processes.__setitem__(name, (pod, proc)),
                                            secrets=secrets)
        self.processes.pop(name, None)
        if name not in self.ending:
            await self.finish(pod, code, message)

    async def finish(self, pod: dict[str, Any], code: int, message: str) -> None:
        now = format_time(datetime.now(UTC))
        container = pod["spec"]["containers"][0]
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "ready": False, "restartCount": 0,
                "started": False,
                "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                         "message": message[-4000:], "startedAt": now, "finishedAt": now}},
            }],
        }
        try:
            await self.client.merge_patch("Pod", pod["metadata"]["name"], self.namespace, {"status": status},
                                          subresource="status")
        except ApiError as e:
            print(f"local kubelet: could not report {pod['metadata']['name']}: {e}", file=sys.stderr)



def _tree(proc: asyncio.subprocess.Process) -> list[psutil.Process]:
    """The process and every process under it: torchrun starts each worker in a session of its own, so its
    process group would miss them. Taken before signalling: workers outlive a killed parent, reparented."""
    try:
        root = psutil.Process(proc.pid)
        return [*root.children(recursive=True), root]
    except psutil.Error:
        return []


def _signal(tree: list[psutil.Process], sig: signal.Signals) -> None:
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)


def _job_of(pod: dict[str, Any]) -> str:
    """The UID of the Job that owns the pod (its own name for a pod without one)."""
    refs = pod["metadata"].get("ownerReferences") or []
    return str(next((r["uid"] for r in refs if r.get("kind") == "Job"), pod["metadata"]["name"]))
