"""The stage Jobs: labeling (Indexed, CPU), training (Indexed, GPU, DeepSpeed), evaluation (GPU)."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.pipeline import JUDGE_API_KEY_ENV
from distillery.api.reports import FINAL_EXIT_CODES
from distillery.api.spec import DistillationSpec
from distillery.api.status import Stage
from distillery.resources.common import (
    KUEUE_QUEUE_LABEL,
    PARENT_LABEL,
    RENDEZVOUS_PORT,
    STAGE_LABEL,
    Names,
    Owner,
    config_path,
    config_volume,
    dataset_uris,
    gpu_placement,
    gpu_resources,
    hub_access,
    metadata,
    pod_metadata,
    pvc_source_volumes,
    workload_security_context,
    workspace_volume,
)
from distillery.resources.pipeline_json import label_shards, labels_source_uri, teacher_key_env
from distillery.resources.reporting import workload_env

# Pod stage labels equal the status stage names, so pods and stages key the same maps.
LABELING, TRAINING, EVALUATION = Stage.LABELING.value, Stage.TRAINING.value, Stage.EVALUATION.value
GENERATION = Stage.GENERATION.value

ATTEMPT_ANNOTATION = "distillery.dev/attempt"
"""On the training Job: which attempt of the stage it is (1 when absent); the planner restarts the whole group by
deleting the Job and creating the next attempt."""
IGNORED_FAILURES_ANNOTATION = "batch.kubernetes.io/job-index-ignored-failure-count"
"""Set by the Job controller on a pod that replaces one whose failure the podFailurePolicy ignored (a
disruption), when the Job has backoffLimitPerIndex."""
TORCHRUN_SHUTDOWN_MARGIN_S = 30
"""Of a training pod's grace period, what is left after torchrun stops waiting for its workers' checkpoint."""


def failure_policy(container: str) -> dict[str, Any]:
    """A node drain or preemption is not the workload's failure; a final exit code (a configuration error, no
    data, too few valid answers) fails the same way on a retry, so the Job fails at once instead of spending its
    backoff on GPUs."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob",
         "onExitCodes": {"containerName": container, "operator": "In", "values": sorted(map(int, FINAL_EXIT_CODES))}},
    ]}


def _job(owner: Owner, name: str, stage: str, spec: DistillationSpec, config: OperatorConfig,
         pod_spec: dict[str, Any], completions: int, backoff_limit: int) -> dict[str, Any]:
    meta = metadata(owner, name, stage)
    if spec.scheduling.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = spec.scheduling.queue_name
    job_spec: dict[str, Any] = {
        "completions": completions,
        "parallelism": completions,
        "completionMode": "Indexed",
        "backoffLimit": backoff_limit,
        "podFailurePolicy": failure_policy(pod_spec["containers"][0]["name"]),
        # Stage pods are resumable: a suspended Job keeps its place, the workspace keeps the data. Kueue
        # admits only Jobs created suspended and un-suspends them itself.
        "suspend": spec.suspend or bool(spec.scheduling.queue_name),
        "template": {"metadata": pod_metadata(owner, stage, spec, config),
                     "spec": {**pod_spec, "serviceAccountName": Names(owner.name).workload}},
    }
    if config.job_ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.job_ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def _container(name: str, image: str, command: list[str], args: list[str], env: list[dict[str, Any]],
               resources: dict[str, Any], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": command,
        "args": args,
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": workload_security_context(),
        # The workloads leave a JSON summary here; a crash leaves the log's tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod(config: OperatorConfig, placement: dict[str, Any], container: dict[str, Any],
         volumes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**placement, "restartPolicy": "Never", **extra, "securityContext": config.workload_pod_security_context,
            "containers": [container], "volumes": volumes, "enableServiceLinks": False}


