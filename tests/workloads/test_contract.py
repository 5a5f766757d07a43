"""The contract between the operator and the workloads.

Each stage runs with exactly the command, args, env and mounted pipeline config
that the operator's builders put in its pod. Only what a kubelet would provide
is filled in here: mounts become local directories, $(VAR) references and
fieldRefs are resolved, and the Indexed Job's completion index is set. The
termination messages the workloads leave are then fed to the planner, which must
turn them into the Distillation's status.
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.reports import LabelingReport
from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, StageState
from distillery.controller.observe import NodeView, observe
from distillery.controller.planner import plan
from distillery.devcluster.local_kubelet import LocalVolumes, resolve_env, run_container
from distillery.devcluster.teacher_server import TaskAwareResponder, TeacherServer, lookup_from_rows
from distillery.resources import jobs
from distillery.resources.common import STAGE_LABEL, Owner
from distillery.resources.pipeline_json import pipeline_configmap
from distillery.workloads.tasks import get_task
from tests.workloads.tinymodel import OPERATOR_DIR, nli_rows, tiny_model

OWNER = Owner("contract", "team-a", "uid-contract")
CONFIG = OperatorConfig()
H100 = NodeView(labels={"topology.kubernetes.io/region": "westus3", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                allocatable_gpus=8)


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


async def run_stage(job: dict[str, Any], tmp: Path, pvc_base: Path, configmap: dict[str, Any]) -> tuple[int, str]:
    """The Job's pod as the kubelet would run it: its template, its completion index, its volumes."""
    pod = {"metadata": {**job["spec"]["template"]["metadata"], "namespace": OWNER.namespace,
                        "name": job["metadata"]["name"],
                        "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
           "spec": job["spec"]["template"]["spec"]}
    volumes = LocalVolumes(root=tmp, pvc_base=pvc_base,
                           configmaps={configmap["metadata"]["name"]: configmap["data"]})
    return await run_container(pod, volumes, {}, tmp / f"{job['metadata']['name']}.log", cwd=OPERATOR_DIR.parent)


async def test_every_stage_runs_with_what_the_operator_puts_in_its_pod(tmp_path: Path) -> None:
    pvc_base = tmp_path / "pvc"
    model = tiny_model(tmp_path)
    (pvc_base / "models").mkdir(parents=True)
    (pvc_base / "models" / "tiny").symlink_to(model)
    train, validation = nli_rows(24), nli_rows(8, offset=24)

    probe = contract_spec("http://127.0.0.1:1/v1", train, validation)
    task = get_task(probe.task, probe.prompt, probe.dataset.columns)
    async with TeacherServer(TaskAwareResponder(lookup_from_rows(task, train + validation))) as teacher:
        spec = contract_spec(teacher.url, train, validation)
        configmap = pipeline_configmap(OWNER, spec)
        messages: dict[str, list[str]] = {}
        for build in (jobs.labeling_job, jobs.training_job, jobs.evaluation_job):
            job = build(OWNER, spec, CONFIG)
            code, message = await run_stage(job, tmp_path, pvc_base, configmap)
            stage = job["metadata"]["labels"][STAGE_LABEL]
            assert code == 0, f"{stage} exited {code}:\n{message}"
            assert message, f"{stage} left no termination message"
            messages[stage] = [message]
        assert teacher.total_requests >= len(train) + len(validation)

    labeling = LabelingReport.parse(messages[jobs.LABELING][0])
    assert labeling is not None and labeling.dump() == json.loads(messages[jobs.LABELING][0])
    assert labeling.rows_ok == len(train) + len(validation)
    training = json.loads(messages[jobs.TRAINING][0])
    assert training["steps"] > 0 and training["final_loss"] is not None
    evaluation = json.loads(messages[jobs.EVALUATION][0])
    assert {r["model"] for r in evaluation["results"]} == {"teacher", "base-student", "distilled-student"}
    assert (tmp_path / "claims" / f"{OWNER.name}-workspace" / "train" / "adapter").is_dir()

    # The operator reads exactly these messages back into status.
    status = DistillationStatus()
    job_of_stage = {jobs.LABELING: "label", jobs.TRAINING: "train", jobs.EVALUATION: "eval"}
    children = [
        {"kind": "Job", "metadata": {"name": f"{OWNER.name}-{suffix}", "uid": f"uid-{suffix}"},
         "status": {"conditions": [{"type": "Complete", "status": "True"}]}, "spec": {}}
        for suffix in job_of_stage.values()
    ]
    # As the pod index projects them: the stage label, and the Job that owns the pod.
    pods = [{"metadata": {"name": f"{stage}-0", "labels": {STAGE_LABEL: stage},
                          "owners": [f"uid-{job_of_stage[stage]}"]},
             "status": {"containerStatuses": [{"state": {"terminated": {"message": m[0]}}}]}}
            for stage, m in messages.items()]
    for _ in range(4):
        result = plan(OWNER, 1, spec, status, observe(OWNER.name, children, pods, [H100]), datetime.now(UTC),
                      CONFIG)
        status = result.status
    assert status.stages["evaluation"].state == StageState.SUCCEEDED
    assert status.progress.rows_labeled == labeling.rows_ok
    assert status.progress.train_step == training["steps"]
    assert [r.model for r in status.results] == [r["model"] for r in evaluation["results"]]


def test_contract_env_needs_nothing_but_what_kubelet_resolves() -> None:
    spec = contract_spec("http://127.0.0.1:1/v1", nli_rows(2), nli_rows(1))
    for build in (jobs.labeling_job, jobs.training_job, jobs.evaluation_job, jobs.generation_job):
        container = build(OWNER, spec, CONFIG)["spec"]["template"]["spec"]["containers"][0]
        env = resolve_env(container, OWNER.namespace)
        assert all("$(" not in v for v in env.values())
        assert os.path.isabs(container["args"][-1]) and container["args"][-1].startswith("/etc/distillery/")


async def test_generation_then_labeling_run_with_what_the_operator_puts_in_their_pods(tmp_path: Path) -> None:
    train, validation = nli_rows(8), nli_rows(4, offset=8)
    raw = contract_spec("http://127.0.0.1:1/v1", train, validation).to_wire()
    raw["dataset"]["generate"] = {"seeds": {"rows": train[:3]}, "count": 6}
    async with TeacherServer() as teacher:
        raw["teacher"]["endpoint"]["url"] = teacher.url
        spec = DistillationSpec.model_validate(raw)
        configmap = pipeline_configmap(OWNER, spec)
        generated = await run_stage(jobs.generation_job(OWNER, spec, CONFIG), tmp_path, tmp_path / "pvc", configmap)
        labeled = await run_stage(jobs.labeling_job(OWNER, spec, CONFIG), tmp_path, tmp_path / "pvc", configmap)
    assert generated[0] == 0, generated[1]
    assert labeled[0] == 0, labeled[1]
    summary = json.loads(generated[1])
    assert summary["kept"] == 6 and summary["generated"] == 6 + summary["rejected"]
    workspace_dir = tmp_path / "claims" / f"{OWNER.name}-workspace"
    assert len((workspace_dir / "generated" / "train.jsonl").read_text().splitlines()) == 6
    labeling = LabelingReport.parse(labeled[1])
    assert labeling is not None and labeling.rows_total == len(train) + 6 + len(validation)
    fingerprint = json.loads((workspace_dir / "labels" / "fingerprint.json").read_text())["fingerprint"]
    assert fingerprint == json.loads(configmap["data"]["pipeline.json"])["labelsFingerprint"]
