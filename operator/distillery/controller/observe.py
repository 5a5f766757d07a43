"""What the planner sees: child objects and nodes reduced to the facts it decides on (pure)."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from distillery.api.status import LabelsRecord, Stage
from distillery.resources.common import APPLIED_HASH_ANNOTATION, STAGE_LABEL, Names
from distillery.resources.jobs import ATTEMPT_ANNOTATION, IGNORED_FAILURES_ANNOTATION

JOB_STAGES = {Stage.GENERATION.value, Stage.LABELING.value, Stage.TRAINING.value, Stage.EVALUATION.value}
STUCK_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                           "CreateContainerError", "CrashLoopBackOff", "RunContainerError"})
"""Container waiting reasons that do not clear by themselves: the kubelet retries, but someone must act."""
CONTAINER_CREATING = "ContainerCreating"
MOUNT_FAILURE_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})
"""Event reasons with which the kubelet and the attach/detach controller say why a pod's volumes are not ready:
the pod itself only shows ContainerCreating."""
MOUNT_GRACE_SECONDS = 60
"""How long a pod may be in ContainerCreating before its Events are read (attaching a disk takes a while)."""


def creating_too_long(pods: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Stage pods (projections) that have been in ContainerCreating for MOUNT_GRACE_SECONDS or longer."""
    found = []
    for pod in pods:
        created = (pod.get("metadata") or {}).get("creationTimestamp")
        creating = any(((cs.get("state") or {}).get("waiting") or {}).get("reason") == CONTAINER_CREATING
                       for cs in (pod.get("status") or {}).get("containerStatuses") or [])
        if creating and created:
            try:
                age = (now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()
            except ValueError:
                continue
            if age >= MOUNT_GRACE_SECONDS:
                found.append(pod)
    return found


def mount_failure(events: Iterable[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the newest FailedMount or FailedAttachVolume Event among a pod's Events."""
    failures = [e for e in events if e.get("reason") in MOUNT_FAILURE_REASONS]
    if not failures:
        return None
    newest = max(failures, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or
                                              (e.get("metadata") or {}).get("creationTimestamp") or ""))
    return str(newest["reason"]), str(newest.get("message", ""))


@dataclass(frozen=True)
class JobView:
    suspended: bool = False
    complete: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    queue_message: str = ""
    """Why Kueue has not admitted the Job (its Workload's condition message); empty when it has or none says."""
    attempt: int = 1
    """Which attempt of its stage this Job is (the training group restarts as a new Job)."""
    deleting: bool = False

    @classmethod
    def of(cls, job: dict[str, Any], queue_message: str = "") -> "JobView":
        status = job.get("status") or {}
        meta = job.get("metadata") or {}
        try:
            attempt = max(1, int((meta.get("annotations") or {}).get(ATTEMPT_ANNOTATION, 1)))
        except ValueError:
            attempt = 1
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conditions.get("Failed") or {}
        return cls(
            suspended=bool((job.get("spec") or {}).get("suspend")),
            complete="Complete" in conditions,
            failed="Failed" in conditions,
            reason=str(failed.get("reason", "")),
            message=str(failed.get("message", "")),
            queue_message=queue_message,
            attempt=attempt,
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def finished(self) -> bool:
        return self.complete or self.failed


@dataclass(frozen=True)
class DeploymentView:
    replicas: int = 0
    available_replicas: int = 0
    available: bool = False
    deadline_exceeded: bool = False

    @classmethod
    def of(cls, deployment: dict[str, Any]) -> "DeploymentView":
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        available = int(status.get("availableReplicas") or 0)
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        current = (deployment.get("metadata") or {}).get("generation") == status.get("observedGeneration")
        return cls(
            replicas=replicas,
            available_replicas=available,
            available=current and replicas > 0 and available >= replicas,
            deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        )


@dataclass(frozen=True)
class NodeView:
    labels: dict[str, str]
    allocatable_gpus: int

    @classmethod
    def of(cls, node: dict[str, Any], gpu_resource: str = "nvidia.com/gpu") -> "NodeView":
        alloc = ((node.get("status") or {}).get("allocatable") or {}).get(gpu_resource, "0")
        try:
            gpus = int(str(alloc))
        except ValueError:
            gpus = 0
        return cls(
            labels=dict((node.get("metadata") or {}).get("labels") or {}),
            allocatable_gpus=gpus,
        )


@dataclass(frozen=True)
class Observed:
    """Children of one Distillation (by deterministic name) and the cluster's nodes."""

    pvc: bool = False
    generate_job: JobView | None = None
    label_job: JobView | None = None
    train_job: JobView | None = None
    eval_job: JobView | None = None
    student: DeploymentView | None = None
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    """Every Deployment child by name (several teachers' servers are found here)."""
    applied: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> hash of the manifest last applied, for every Deployment, Service and ConfigMap child
    ("" for one that carries none)."""
    workload_identity: frozenset[str] = frozenset()
    """Which of the stage pods' ServiceAccount, Role and RoleBinding exist (by kind)."""
    progress_configmap: bool = False
    progress: dict[str, str] = field(default_factory=dict)
    """Live progress the stage pods wrote: one JSON value per pod key, e.g. labeling-00001."""
    messages: dict[str, list[str]] = field(default_factory=dict)
    """Termination messages of finished pods, by stage label."""
    unschedulable: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(the scheduler's message, since when), by stage label, for a stage pod that cannot be placed."""
    stuck: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(the kubelet's waiting reason, its message with the pod and restart count), by stage label, for a stage
    pod whose container cannot start or keeps crashing."""
    replaced: dict[str, str] = field(default_factory=dict)
    """By stage label: a message naming a Job pod that replaced one lost to a disruption (node deleted, drained,
    preempted): in a multi-pod torch group the other pods then wait for a peer that is gone."""
    nodes: tuple[NodeView, ...] = ()
    labels_source: "LabelsSource | None" = None
    """The Distillation that spec.dataset.labelsFrom names, when it names one that exists."""


@dataclass(frozen=True)
class LabelsSource:
    """What reusing another Distillation's labels depends on: whether they are finished, and from what."""

    labels: LabelsRecord | None = None
    deleting: bool = False

    @classmethod
    def of(cls, distillation: dict[str, Any]) -> "LabelsSource":
        raw = (distillation.get("status") or {}).get("labels")
        try:
            labels = LabelsRecord.model_validate(raw) if raw else None
        except ValidationError:
            labels = None
        return cls(labels=labels, deleting=bool((distillation.get("metadata") or {}).get("deletionTimestamp")))


def workload_message(workload: dict[str, Any]) -> str:
    """Why Kueue holds a Workload back, in Kueue's words: an eviction (preemption, deactivation) first, then
    a missing quota reservation (e.g. "insufficient unused quota for nvidia.com/gpu ..."), then pending
    admission checks. Empty once it is admitted."""
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    evicted, reserved, admitted = (conditions.get(t) or {} for t in ("Evicted", "QuotaReserved", "Admitted"))
    if evicted.get("status") == "True":
        return str(evicted.get("message", ""))
    if reserved.get("status") != "True":
        return str(reserved.get("message", ""))
    if admitted.get("status") != "True":
        return str(admitted.get("message", ""))
    return ""


@dataclass
class _PodReadings:
    """What the stage pods say, by stage label (the Observed fields of the same names)."""

    messages: dict[str, list[str]] = field(default_factory=dict)
    unschedulable: dict[str, tuple[str, str]] = field(default_factory=dict)
    stuck: dict[str, tuple[str, str]] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)

    def read(self, stage: str, pod: dict[str, Any], pod_events: Mapping[str, tuple[str, str]]) -> None:
        meta = pod.get("metadata") or {}
        ignored = str((meta.get("annotations") or {}).get(IGNORED_FAILURES_ANNOTATION, "0"))
        if ignored.isdigit() and int(ignored) > 0:
            self.replaced[stage] = (f"pod {meta.get('name')} replaced a pod lost to a disruption (node deleted, "
                                    f"drained or preempted)")
        if meta.get("name") in pod_events:
            reason, why = pod_events[str(meta["name"])]
            self.stuck[stage] = (reason, f"pod {meta.get('name')}: {why}"[:1000])
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            self._container(stage, str(meta.get("name")), cs)
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                self.unschedulable[stage] = (str(c.get("message", ""))[:500],
                                             str(c.get("lastTransitionTime") or ""))

    def _container(self, stage: str, pod: str, cs: dict[str, Any]) -> None:
        state = cs.get("state") or {}
        message = (state.get("terminated") or {}).get("message")
        if message:
            self.messages.setdefault(stage, []).append(message)
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            restarts = int(cs.get("restartCount") or 0)
            detail = f"pod {pod}: {waiting.get('message') or waiting['reason']}"
            self.stuck[stage] = (str(waiting["reason"]),
                                 detail + (f" (restarted {restarts} times)" if restarts else ""))


def _read_pods(children: list[dict[str, Any]], pods: Iterable[dict[str, Any]],
               pod_events: Mapping[str, tuple[str, str]] | None) -> _PodReadings:
    # Pods carry the parent's name, not its UID: a Job pod counts only if it belongs to one of this
    # Distillation's own Jobs (a predecessor of the same name may still be terminating).
    job_uids = {(c.get("metadata") or {}).get("uid") for c in children if c.get("kind") == "Job"}
    readings = _PodReadings()
    for pod in pods:
        meta = pod.get("metadata") or {}
        stage = (meta.get("labels") or {}).get(STAGE_LABEL)
        if stage and (stage not in JOB_STAGES or job_uids & set(meta.get("owners") or ())):
            readings.read(stage, pod, pod_events or {})
    return readings


def observe(parent: str, children: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]],
            nodes: Iterable[NodeView], queue_messages: Mapping[str, str] | None = None,
            labels_source: dict[str, Any] | None = None,
            pod_events: Mapping[str, tuple[str, str]] | None = None) -> Observed:
    """`queue_messages`: Kueue's reason for holding each Job back, by Job UID (see `workload_message`);
    `labels_source`: the Distillation whose labels this one reuses, if it exists.
    `pod_events`: (reason, message) of the newest Event saying why a pod's volumes cannot be set up (FailedMount,
    FailedAttachVolume), by pod name, for pods the kubelet keeps in ContainerCreating."""
    names = Names(parent)
    queue_messages = queue_messages or {}
    children = list(children)
    by_key = {(c.get("kind"), (c.get("metadata") or {}).get("name")): c for c in children}

    def job(name: str) -> JobView | None:
        obj = by_key.get(("Job", name))
        if not obj:
            return None
        return JobView.of(obj, queue_messages.get(str((obj.get("metadata") or {}).get("uid")), ""))

    deployments = {str(name): DeploymentView.of(c) for (kind, name), c in by_key.items() if kind == "Deployment"}
    readings = _read_pods(children, pods, pod_events)
    return Observed(
        pvc=("PersistentVolumeClaim", names.workspace) in by_key,
        workload_identity=frozenset(k for k in ("ServiceAccount", "Role", "RoleBinding")
                                    if (k, names.workload) in by_key),
        progress_configmap=("ConfigMap", names.progress) in by_key,
        progress=dict((by_key.get(("ConfigMap", names.progress)) or {}).get("data") or {}),
        generate_job=job(names.generate),
        label_job=job(names.label),
        train_job=job(names.train),
        eval_job=job(names.eval),
        student=deployments.get(names.student),
        deployments=deployments,
        applied={(str(kind), str(name)): str(((c.get("metadata") or {}).get("annotations") or {})
                                             .get(APPLIED_HASH_ANNOTATION, ""))
                 for (kind, name), c in by_key.items() if kind in ("Deployment", "Service", "ConfigMap")},
        messages={k: sorted(v) for k, v in readings.messages.items()},
        unschedulable=readings.unschedulable,
        stuck=readings.stuck,
        replaced=readings.replaced,
        nodes=tuple(nodes),
        labels_source=LabelsSource.of(labels_source) if labels_source is not None else None,
    )