def _volumes(owner: Owner, spec: DistillationSpec, config: OperatorConfig, model: bool,
             extra_uris: tuple[str | None, ...] = (),
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts): config, workspace, the dataset's claims, the hub token (datasets may be
    gated too), and for stages that load the student its claim and the model cache."""
    names = Names(owner.name)
    cfg_vol, cfg_mount = config_volume(names)
    ws_vol, ws_mount = workspace_volume(names)
    src_vols, src_mounts = pvc_source_volumes(*dataset_uris(spec), *extra_uris,
                                              spec.student.model if model else None)
    hub_env, cache_vols, cache_mounts = hub_access(spec, cache=model, endpoint=config.hub_endpoint)
    return hub_env, [cfg_vol, ws_vol, *src_vols, *cache_vols], [cfg_mount, ws_mount, *src_mounts, *cache_mounts]


def _teacher_pod(owner: Owner, spec: DistillationSpec, config: OperatorConfig, command: str,
                 extra_uris: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """A CPU pod of the labeler image that talks to the teachers (labeling, generation) and their judge."""
    env, volumes, mounts = _volumes(owner, spec, config, model=False, extra_uris=extra_uris)
    for member in spec.teacher_list():
        if member.endpoint and member.endpoint.api_key_secret_ref:
            env.append({"name": teacher_key_env(spec, member),
                        "valueFrom": {"secretKeyRef": member.endpoint.api_key_secret_ref.to_wire()}})
    judge = spec.teacher_strategy.judge if spec.teacher_strategy is not None else None
    if judge is not None and judge.endpoint is not None and judge.endpoint.api_key_secret_ref is not None:
        env.append({"name": JUDGE_API_KEY_ENV,
                    "valueFrom": {"secretKeyRef": judge.endpoint.api_key_secret_ref.to_wire()}})
    container = _container("labeler", config.labeler_image, ["distillery", command], ["--config", config_path()],
                           [*env, *workload_env(owner)],
                           {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}, mounts)
    return _pod(config, gpu_placement(spec, config, None), container, volumes)


def labeling_job(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    # Reused labels are copied from the source workspace, mounted read-only like a dataset claim.
    pod_spec = _teacher_pod(owner, spec, config, "label", (labels_source_uri(spec),))
    return _job(owner, Names(owner.name).label, LABELING, spec, config, pod_spec,
                completions=label_shards(spec), backoff_limit=config.job_backoff_limit)


def generation_job(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    """One pod: near-duplicates are judged against every input kept so far, which one writer sees."""
    pod_spec = _teacher_pod(owner, spec, config, "generate")
    return _job(owner, Names(owner.name).generate, GENERATION, spec, config, pod_spec,
                completions=1, backoff_limit=config.job_backoff_limit)


def training_service(owner: Owner) -> dict[str, Any]:
    """Headless Service giving pod 0 a stable DNS name for the torch rendezvous."""
    name = Names(owner.name).train
    meta = metadata(owner, name, TRAINING)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {PARENT_LABEL: owner.name, STAGE_LABEL: TRAINING},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }


def _torchrun_env(owner: Owner, spec: DistillationSpec) -> list[dict[str, Any]]:
    """Where rank 0 listens and the group's shape, for `distillery launch` (torchrun) on each node."""
    s, name = spec.student, Names(owner.name).train
    return [
        # On SIGTERM torchrun passes the signal on and waits this long for the workers' checkpoint
        # (its default is 30 s) before killing them; the pod's grace period is a little longer.
        {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
         "value": str(s.termination_grace_seconds - TORCHRUN_SHUTDOWN_MARGIN_S)},
        {"name": "MASTER_ADDR", "value": f"{name}-0.{name}.{owner.namespace}.svc"},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "NNODES", "value": str(s.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(s.gpus_per_node)},
        {"name": "WORLD_SIZE", "value": str(s.nodes * s.gpus_per_node)},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    ]


def training_job(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    s = spec.student
    name = Names(owner.name).train
    hub_env, volumes, mounts = _volumes(owner, spec, config, model=True)
    volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
    mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    # torchrun starts one process per GPU and sets RANK/LOCAL_RANK for each; `distillery launch` is torchrun
    # exiting with the first failed worker's code (torchrun's own is 1), so the failure policy can read it.
    container = _container(
        "trainer", s.image or config.trainer_image, ["distillery", "launch"],
        ["--nnodes", str(s.nodes), "--nproc-per-node", str(s.gpus_per_node),
         "--node-rank", "$(NODE_RANK)", "--master-addr", "$(MASTER_ADDR)", "--master-port", "$(MASTER_PORT)",
         "-m", "distillery.cli", "train", "--config", config_path()],
        [*hub_env, *_torchrun_env(owner, spec), *workload_env(owner)],
        gpu_resources(config, s.gpus_per_node, cpu=str(8 * s.gpus_per_node), memory=f"{64 * s.gpus_per_node}Gi"),
        mounts)
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_spec = _pod(config, gpu_placement(spec, config, s.gpu_type), container, volumes, subdomain=name,
                    terminationGracePeriodSeconds=s.termination_grace_seconds)
    job = _job(owner, name, TRAINING, spec, config, pod_spec,
               completions=s.nodes, backoff_limit=config.job_backoff_limit)
    # The pods are one torch group: a pod that fails alone leaves the others blocked in a collective, holding
    # their GPUs. So the first counted failure fails the whole Job (the Job controller ends the other pods), and
    # a disrupted pod's replacement carries the ignored-failure count; on either the planner restarts the group
    # as a new attempt (see planner.training). backoffLimit then never comes into play.
    job["spec"]["backoffLimitPerIndex"] = 0
    job["spec"]["maxFailedIndexes"] = 0
    return job


def evaluation_job(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    env, volumes, mounts = _volumes(owner, spec, config, model=True)
    judge = spec.evaluation.judge
    if judge is not None:
        # The judge's key: its endpoint's own, or the teacher endpoint's when the teacher (the first of several)
        # judges.
        teacher_endpoint = spec.primary_teacher.endpoint
        key_ref = judge.endpoint.api_key_secret_ref if judge.endpoint is not None else (
            teacher_endpoint.api_key_secret_ref if teacher_endpoint is not None else None)
        if key_ref is not None:
            env.append({"name": JUDGE_API_KEY_ENV, "valueFrom": {"secretKeyRef": key_ref.to_wire()}})
    container = _container("evaluator", spec.student.image or config.trainer_image, ["distillery", "evaluate"],
                           ["--config", config_path()], [*env, *workload_env(owner)],
                           gpu_resources(config, 1, cpu="8", memory="64Gi"), mounts)
    pod_spec = _pod(config, gpu_placement(spec, config, spec.student.gpu_type), container, volumes)
    return _job(owner, Names(owner.name).eval, EVALUATION, spec, config, pod_spec,
                completions=1, backoff_limit=config.job_backoff_limit)
