"""The contract between the operator and the workloads.

Each stage runs with exactly the command, args, env and mounted pipeline config
that the operator's builders put in its pod. Only what a kubelet would provide
is filled in here: mounts become local directories, $(VAR) references and
fieldRefs are resolved, and the Indexed Job's completion index is set. The
termination messages the workloads leave are then fed to the planner, which must
turn them into the Distillation's status.
"""

import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, StageState
from distillery.controller.config import OperatorConfig
from distillery.controller.observe import NodeView, observe
from distillery.controller.planner import plan
from distillery.resources import jobs
from distillery.resources.common import STAGE_LABEL, Owner
from distillery.resources.workspace import pipeline_configmap
from distillery.workloads.tasks import get_task
from distillery.workloads.teacher_server import TaskAwareResponder, TeacherServer, lookup_from_rows

from tests.workloads.tinymodel import OPERATOR_DIR, free_port, nli_rows, subprocess_env, tiny_model

OWNER = Owner("contract", "team-a", "uid-contract")
CONFIG = OperatorConfig()
H100 = NodeView(labels={"topology.kubernetes.io/region": "westus3", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                allocatable_gpus=8, gpu_tainted=True)


def contract_spec(teacher_url: str, train: list[dict], validation: list[dict]) -> DistillationSpec:
    return DistillationSpec.model_validate({
        "task": "nli",
        "region": "westus3",
        "teacher": {"endpoint": {"url": teacher_url, "model": "teacher"}, "concurrency": 8,
                    "sampling": {"maxTokens": 256}},
        "dataset": {"train": {"rows": train}, "validation": {"rows": validation}},
        "student": {"model": "pvc://models/tiny", "lora": {"rank": 8, "targetModules": ["q_proj", "v_proj"]},
                    "epochs": 2, "batchSize": 4, "learningRate": 0.003, "maxSeqLength": 256, "zeroStage": 2,
                    "gpusPerNode": 1},
        "evaluation": {"maxRows": 8},
    })


def kubelet_env(container: dict[str, Any], namespace: str) -> dict[str, str]:
    """The container env as the kubelet resolves it (no Secrets are referenced in this spec)."""
    resolved: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            resolved[item["name"]] = _expand(item["value"], resolved)
            continue
        field = item["valueFrom"]["fieldRef"]["fieldPath"]
        resolved[item["name"]] = {"metadata.namespace": namespace,
                                  "metadata.annotations['batch.kubernetes.io/job-completion-index']": "0"}[field]
    return resolved


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def local_argv(container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
    """The container's command and args on this machine: executables by module, mounted paths remapped."""
    argv = [_expand(a, env) for a in [*container["command"], *container.get("args", [])]]
    executables = {"distillery": [sys.executable, "-m", "distillery.cli"],
                   "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    out = [*executables[argv[0]]]
    for arg in argv[1:]:
        for mount, local in mounts.items():
            if arg.startswith(mount + "/"):
                arg = str(local) + arg[len(mount):]
        out.append(arg)
    return out


async def run_stage(job: dict[str, Any], tmp: Path, pvc_base: Path, rendezvous_port: int) -> tuple[int, str, str]:
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = kubelet_env(container, OWNER.namespace)
    if "MASTER_ADDR" in env:
        # Pod 0's stable DNS name (headless Service) is this machine in a one-node run.
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(rendezvous_port)
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "configMap" in volume:
            mounts[mount["mountPath"]] = tmp / "etc"
        elif volume.get("persistentVolumeClaim", {}).get("claimName") == f"{OWNER.name}-workspace":
            mounts[mount["mountPath"]] = tmp / "workspace"
        elif "persistentVolumeClaim" in volume:
            mounts[mount["mountPath"]] = pvc_base / volume["persistentVolumeClaim"]["claimName"]
    stage = job["metadata"]["labels"][STAGE_LABEL]
    termination = tmp / f"termination-{stage}"
    child_env = subprocess_env(termination) | env | {
        "JOB_COMPLETION_INDEX": "0",
        # The pod sees these paths mounted; locally the workloads are told where they are instead.
        "DISTILLERY_WORKSPACE": str(tmp / "workspace"),
        "DISTILLERY_PVC_BASE": str(pvc_base),
    }
    child_env.pop("KUBECONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        *local_argv(container, env, mounts), cwd=OPERATOR_DIR.parent, env=child_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 600)
    message = termination.read_text() if termination.exists() else ""
    return proc.returncode or 0, message, output.decode(errors="replace")[-3000:]


async def test_every_stage_runs_with_what_the_operator_puts_in_its_pod(tmp_path: Path) -> None:
    pvc_base = tmp_path / "pvc"
    model = tiny_model(tmp_path)
    (pvc_base / "models").mkdir(parents=True)
    (pvc_base / "models" / "tiny").symlink_to(model)
    (tmp_path / "workspace").mkdir()
    train, validation = nli_rows(24), nli_rows(8, offset=24)

    probe = contract_spec("http://127.0.0.1:1/v1", train, validation)
    task = get_task(probe.task, probe.prompt, probe.dataset.columns)
    async with TeacherServer(TaskAwareResponder(lookup_from_rows(task, train + validation))) as teacher:
        spec = contract_spec(teacher.url, train, validation)
        configmap = pipeline_configmap(OWNER, spec)
        (tmp_path / "etc").mkdir()
        for key, value in configmap["data"].items():
            (tmp_path / "etc" / key).write_text(value)

        messages: dict[str, list[str]] = {}
        for build in (jobs.labeling_job, jobs.training_job, jobs.evaluation_job):
            job = build(OWNER, spec, CONFIG)
            code, message, output = await run_stage(job, tmp_path, pvc_base, free_port())
            stage = job["metadata"]["labels"][STAGE_LABEL]
            assert code == 0, f"{stage} exited {code}:\n{output}"
            assert message, f"{stage} left no termination message"
            messages[stage] = [message]
        assert teacher.total_requests >= len(train) + len(validation)

    labeling = json.loads(messages[jobs.LABELING][0])
    assert labeling["rows_ok"] == len(train) + len(validation)
    training = json.loads(messages[jobs.TRAINING][0])
    assert training["steps"] > 0 and training["final_loss"] is not None
    evaluation = json.loads(messages[jobs.EVALUATION][0])
    assert {r["model"] for r in evaluation["results"]} == {"teacher", "base-student", "distilled-student"}
    assert (tmp_path / "workspace" / "train" / "adapter").is_dir()

    # The operator reads exactly these messages back into status.
    status = DistillationStatus()
    children = [
        {"kind": "Job", "metadata": {"name": f"{OWNER.name}-{suffix}"},
         "status": {"conditions": [{"type": "Complete", "status": "True"}]}, "spec": {}}
        for suffix in ("label", "train", "eval")
    ]
    pods = [{"metadata": {"name": f"{stage}-0", "labels": {STAGE_LABEL: stage}},
             "status": {"containerStatuses": [{"state": {"terminated": {"message": m[0]}}}]}}
            for stage, m in messages.items()]
    for _ in range(4):
        result = plan(OWNER, 1, spec, status, observe(OWNER.name, children, pods, [H100]), datetime.now(UTC),
                      CONFIG)
        status = result.status
    assert status.stages["evaluation"].state == StageState.SUCCEEDED
    assert status.progress.rows_labeled == labeling["rows_ok"]
    assert status.progress.train_step == training["steps"]
    assert [r.model for r in status.results] == [r["model"] for r in evaluation["results"]]


def test_contract_env_needs_nothing_but_what_kubelet_resolves() -> None:
    spec = contract_spec("http://127.0.0.1:1/v1", nli_rows(2), nli_rows(1))
    for build in (jobs.labeling_job, jobs.training_job, jobs.evaluation_job):
        container = build(OWNER, spec, CONFIG)["spec"]["template"]["spec"]["containers"][0]
        env = kubelet_env(container, OWNER.namespace)
        assert all("$(" not in v for v in env.values())
        assert os.path.isabs(container["args"][-1]) and container["args"][-1].startswith("/etc/distillery/")
