"""Run stage pods' programs for real on this machine, as a kubelet would.

kwok simulates the nodes, so by itself a Job pod only pretends to run. For the
demo (and the operator-workload contract test), a pod's container is started
here instead: its command, args and env exactly as the pod spec says, its
volumes as local directories, its Services' addresses mapped to local servers.
When the program exits, the pod's status gets its phase, exit code and
termination message, which is what the operator reads.
"""

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillery.api.modelref import PVC_MOUNT_ROOT
from distillery.api.pipeline import (
    CONFIG_FILE,
    JOB_COMPLETION_INDEX_ENV,
    PVC_BASE_ENV,
    TERMINATION_MESSAGE_ENV,
    WORKSPACE_DIR,
    WORKSPACE_ENV,
    PipelineConfig,
)
from distillery.api.status import format_time
from distillery.controller.kube import ApiError, KubeClient
from distillery.resources.common import PARENT_LABEL, STAGE_LABEL
from distillery.workloads.environment import free_port

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
            resolved[item["name"]] = secrets[(ref["name"], ref["key"])]
    return resolved


def local_argv(container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
    """The container's command and args here: executables by module, mounted paths remapped."""
    argv = [expand(a, env) for a in [*container["command"], *container.get("args", [])]]
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
                        log_path: Path, cwd: Path | None = None) -> tuple[int, str]:
    """Run the pod's first container to completion; returns (exit code, termination message)."""
    spec, meta = pod["spec"], pod["metadata"]
    container = spec["containers"][0]
    index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0")
    env = resolve_env(container, meta.get("namespace", "default"), index)
    if "MASTER_ADDR" in env:
        # Pod 0's name behind the headless Service is this machine in a one-node run; its port may be taken here.
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(free_port())
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
        code = await proc.wait()
    message = termination.read_text() if termination.exists() else ""
    if not message and code:
        message = log_path.read_text(errors="replace")[-1500:]
    return code, message


def reroute_teacher(configmaps: dict[str, dict[str, str]], teacher_url: str,
                    teacher_urls: Mapping[str, str] | None = None) -> None:
    """Point pipeline configs at a local teacher, as kube-proxy would route the teacher Service; with several
    teachers, each in-cluster one (and a judge that is one of them) at its own server, by name."""
    for data in configmaps.values():
        if CONFIG_FILE in data:
            cfg = PipelineConfig.model_validate_json(data[CONFIG_FILE])
            for client in [cfg.teacher, *(cfg.teachers or []), *([cfg.strategy_judge] if cfg.strategy_judge else [])]:
                if ".svc:" in client.base_url:
                    client.base_url = (teacher_urls or {}).get(str(client.name), teacher_url)
            data[CONFIG_FILE] = cfg.to_json()


class LocalKubelet:
    """Watches a namespace's stage pods that kwok has started and runs them here, one at a time."""

    STAGES = ("generation", "labeling", "training", "evaluation")

    def __init__(self, client: KubeClient, namespace: str, volumes: LocalVolumes, teacher_url: str | None,
                 log_dir: Path, teacher_urls: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.volumes = volumes
        self.teacher_url = teacher_url
        self.teacher_urls = dict(teacher_urls or {})
        """Several teachers: each one's local server by name."""
        self.log_dir = log_dir
        self.done: set[str] = set()

    async def run_forever(self, poll: float = 0.5) -> None:
        while True:
            await self.step()
            await asyncio.sleep(poll)

    async def step(self) -> None:
        pods = await self.client.list("Pod", self.namespace, label_selector=PARENT_LABEL)
        for pod in pods:
            name = pod["metadata"]["name"]
            stage = pod["metadata"]["labels"].get(STAGE_LABEL)
            if stage not in self.STAGES or name in self.done or (pod.get("status") or {}).get("phase") != "Running":
                continue
            self.done.add(name)
            await self.run_pod(pod)

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
        if self.teacher_url:
            reroute_teacher(self.volumes.configmaps, self.teacher_url, self.teacher_urls)
        name = pod["metadata"]["name"]
        code, message = await run_container(pod, self.volumes, {}, self.log_dir / f"{name}.log")
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

