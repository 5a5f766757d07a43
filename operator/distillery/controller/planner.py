"""The pure planner: (spec, status, observed children, now) -> (actions, new status, events).

No I/O here. Every decision of the operator lives in this module so that each
transition can be unit-tested: stage order, waiting for GPU capacity, teacher
removal, failure, suspend and resume, and resuming a half-built pipeline after
an operator restart (status says what finished; children say what exists).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.pipeline import FINGERPRINT_PARTS
from distillery.api.reports import (
    REPORT_OF_STAGE,
    EvaluationReport,
    EvaluationResult,
    GenerationReport,
    LabelingReport,
    Report,
    TrainingReport,
    parse_progress_key,
    stage_report,
)
from distillery.api.spec import DistillationSpec, GateSpec
from distillery.api.status import (
    STAGE_CONDITION,
    DistillationStatus,
    LabelsRecord,
    ModelScore,
    Phase,
    Progress,
    Stage,
    StageState,
    StageStatus,
    TeacherStats,
    format_time,
    results_line,
    seconds_between,
)
from distillery.controller.conditions import get_condition, set_condition
from distillery.controller.observe import DeploymentView, JobView, NodeView, Observed
from distillery.resources import jobs, reporting, student, teacher, workspace
from distillery.resources.common import APPLIED_HASH_ANNOTATION, Names, Owner, gpu_node_fits, manifest_hash
from distillery.resources.teacher import served_teachers, teacher_name

DONE = {StageState.SUCCEEDED, StageState.SKIPPED, StageState.REMOVED}
ORDER = [Stage.TEACHER, Stage.GENERATION, Stage.LABELING, Stage.TRAINING, Stage.EVALUATION, Stage.SERVING]
UNSCHEDULABLE_GRACE_SECONDS = 15
MAX_TRAINING_ATTEMPTS = 20
"""A bound on whole-group training restarts of any cause, so a pool that keeps losing nodes cannot loop forever."""
ENDED_BY_TEACHER_REMOVAL = {StageState.PENDING, StageState.WAITING, StageState.RUNNING, StageState.SUCCEEDED}
"""Teacher stage states that its removal ends. Pending and Waiting too: labeling may have run under a status
that never recorded the teacher (an operator killed before each of its status writes)."""
PHASE_OF_STAGE = {
    Stage.TEACHER: Phase.TEACHER,
    Stage.GENERATION: Phase.GENERATING,
    Stage.LABELING: Phase.LABELING,
    Stage.TRAINING: Phase.TRAINING,
    Stage.EVALUATION: Phase.EVALUATING,
    Stage.SERVING: Phase.SERVING,
}

JobBuilder = Callable[[Owner, DistillationSpec, OperatorConfig], dict[str, Any]]
PROGRESS_SUMMARY_WIDTH = 80
"""`kubectl get` prints status.progressSummary as a column; keep it one screen wide."""


@dataclass(frozen=True)
class Create:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    propagation: str = "Background"
    """Foreground keeps the object until its dependents are gone (a Job until its pods have ended)."""


@dataclass(frozen=True)
class Patch:
    kind: str
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class Apply:
    """Server-side apply of a child that exists: its desired fields changed since they were last applied."""

    manifest: dict[str, Any]


Action = Create | Delete | Patch | Apply


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    status: DistillationStatus = field(default_factory=DistillationStatus)
    events: list[Event] = field(default_factory=list)


def _hours_between(start: str | None, end: str | None) -> float:
    return max(0.0, (seconds_between(start, end) or 0.0) / 3600)


def gpu_pool_fits(nodes: tuple[NodeView, ...], config: OperatorConfig, region: str, gpu_type: str | None,
                  gpus_per_pod: int, pods: int = 1, node_selector: Mapping[str, str] | None = None) -> bool:
    """Can the region's node pools ever hold these pods (by allocatable, not by what is free now)? Counts the
    nodes the rendered affinity and the Distillation's nodeSelector admit, however the cloud labels GPUs."""
    fitting = sum(1 for node in nodes if gpu_node_fits(config, node.labels, node.allocatable_gpus, region,
                                                         gpu_type, gpus_per_pod, node_selector))
    return fitting >= pods


QUALITY_GATE_FAILED = "QualityGateFailed"


def gap_closed(base: float, teacher: float, distilled: float) -> float | None:
    """The share of the base student's gap to the teacher that distillation closed; None when the teacher does
    not beat the base student (there is no gap to close)."""
    if teacher <= base:
        return None
    return (distilled - base) / (teacher - base)


def gate_verdict(gate: GateSpec, results: list[ModelScore]) -> tuple[bool, str]:
    """(passed, the numbers): evaluation.gate checked against the evaluation's main metric."""
    scores = {r.model: r for r in results}
    distilled = scores.get("distilled-student")
    if distilled is None:
        return False, "the evaluation reported no score for the distilled student"
    metric = distilled.metric
    parts, passed = [], True
    if gate.min_score is not None:
        ok = distilled.score >= gate.min_score
        passed &= ok
        parts.append(f"distilled-student {metric} {distilled.score:.2f} is {'at least' if ok else 'below'} "
                     f"minScore {gate.min_score:g}")
    if gate.min_gap_closed is not None:
        base, teacher = scores.get("base-student"), scores.get("teacher")
        if base is None or teacher is None:
            missing = " and ".join(m for m, r in (("base-student", base), ("teacher", teacher)) if r is None)
            passed = False
            parts.append(f"minGapClosed needs the {missing} score, which the evaluation did not report "
                         "(a teacher is scored only on rows with gold answers)")
        else:
            share = gap_closed(base.score, teacher.score, distilled.score)
            if share is None:
                passed = False
                parts.append(f"teacher {metric} {teacher.score:.2f} does not beat base-student {base.score:.2f}: "
                             f"there is no gap for minGapClosed {gate.min_gap_closed:.0%} to measure")
            else:
                ok = share >= gate.min_gap_closed
                passed &= ok
                parts.append(f"distilled-student {metric} {distilled.score:.2f} closes {share:.1%} of the gap from "
                             f"base-student {base.score:.2f} to teacher {teacher.score:.2f}, "
                             f"{'at least' if ok else 'below'} minGapClosed {gate.min_gap_closed:.1%}")
    return passed, "; ".join(parts)


GpuDemand = tuple[str | None, int, int]
"""(GPU type, GPUs per pod, pods)."""


def gpu_pool_fits_all(nodes: tuple[NodeView, ...], config: OperatorConfig, region: str, demands: list[GpuDemand],
                      node_selector: Mapping[str, str] | None = None) -> bool:
    """Can the region's node pools hold all these pods at once (several teachers started together)?

    First-fit decreasing over each node's allocatable GPUs: exact packing is NP-hard, and with at most 4
    teachers of a few replicas each, first-fit decreasing misses a packing only in contrived pools (and
    capacityCheck none turns the check off)."""
    free = [node.allocatable_gpus for node in nodes]
    pods = sorted(((gpu_type, gpus) for gpu_type, gpus, count in demands for _ in range(count)),
                  key=lambda pod: -pod[1])
    for gpu_type, gpus in pods:
        for i, node in enumerate(nodes):
            if free[i] >= gpus and gpu_node_fits(config, node.labels, free[i], region, gpu_type if gpus else None,
                                                 gpus, node_selector):
                free[i] -= gpus
                break
        else:
            return False
    return True


def _judge_scores(entry: EvaluationResult) -> dict[str, Any]:
    """evaluation.judge's numbers in one evaluator result entry, those it has."""
    found: dict[str, Any] = {key: round(value, 2) for key, value in (("judge", entry.judge),
                                                                     ("persona", entry.persona))
                             if value is not None}
    if entry.unjudged is not None:
        found["unjudged"] = entry.unjudged
    return found


class _Pass:
    """One reconcile pass; mutates a copy of the status and collects actions and events."""

    def __init__(self, owner: Owner, generation: int, spec: DistillationSpec, status: DistillationStatus,
                 observed: Observed, now: datetime, config: OperatorConfig) -> None:
        self.owner, self.spec, self.obs, self.config = owner, spec, observed, config
        self.names = Names(owner.name)
        self.generation = generation
        self.now = format_time(now)
        self.status = status.model_copy(deep=True)
        self.status.observed_generation = generation
        for stage in ORDER:
            self.status.stages.setdefault(stage.value, StageStatus())
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.teacher_released = False

    # helpers -------------------------------------------------------------
    def stage(self, stage: Stage) -> StageStatus:
        return self.status.stages[stage.value]

    def cond(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(self.status.conditions, type_, status, reason, message, self.now,
                                               self.generation)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message[:1000]))

    def create(self, manifest: dict[str, Any]) -> None:
        self.actions.append(Create(manifest))

    def apply(self, manifest: dict[str, Any]) -> None:
        """A child whose fields may change after creation (replicas, images, operator-wide annotations, an
        upgraded builder): created when absent, server-side applied when what the builders want now differs
        from what was last applied. The hash of the last applied manifest rides on the child itself, so a
        restarted operator writes nothing for children that are already right."""
        digest = manifest_hash(manifest)
        meta = manifest["metadata"]
        stamped = {**manifest, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                                    APPLIED_HASH_ANNOTATION: digest}}}
        applied = self.obs.applied.get((manifest["kind"], meta["name"]))
        if applied is None:
            self.actions.append(Create(stamped))
        elif applied != digest:
            self.actions.append(Apply(stamped))

    def delete(self, kind: str, name: str) -> None:
        self.actions.append(Delete(kind, name))

    def start(self, stage: Stage, state: StageState = StageState.RUNNING, message: str | None = None) -> None:
        record = self.stage(stage)
        if record.start_time is None and state == StageState.RUNNING:
            record.start_time = self.now
        record.state = state
        record.message = message

    def finish(self, stage: Stage, state: StageState, message: str | None = None, gpus: int = 0) -> None:
        record = self.stage(stage)
        if record.state in DONE | {StageState.FAILED}:
            return
        record.start_time = record.start_time or self.now
        record.completion_time = self.now
        record.state = state
        record.message = message
        if gpus:
            record.gpu_hours = round(gpus * _hours_between(record.start_time, record.completion_time), 4)
        if state == StageState.SUCCEEDED:
            self.event("StageSucceeded", f"Stage {stage.value} succeeded" + (f": {message}" if message else ""))
        elif state == StageState.FAILED:
            self.event("StageFailed", f"Stage {stage.value} failed: {message}", warning=True)

    def done(self, stage: Stage) -> bool:
        return self.stage(stage).state in DONE

    def failed_stage(self) -> Stage | None:
        return next((s for s in ORDER if self.stage(s).state == StageState.FAILED), None)

    def wait_for_gpus(self, stage: Stage, gpu_type: str, gpus: int, pods: int = 1) -> bool:
        """True when the region can hold the stage; otherwise records why it waits."""
        if self.config.capacity_check == "none":
            return False
        if gpu_pool_fits(self.obs.nodes, self.config, self.spec.region, gpu_type if gpus else None, gpus, pods,
                         self.spec.scheduling.node_selector):
            return False
        what = f"{pods} node(s) with {gpus}x {gpu_type}" if gpus else f"{pods} node(s)"
        self.wait_for_capacity(stage, f"no node in region {self.spec.region} can hold {what}")
        return True

    def wait_for_teachers_gpus(self, served: list[int]) -> bool:
        """Several teachers start together: True when the region cannot hold all their replicas at once."""
        assert self.spec.teachers is not None
        if self.config.capacity_check == "none":
            return False
        members = [self.spec.teachers[i] for i in served]
        if gpu_pool_fits_all(self.obs.nodes, self.config, self.spec.region,
                             [(t.gpu_type, t.gpus, t.replicas) for t in members],
                             self.spec.scheduling.node_selector):
            return False
        what = ", ".join(f"{t.name}: {t.replicas} pod(s) with {t.gpus}x {t.gpu_type}" for t in members)
        self.wait_for_capacity(Stage.TEACHER, f"the nodes in region {self.spec.region} cannot hold the teachers "
                                              f"together ({what})")
        return True

    def wait_for_capacity(self, stage: Stage, why: str) -> None:
        message = (f"{why}; waiting for capacity (for node "
                   f"pools that scale from zero, set the operator's capacityCheck to none)")
        if self.stage(stage).state != StageState.WAITING:
            self.event("NoMatchingGPUNodePool", message, warning=True)
        self.start(stage, StageState.WAITING, message)
        self.cond(STAGE_CONDITION[stage], False, "NoMatchingGPUNodePool", message)

    # the pass ------------------------------------------------------------
    def run(self) -> Plan:
        if not self.obs.pvc:
            self.create(workspace.workspace_pvc(self.owner, self.spec, self.config))
        self.apply(workspace.pipeline_configmap(self.owner, self.spec))
        if not self.obs.progress_configmap:
            self.create(reporting.progress_configmap(self.owner))
        identity = self.obs.workload_identity
        if "ServiceAccount" not in identity:
            self.create(reporting.workload_service_account(self.owner))
        if "Role" not in identity:
            self.create(reporting.workload_role(self.owner))
        elif "RoleBinding" not in identity:
            # Binding a Role that does not exist yet is refused to an identity without the bind verb (the
            # API server cannot check it grants nothing more): the Role first, its binding a pass later.
            self.create(reporting.workload_role_binding(self.owner))

        failed = self.failed_stage()
        if failed is not None:
            self.release_teacher()
            return self.conclude_failed(failed)
        if self.spec.suspend:
            return self.suspend()
        self.teacher()
        self.resume_jobs()
        self.generate_inputs()
        if (self.obs.label_job is not None or self.ready_for(Stage.LABELING)) and self.labels_reusable():
            self.stage_job(Stage.LABELING, self.obs.label_job, jobs.labeling_job, self.labeling_summary)
        if self.done(Stage.LABELING) and not self.judge_holds_teacher():
            self.release_teacher()
        if self.ready_for(Stage.TRAINING):
            self.training()
        if self.ready_for(Stage.EVALUATION):
            if not self.spec.evaluation.enabled:
                self.finish(Stage.EVALUATION, StageState.SKIPPED, "evaluation disabled")
            elif not self.wait_for_gpus(Stage.EVALUATION, self.spec.student.gpu_type, 1) and not (
                    self.obs.eval_job is None and self.wait_for_judge()):
                self.stage_job(Stage.EVALUATION, self.obs.eval_job, jobs.evaluation_job, self.evaluation_summary,
                               gpus=1)
            if self.done(Stage.EVALUATION) and self.judge_uses_teacher():
                self.release_teacher()
        if self.ready_for(Stage.SERVING) and self.quality_gate():
            self.serving()
        self.live_progress()

        failed = self.failed_stage()
        if failed is not None:
            self.release_teacher()
            return self.conclude_failed(failed)
        return self.conclude()

    def ready_for(self, stage: Stage) -> bool:
        """The teacher gates generation and labeling; after that each stage waits for all stages between it
        and generation."""
        if stage in (Stage.GENERATION, Stage.LABELING):
            return all(self.done(s) for s in ORDER[:ORDER.index(stage)])
        return all(self.done(s) for s in ORDER[1:ORDER.index(stage)])

    def generate_inputs(self) -> None:
        """dataset.generate: a Job writes new inputs with the teacher before labeling; reused labels bring
        their inputs with them."""
        d = self.spec.dataset
        if d.generate is None or d.labels_from:
            if self.stage(Stage.GENERATION).state != StageState.SKIPPED:
                reason = ("inputs come with the labels reused from " + d.labels_from if d.labels_from
                          else "dataset.generate is not set")
                self.finish(Stage.GENERATION, StageState.SKIPPED, reason)
                self.cond("Generated", False, "NotRequested", reason)
            return
        if self.obs.generate_job is not None or self.ready_for(Stage.GENERATION):
            self.stage_job(Stage.GENERATION, self.obs.generate_job, jobs.generation_job, self.generation_summary)

    def generation_summary(self, report: Report | None) -> None:
        if isinstance(report, GenerationReport):
            self.generation_progress(report)

    def generation_progress(self, report: GenerationReport) -> None:
        p = self.progress()
        p.inputs_generated, p.inputs_kept, p.inputs_rejected = report.generated, report.kept, report.rejected
        p.input_rejections = dict(report.rejections) or None

    def labels_reusable(self) -> bool:
        """dataset.labelsFrom naming a Distillation: its labels must be finished and made from the same task,
        teacher, prompts and rows (a fingerprint of each, recorded in its status when its labeling finished).
        A pvc:// source is checked by the labeling pod, which reads the fingerprint file beside the labels."""
        source = self.spec.dataset.labels_from
        if (source is None or source.startswith("pvc://") or self.done(Stage.LABELING)
                or self.obs.label_job is not None):
            return True
        if source == self.owner.name:
            message = "dataset.labelsFrom names this Distillation itself"
            self.finish(Stage.LABELING, StageState.FAILED, message)
            self.cond("Labeled", False, "LabelsMismatch", message)
            return False
        view = self.obs.labels_source
        if view is None or view.labels is None or view.deleting:
            reason = "LabelsSourceNotFound" if view is None or view.deleting else "LabelsSourceNotReady"
            message = (f"Distillation {source} (dataset.labelsFrom) " +
                       ("does not exist in this namespace" if view is None else
                        "is being deleted" if view.deleting else "has not finished labeling yet"))
            if self.stage(Stage.LABELING).state != StageState.WAITING:
                self.event(reason, message)
            self.start(Stage.LABELING, StageState.WAITING, message)
            self.cond("Labeled", False, reason, message)
            return False
        mine = workspace.labels_fingerprint(self.spec)
        differ = [part for part in FINGERPRINT_PARTS if view.labels.fingerprint.get(part) != mine[part]]
        if differ:
            message = (f"the labels of Distillation {source} were made with a different "
                       f"{', '.join(differ)} (dataset.labelsFrom reuses labels only when the task, teacher, "
                       f"prompts and rows are the same)")
            self.finish(Stage.LABELING, StageState.FAILED, message)
            self.cond("Labeled", False, "LabelsMismatch", message)
            return False
        return True

    def teacher(self) -> None:
        if self.spec.dataset.labels_from:
            # Reused labels need no teacher: that is their point.
            if self.stage(Stage.TEACHER).state != StageState.SKIPPED:
                message = f"labels reused from {self.spec.dataset.labels_from}; no teacher is started"
                self.finish(Stage.TEACHER, StageState.SKIPPED, message)
                self.cond("TeacherReady", False, "LabelsReused", message)
            return
        if self.spec.teachers is not None:
            self.several_teachers()
            return
        t = self.spec.teacher
        assert t is not None
        if t.endpoint is not None:
            if self.stage(Stage.TEACHER).state != StageState.SKIPPED:
                self.finish(Stage.TEACHER, StageState.SKIPPED, f"external endpoint {t.endpoint.url}")
            self.cond("TeacherReady", True, "ExternalEndpoint", f"using {t.endpoint.url}")
            return
        # A finished labeling Job ends the teacher's use even before status records it (an operator restarted
        # between deleting the teacher and writing that status must not start it again).
        label_job = self.obs.label_job
        if self.done(Stage.LABELING) or (label_job is not None and label_job.finished):
            held = t.keep_after_labeling or self.judge_holds_teacher()
            if held and self.obs.teacher is not None:
                self.apply(teacher.teacher_deployment(self.owner, self.spec, self.config))
            if self.judge_holds_teacher():
                self.judging_teacher()
            if held:
                self.served_before_recorded([self.obs.teacher], f"serving {t.model}")
            return
        if self.obs.teacher is None:
            if self.wait_for_gpus(Stage.TEACHER, t.gpu_type, t.gpus):
                return
            self.start(Stage.TEACHER, StageState.RUNNING, "starting the teacher server")
        self.apply(teacher.teacher_deployment(self.owner, self.spec, self.config))
        self.apply(teacher.teacher_service(self.owner))
        view = self.obs.teacher
        if view is not None and view.available:
            self.teacher_serving(f"{view.available_replicas} replica(s) serving {t.model}",
                                 f"Teacher {t.model} is serving")
            return
        # A teacher that was ready and lost its pods goes back to starting; labeling waits and resumes.
        reason, message = self.not_ready(Stage.TEACHER, view, f"teacher {t.model} is not serving yet")
        self.start(Stage.TEACHER, StageState.RUNNING, message)
        self.cond("TeacherReady", False, reason, message)

    def served_before_recorded(self, views: list[DeploymentView | None], message: str) -> None:
        """Labeling ran, so the teachers served, even if no status of this Distillation ever said so (an
        operator killed before each of its status writes). A teacher kept after labeling gets its record back
        from its Deployments here; a removed one from release_teacher. Without that the stage would stay
        pending, and the Distillation would never succeed."""
        if not self.done(Stage.TEACHER) and all(view is not None and view.available for view in views):
            record = self.stage(Stage.TEACHER)
            record.state, record.message = StageState.SUCCEEDED, message
            record.start_time = record.start_time or self.now
            self.cond("TeacherReady", True, "Serving", message)

    def teacher_serving(self, message: str, event: str) -> None:
        """The teacher stage succeeded (once: the Event is posted when it first does)."""
        record = self.stage(Stage.TEACHER)
        if record.state != StageState.SUCCEEDED:
            record.start_time = record.start_time or self.now
            record.state = StageState.SUCCEEDED
            record.message = message
            self.event("TeacherReady", event)
        self.cond("TeacherReady", True, "Serving", message)

    def several_teachers(self) -> None:
        """spec.teachers: every in-cluster teacher gets its Deployment and Service; they start together (one
        capacity check over all of them), labeling waits until all serve, and they are removed together."""
        members = self.spec.teachers
        assert members is not None
        served = served_teachers(self.spec)
        if not served:
            if self.stage(Stage.TEACHER).state != StageState.SKIPPED:
                self.finish(Stage.TEACHER, StageState.SKIPPED, "every teacher is an external endpoint")
            self.cond("TeacherReady", True, "ExternalEndpoint", "every teacher is an external endpoint")
            return
        label_job = self.obs.label_job
        if self.done(Stage.LABELING) or (label_job is not None and label_job.finished):
            kept = [i for i in served if members[i].keep_after_labeling]
            for i in kept:
                if teacher_name(self.owner, i) in self.obs.deployments:
                    self.apply(teacher.teacher_deployment(self.owner, self.spec, self.config, i))
            if kept == served:
                self.served_before_recorded([self.obs.deployments.get(teacher_name(self.owner, i)) for i in kept],
                                            "teachers serving: " + ", ".join(members[i].name for i in kept))
            return
        views = {i: self.obs.deployments.get(teacher_name(self.owner, i)) for i in served}
        if all(view is None for view in views.values()):
            if self.wait_for_teachers_gpus(served):
                return
            self.start(Stage.TEACHER, StageState.RUNNING, f"starting {len(served)} teacher servers")
        for i in served:
            self.apply(teacher.teacher_deployment(self.owner, self.spec, self.config, i))
            self.apply(teacher.teacher_service(self.owner, self.spec, i))
        waiting = [i for i in served if not ((view := views[i]) is not None and view.available)]
        serving = ", ".join(f"{members[i].name} ({members[i].model})" for i in served)
        if not waiting:
            self.teacher_serving(f"teachers serving: {serving}", f"Teachers are serving: {serving}")
            return
        names = ", ".join(members[i].name for i in waiting)
        reason, message = self.not_ready(Stage.TEACHER, views[waiting[0]], f"teacher(s) {names} not serving yet")
        self.start(Stage.TEACHER, StageState.RUNNING, message)
        self.cond("TeacherReady", False, reason, message)

    def present_teachers(self) -> list[str]:
        """The teacher Deployments of this Distillation that exist."""
        if self.spec.teachers is None:
            t = self.spec.teacher
            exists = self.obs.teacher is not None and t is not None and t.endpoint is None
            return [self.names.teacher] if exists else []
        return [name for i in served_teachers(self.spec)
                if (name := teacher_name(self.owner, i)) in self.obs.deployments]

    def blocked(self, stage_label: str) -> str | None:
        """The scheduler's reason once a stage pod has waited past the grace period.

        Pods are briefly unschedulable in normal operation (a claim still binding); reporting
        those would add two status writes per stage for nothing. The periodic resync brings
        a longer wait into status."""
        entry = self.obs.unschedulable.get(stage_label)
        if entry is None:
            return None
        message, since = entry
        try:
            waited = seconds_between(since, self.now)
        except ValueError:
            return message
        return message if waited is None or waited >= UNSCHEDULABLE_GRACE_SECONDS else None

    def not_ready(self, stage: Stage, view: DeploymentView | None, default: str) -> tuple[str, str]:
        """Why a server stage is not serving: pods the scheduler cannot place, a stuck rollout, or starting."""
        blocked = self.blocked(stage.value)
        if blocked:
            return "Unschedulable", f"pods cannot be scheduled: {blocked}"
        if stage.value in self.obs.stuck:
            return self.obs.stuck[stage.value]
        if view is not None and view.deadline_exceeded:
            return "ProgressDeadlineExceeded", default
        return "Starting", default

    def judge_uses_teacher(self) -> bool:
        """evaluation.judge is the in-cluster teacher: it serves until evaluation is over."""
        judge = self.spec.evaluation.judge
        return (judge is not None and judge.teacher and self.spec.evaluation.enabled
                and self.spec.teacher is not None and self.spec.teacher.endpoint is None)

    def judge_holds_teacher(self) -> bool:
        return self.judge_uses_teacher() and not self.done(Stage.EVALUATION)

    def judge_ready(self) -> bool:
        view = self.obs.teacher
        return not self.judge_holds_teacher() or (view is not None and view.available)

    def judging_teacher(self) -> None:
        """After labeling, the judging teacher serves on until evaluation is done; removed while suspended, it
        comes back on resume."""
        if self.obs.teacher is None:
            self.apply(teacher.teacher_deployment(self.owner, self.spec, self.config))
            self.apply(teacher.teacher_service(self.owner))
        if self.judge_ready():
            self.cond("TeacherReady", True, "Serving", "serving as the evaluation judge")
        else:
            reason, message = self.not_ready(Stage.TEACHER, self.obs.teacher,
                                             "the teacher, which judges the evaluation, is not serving yet")
            self.cond("TeacherReady", False, reason, message)

    def wait_for_judge(self) -> bool:
        """The evaluation Job starts only once the teacher that judges it serves."""
        if self.judge_ready():
            return False
        self.start(Stage.EVALUATION, StageState.WAITING, "waiting for the teacher, which judges the evaluation")
        self.cond("Evaluated", False, "WaitingForJudge", "waiting for the teacher, which judges the evaluation")
        return True

    def quality_gate(self) -> bool:
        """True when the student may be served: no evaluation.gate, or the evaluation met it. A student that
        misses it is not served; the Distillation fails with QualityGateFailed and the numbers, and the
        trained adapter stays in the workspace."""
        gate = self.spec.evaluation.gate
        if gate is None or self.stage(Stage.EVALUATION).state == StageState.SKIPPED:
            return True
        passed, message = gate_verdict(gate, self.status.results or [])
        record = self.stage(Stage.SERVING)
        if passed:
            if record.state == StageState.PENDING:
                self.event("QualityGatePassed", message)
            return True
        if record.state != StageState.FAILED:
            record.state, record.message = StageState.FAILED, f"quality gate failed: {message}"
            record.start_time = record.start_time or self.now
            record.completion_time = self.now
            self.event(QUALITY_GATE_FAILED, f"the student is not served: {message}; the trained adapter stays in "
                                            f"the workspace", warning=True)
        self.cond("StudentReady", False, QUALITY_GATE_FAILED, record.message or message)
        return False

    def release_teacher(self) -> None:
        """Give the teacher's GPUs back once labeling is over (or failed), unless asked to keep it; a teacher
        that judges the evaluation goes once evaluation is over (only a single teacher judges, see spec)."""
        if self.spec.teachers is not None:
            self.release_teachers()
            return
        assert self.spec.teacher is not None
        if self.spec.teacher.endpoint is not None or self.spec.teacher.keep_after_labeling or self.teacher_released:
            return
        self.teacher_released = True
        if self.obs.teacher is not None:
            self.delete("Deployment", self.names.teacher)
        if ("Service", self.names.teacher) in self.obs.applied:
            self.delete("Service", self.names.teacher)
        record = self.stage(Stage.TEACHER)
        if record.state in ENDED_BY_TEACHER_REMOVAL:
            record.completion_time = self.now
            t = self.spec.primary_teacher
            record.gpu_hours = round(t.replicas * t.gpus * _hours_between(record.start_time, self.now), 4)
            record.state = StageState.REMOVED
            reason, record.message = self.removal("teacher", "its")
            self.cond("TeacherReady", False, reason, record.message)

    def release_teachers(self) -> None:
        """Several teachers: those not kept are removed together; the stage's GPU-hours and each teacher's
        count from the teacher stage's start until now (a kept teacher's are not counted, as with one)."""
        members = self.spec.teachers
        assert members is not None
        removed = [i for i in served_teachers(self.spec) if not members[i].keep_after_labeling]
        if not removed:
            return
        for i in removed:
            name = teacher_name(self.owner, i)
            if name in self.obs.deployments:
                self.delete("Deployment", name)
            if ("Service", name) in self.obs.applied:
                self.delete("Service", name)
        record = self.stage(Stage.TEACHER)
        if record.state in ENDED_BY_TEACHER_REMOVAL:
            record.completion_time = self.now
            hours = _hours_between(record.start_time, self.now)
            record.gpu_hours = round(sum(members[i].replicas * members[i].gpus for i in removed) * hours, 4)
            record.state = StageState.REMOVED
            reason, record.message = self.removal("teachers", "their")
            self.cond("TeacherReady", False, reason, record.message)
            stats = self.teacher_stats()
            for i in removed:
                stats[i].gpu_hours = round(members[i].replicas * members[i].gpus * hours, 4)

    def removal(self, who: str, whose: str) -> tuple[str, str]:
        """Why the teacher stage ended, as TeacherReady's reason and message."""
        failed = self.failed_stage()
        if failed is not None:
            return "RemovedAfterFailure", f"{who} removed after the {failed.value} stage failed, to free {whose} GPUs"
        if self.judge_uses_teacher() and self.done(Stage.EVALUATION):
            return "RemovedAfterEvaluation", f"{who} removed after evaluation, which it judged, to free {whose} GPUs"
        return "RemovedAfterLabeling", f"{who} removed after labeling to free {whose} GPUs"

    def teacher_stats(self) -> list[TeacherStats]:
        """status.teachers in spec.teachers order, created on first use."""
        members = self.spec.teachers or []
        known = {s.name: s for s in self.status.teachers or []}
        self.status.teachers = [known.get(t.name) or TeacherStats(name=t.name) for t in members]
        return self.status.teachers

    def stage_job(self, stage: Stage, view: JobView | None, build: JobBuilder,
                  summarise: Callable[[Report | None], None], gpus: int = 0) -> None:
        if self.done(stage):
            return
        # One message from creation to completion: pod counts would turn every pod event into a status write.
        running = f"{stage.value} job running"
        if view is None:
            self.create(build(self.owner, self.spec, self.config))
            if self.kueue_managed:
                self.queued(stage, "")
            else:
                self.start(stage, StageState.RUNNING)
                self.cond(STAGE_CONDITION[stage], False, "Running", running)
            return
        messages = self.obs.messages.get(stage.value, [])
        if view.complete:
            report = stage_report(stage.value, messages, succeeded=True)
            summarise(report)
            self.finish(stage, StageState.SUCCEEDED, self.describe(stage, report), gpus=gpus)
            self.cond(STAGE_CONDITION[stage], True, "Succeeded", self.stage(stage).message or "")
        elif view.failed:
            detail = "; ".join(dict.fromkeys(m for m in messages if m))[:600]
            message = f"{view.reason or 'JobFailed'}: {view.message}" + (f" ({detail})" if detail else "")
            self.finish(stage, StageState.FAILED, message, gpus=gpus)
            self.cond(STAGE_CONDITION[stage], False, view.reason or "JobFailed", message)
        elif self.kueue_managed and view.suspended:
            self.queued(stage, view.queue_message)
        else:
            blocked = self.blocked(stage.value)
            if blocked:
                # Waiting, not failing: the claim may be created or capacity may come.
                message = f"pods cannot be scheduled: {blocked}"
                self.start(stage, StageState.RUNNING, message)
                self.cond(STAGE_CONDITION[stage], False, "Unschedulable", message)
            elif stage.value in self.obs.stuck:
                # The Job's pods cannot start (an image, a missing Secret): say so, the Job itself waits.
                reason, message = self.obs.stuck[stage.value]
                self.start(stage, StageState.RUNNING, message)
                self.cond(STAGE_CONDITION[stage], False, reason, message)
            else:
                self.start(stage, StageState.RUNNING)
                self.cond(STAGE_CONDITION[stage], False, "Running", running)

    @property
    def kueue_managed(self) -> bool:
        """The stage Jobs carry Kueue's queue-name label: Kueue alone decides when they run."""
        return bool(self.spec.scheduling.queue_name)

    def queued(self, stage: Stage, kueue_message: str) -> None:
        """A Job that Kueue holds suspended until its ClusterQueue has quota: waiting, not running, so its
        GPU-hours start counting only once Kueue admits it."""
        message = (f"queued in Kueue LocalQueue {self.spec.scheduling.queue_name}: "
                   f"{kueue_message or 'waiting for admission'}")
        if self.stage(stage).state != StageState.WAITING:
            self.event("QueuedByKueue", message)
        self.start(stage, StageState.WAITING, message)
        self.cond(STAGE_CONDITION[stage], False, "QueuedByKueue", message)

    def describe(self, stage: Stage, report: Report | None) -> str:
        if isinstance(report, LabelingReport) and report.reused_from:
            return (f"{report.rows_ok} labels reused from {report.reused_from}, "
                    f"{report.rows_rejected} rejected; the teacher was not asked")
        if isinstance(report, GenerationReport):
            reasons = report.rejections
            detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
            return (f"{report.generated} inputs generated, {report.kept} kept, "
                    f"{report.rejected} rejected" + (f" ({detail})" if detail else ""))[:1000]
        if isinstance(report, LabelingReport):
            return f"{report.rows_ok} rows labeled, {report.rows_rejected} rejected"
        if isinstance(report, TrainingReport) and report.steps is not None:
            # student.loss kd: how many examples the teacher's distribution reached (the rest trained on text alone).
            examples = "?" if report.examples is None else report.examples
            kd = (f", logit distillation on {report.kd_examples} of {examples} examples"
                  if report.kd_examples is not None else "")
            loss = "?" if report.final_loss is None else report.final_loss
            return f"{report.steps} optimizer steps, final loss {loss}{kd}"
        if stage == Stage.EVALUATION and self.status.results:
            return ", ".join(f"{r.model} {r.score:.2f}" for r in self.status.results)
        return f"{stage.value} job completed"

    def progress(self) -> Progress:
        if self.status.progress is None:
            self.status.progress = Progress()
        return self.status.progress

    def live_progress(self) -> None:
        """Fold what running pods reported into status.progress (finished stages keep their final summary)."""
        texts: dict[str, list[str]] = {}
        for key, value in sorted(self.obs.progress.items()):
            parsed = parse_progress_key(key)
            if parsed is not None and parsed[0] in REPORT_OF_STAGE:
                texts.setdefault(parsed[0], []).append(value)

        def running(stage: Stage) -> bool:
            return bool(texts.get(stage.value)) and self.stage(stage).state == StageState.RUNNING

        if running(Stage.GENERATION):
            generation = GenerationReport.parse_all(texts[jobs.GENERATION])
            if generation:
                self.generation_progress(generation[0])
        if running(Stage.LABELING):
            shards = LabelingReport.parse_all(texts[jobs.LABELING])
            if shards:
                self.labeling_progress(LabelingReport.merge(shards))
                self.teacher_outage(shards)
        if running(Stage.TRAINING):
            ranks = TrainingReport.parse_all(texts[jobs.TRAINING])
            if ranks:
                lead = TrainingReport.merge(ranks)
                p = self.progress()
                p.train_step = lead.step or 0
                p.train_steps = lead.total_steps or None
                p.train_loss = round(lead.loss, 4) if lead.loss is not None else None

    def progress_line(self, stage: Stage, record: StageStatus) -> str:
        p = self.status.progress
        generate = self.spec.dataset.generate
        if stage == Stage.GENERATION and p and generate and p.inputs_kept is not None:
            return f"generating {p.inputs_kept}/{generate.count}"
        if stage == Stage.LABELING and p and p.rows_total:
            return f"labeling {(p.rows_labeled or 0) + (p.rows_rejected or 0)}/{p.rows_total}"
        if stage == Stage.TRAINING and p and p.train_steps:
            loss = f" loss {p.train_loss:.3f}" if p.train_loss is not None else ""
            return f"training {p.train_step or 0}/{p.train_steps}{loss}"
        return f"{stage.value}: {record.state.value.lower()}"

    def labeling_summary(self, report: Report | None) -> None:
        labeled = report if isinstance(report, LabelingReport) else None
        if labeled is not None:
            self.labeling_progress(labeled)
        # What another Distillation's dataset.labelsFrom compares with its own before reusing these labels.
        self.status.labels = LabelsRecord(fingerprint=workspace.labels_fingerprint(self.spec),
                                          rows=labeled.rows_ok if labeled is not None else None,
                                          reused_from=workspace.labels_source_uri(self.spec))

    def labeling_progress(self, report: LabelingReport) -> None:
        """The labeler's counters (every shard's live reports, or the final summary, merged) in status terms."""
        p = self.progress()
        p.rows_labeled, p.rows_rejected, p.rows_total = report.rows_ok, report.rows_rejected, report.rows_total
        p.teacher_tokens_in, p.teacher_tokens_out = report.tokens_in, report.tokens_out
        if self.spec.teachers is None:
            return
        p.rows_disagreed = report.rows_disagreed
        for stats in self.teacher_stats():
            counts = report.teachers.get(stats.name)
            stats.rows_answered = counts.answered if counts else 0
            stats.rows_agreed = counts.agreed if counts else 0
            stats.agreement_rate = (round(stats.rows_agreed / stats.rows_answered, 4)
                                    if stats.rows_answered else None)
            stats.tokens_in = counts.tokens_in if counts else 0
            stats.tokens_out = counts.tokens_out if counts else 0

    def teacher_outage(self, reports: list[LabelingReport]) -> None:
        """A labeler that waits out a teacher outage says so in its live report; the stage says why it stalls."""
        waiting = [r for r in reports if r.teacher_unreachable_since is not None]
        if not waiting:
            return
        first = LabelingReport.merge(waiting)
        since = format_time(datetime.fromtimestamp(first.teacher_unreachable_since or 0, UTC))
        budget = self.spec.primary_teacher.outage_budget_seconds
        message = (f"{len(waiting)} labeling shard(s) wait for the teacher, unreachable since {since} "
                   f"({first.teacher_error or ''}); they give up after teacher.outageBudgetSeconds ({budget} s) "
                   "and resume from the rows already labeled")
        self.cond(STAGE_CONDITION[Stage.LABELING], False, "WaitingForTeacher", message)

    def training_summary(self, report: Report | None) -> None:
        if not isinstance(report, TrainingReport):
            return
        p = self.progress()
        p.train_step = report.steps
        p.train_steps = report.total_steps if report.total_steps is not None else report.steps
        p.train_loss = round(report.final_loss, 4) if report.final_loss is not None else None

    def evaluation_summary(self, report: Report | None) -> None:
        if not isinstance(report, EvaluationReport):
            return
        metric = report.metric or "score"
        scores = [ModelScore(model=r.model, prompt=r.prompt, metric=metric, score=round(r.score, 2), rows=r.rows,
                             **_judge_scores(r))
                  for r in report.results if r.score is not None]
        if scores:
            self.status.results = scores

    def training(self) -> None:
        s = self.spec.student
        if self.done(Stage.TRAINING):
            return
        if self.obs.train_job is None and self.wait_for_gpus(Stage.TRAINING, s.gpu_type, s.gpus_per_node, s.nodes):
            return
        self.apply(jobs.training_service(self.owner))
        view, record = self.obs.train_job, self.stage(Stage.TRAINING)
        attempt = record.attempts or 1
        if view is not None and view.attempt > attempt:
            # The Job knows better than a status that lost its count (restored from a backup, say).
            attempt = record.attempts = view.attempt
        if view is not None and view.attempt < attempt:
            # The attempt restarted last is still going away: foreground deletion keeps its Job until its pods
            # have ended, so the next attempt never meets the last one's ranks or checkpoint writes.
            message = f"restarting the training group as attempt {attempt}; waiting for the previous pods to end"
            self.start(Stage.TRAINING, StageState.RUNNING, message)
            self.cond(STAGE_CONDITION[Stage.TRAINING], False, "RestartingGroup", message)
            return
        if view is not None and self.restart_training(view, attempt):
            return

        def build(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
            job = jobs.training_job(owner, spec, config)
            job["metadata"].setdefault("annotations", {})[jobs.ATTEMPT_ANNOTATION] = str(attempt)
            return job

        self.stage_job(Stage.TRAINING, view, build, self.training_summary, gpus=s.nodes * s.gpus_per_node)

    def restart_training(self, view: JobView, attempt: int) -> bool:
        """Restart the whole training group as a new Job when one of its pods was lost or failed.

        Why not JobSet: it needs its own controller and webhooks in every cluster; an Indexed Job already
        fails as a whole on the first counted failure (backoffLimitPerIndex 0, maxFailedIndexes 0), and a
        disrupted pod's replacement is marked by the Job controller. The one missing piece, starting every
        rank again together, is a delete and a create, which the planner decides and bounds here. The new
        attempt resumes from the last checkpoint in the workspace. Failures of the workload count against
        the operator's jobBackoffLimit; disruptions (as for the other Jobs) do not, up to MAX_TRAINING_ATTEMPTS.
        """
        record = self.stage(Stage.TRAINING)
        failures = record.failures or 0
        if view.failed and view.reason != "PodFailurePolicy":
            # PodFailurePolicy: a configuration exit code, which fails the same way every time.
            detail = "; ".join(dict.fromkeys(m for m in self.obs.messages.get(Stage.TRAINING.value, []) if m))
            why, failures = f"{view.reason or 'JobFailed'}: {view.message} {detail[:300]}".strip(), failures + 1
            if failures > self.config.job_backoff_limit:
                record.failures = failures
                return False
        elif not view.finished and not view.deleting and self.spec.student.nodes > 1 \
                and Stage.TRAINING.value in self.obs.replaced:
            # One Indexed Job pod is the whole group only when there is one node; with more, the replacement
            # cannot join the others, which wait in a collective for the rank that is gone.
            why = self.obs.replaced[Stage.TRAINING.value]
        else:
            return False
        if attempt >= MAX_TRAINING_ATTEMPTS:
            # Left to itself the Job would hold every GPU of the group while the remaining ranks wait for the
            # lost one: fail the stage and end the group (its checkpoints stay in the workspace).
            message = f"gave up after {attempt} attempts of the training group: {why}"[:1000]
            if not view.finished and not view.deleting:
                self.actions.append(Delete("Job", self.names.train, propagation="Foreground"))
            student = self.spec.student
            self.finish(Stage.TRAINING, StageState.FAILED, message, gpus=student.nodes * student.gpus_per_node)
            self.cond(STAGE_CONDITION[Stage.TRAINING], False, "TooManyRestarts", message)
            return True
        record.attempts, record.failures = attempt + 1, failures or None
        self.actions.append(Delete("Job", self.names.train, propagation="Foreground"))
        message = f"restarting the training group as attempt {attempt + 1} from its last checkpoint: {why}"
        self.event("TrainingRestarted", message, warning=True)
        self.start(Stage.TRAINING, StageState.RUNNING, message[:1000])
        self.cond(STAGE_CONDITION[Stage.TRAINING], False, "RestartingGroup", message[:1000])
        return True

    def serving(self) -> None:
        sv = self.spec.serving
        if not sv.enabled:
            if self.stage(Stage.SERVING).state != StageState.SKIPPED:
                self.finish(Stage.SERVING, StageState.SKIPPED, "serving disabled")
            self.cond("StudentReady", False, "ServingDisabled", "serving is disabled in the spec")
            return
        view = self.obs.student
        if view is None:
            if self.wait_for_gpus(Stage.SERVING, sv.gpu_type, sv.gpus):
                return
            self.start(Stage.SERVING, StageState.RUNNING, "starting the student server")
        self.apply(student.student_deployment(self.owner, self.spec, self.config))
        self.apply(student.student_service(self.owner))
        self.status.student_endpoint = student.student_endpoint(self.owner)
        if view is not None and view.available and view.replicas == sv.replicas:
            record = self.stage(Stage.SERVING)
            if record.state != StageState.SUCCEEDED:
                record.state = StageState.SUCCEEDED
                record.start_time = record.start_time or self.now
                record.completion_time = self.now
                record.message = f"{view.available_replicas} replica(s) serving"
                self.event("StudentReady", f"Student serving at {self.status.student_endpoint}")
            self.cond("StudentReady", True, "Serving", f"{view.available_replicas} replica(s) at "
                      f"{self.status.student_endpoint}")
        else:
            reason, message = self.not_ready(Stage.SERVING, view, "student server is not serving yet")
            if self.stage(Stage.SERVING).state != StageState.SUCCEEDED:
                self.start(Stage.SERVING, StageState.RUNNING, message)
            self.cond("StudentReady", False, reason, message)

    def resume_jobs(self) -> None:
        if self.kueue_managed:
            # Kueue un-suspends a Job when it admits it; un-suspending it here would bypass the quota.
            return
        for stage, view, name in self.jobs():
            # Labeling resumes only against a serving teacher, or its retries would reject good rows.
            if stage in (Stage.GENERATION, Stage.LABELING) and not self.done(Stage.TEACHER):
                continue
            # Likewise an evaluation the teacher judges, or its replies would go unjudged.
            if stage == Stage.EVALUATION and not self.judge_ready():
                continue
            if view is not None and view.suspended and not view.finished:
                self.actions.append(Patch("Job", name, {"spec": {"suspend": False}}))
                self.event("Resumed", f"Resumed {stage.value} job {name}")

    def jobs(self) -> list[tuple[Stage, JobView | None, str]]:
        return [(Stage.GENERATION, self.obs.generate_job, self.names.generate),
                (Stage.LABELING, self.obs.label_job, self.names.label),
                (Stage.TRAINING, self.obs.train_job, self.names.train),
                (Stage.EVALUATION, self.obs.eval_job, self.names.eval)]

    def suspend(self) -> Plan:
        for stage, view, name in self.jobs():
            if self.kueue_managed:
                # Kueue un-suspends any suspended Job whose Workload it has admitted, so suspend=true on the
                # Job would not hold. Deleting it gives its quota back at once; its work is in the
                # workspace (labeling resumes per row, training from its checkpoint) and on resume a new
                # Job queues for admission again.
                if view is not None and not view.finished:
                    self.delete("Job", name)
                    self.event("Suspended", f"Deleted {stage.value} job {name} to release its Kueue quota; "
                                            "progress is kept in the workspace")
                    self.start(stage, StageState.PENDING, "deleted while suspended; queues again on resume")
                continue
            if view is not None and not view.suspended and not view.finished:
                self.actions.append(Patch("Job", name, {"spec": {"suspend": True}}))
                self.event("Suspended", f"Suspended {stage.value} job {name}; progress is kept in the workspace")
        # The teacher holds GPUs while idle; it is recreated on resume (its state is the model, not data).
        present = self.present_teachers()
        if present and not self.done(Stage.LABELING):
            for name in present:
                self.delete("Deployment", name)
            record = self.stage(Stage.TEACHER)
            record.state, record.message = StageState.PENDING, "removed while suspended"
            self.cond("TeacherReady", False, "Suspended", "the teacher is removed while suspended")
        elif self.obs.teacher is not None and self.done(Stage.LABELING) and self.judge_holds_teacher():
            # Labeling is done, so its stage record stays; the judge comes back on resume (judging_teacher).
            self.delete("Deployment", self.names.teacher)
            self.cond("TeacherReady", False, "Suspended", "the judging teacher is removed while suspended")
        if self.obs.student is not None:
            # The builder scales the student to zero while spec.suspend is set.
            self.apply(student.student_deployment(self.owner, self.spec, self.config))
        self.status.phase = Phase.SUSPENDED
        self.status.progress_summary = "suspended"
        self.cond("Suspended", True, "Suspended", "spec.suspend is true; progress is kept")
        self.cond("Reconciling", False, "Suspended", "paused by spec.suspend")
        self.cond("Ready", False, "Suspended", "paused by spec.suspend")
        self.cond("Stalled", False, "Suspended", "")
        self.fill_unknown()
        return self.plan()

    def conclude_failed(self, stage: Stage) -> Plan:
        message = self.stage(stage).message or f"{stage.value} failed"
        reason = f"{stage.value.capitalize()}Failed"
        student_ready = get_condition(self.status.conditions, "StudentReady")
        if stage == Stage.SERVING and student_ready is not None and student_ready.reason == QUALITY_GATE_FAILED:
            reason = QUALITY_GATE_FAILED
        self.status.phase = Phase.FAILED
        self.status.progress_summary = f"failed at {stage.value}"
        self.cond("Failed", True, reason, message)
        self.cond("Stalled", True, reason, message)
        self.cond("Succeeded", False, reason, message)
        self.cond("Reconciling", False, reason, message)
        self.cond("Ready", False, reason, message)
        self.cond("Suspended", False, "NotSuspended", "")
        self.fill_unknown()
        self.total_gpu_hours()
        return self.plan()

    def conclude(self) -> Plan:
        self.cond("Suspended", False, "NotSuspended", "")
        self.cond("Failed", False, "NoFailure", "")
        self.cond("Stalled", False, "NotStalled", "")
        current = next((s for s in ORDER if not self.done(s)), None)
        if current is None:
            self.status.phase = Phase.SUCCEEDED
            self.cond("Succeeded", True, "Completed", "every stage finished")
            self.cond("Reconciling", False, "Completed", "")
            if self.spec.serving.enabled:
                student_ready = get_condition(self.status.conditions, "StudentReady")
                ok = student_ready is not None and student_ready.status == "True"
                self.cond("Ready", ok, "StudentServing" if ok else "StudentNotServing",
                          student_ready.message if student_ready else "")
            else:
                self.cond("Ready", True, "Completed", "pipeline finished; serving is disabled")
            summary = results_line(self.status.results or [])
            self.status.progress_summary = summary[:PROGRESS_SUMMARY_WIDTH] or "done"
        else:
            self.status.phase = PHASE_OF_STAGE[current]
            record = self.stage(current)
            stage_cond = get_condition(self.status.conditions, STAGE_CONDITION[current])
            waiting = record.state == StageState.WAITING and stage_cond is not None
            self.cond("Succeeded", False, "InProgress", f"stage {current.value} is {record.state.value.lower()}")
            self.cond("Reconciling", True, stage_cond.reason if waiting and stage_cond else "Progressing",
                      record.message or f"stage {current.value} in progress")
            self.cond("Ready", False, "InProgress", f"stage {current.value} in progress")
            self.status.progress_summary = self.progress_line(current, record)
        self.fill_unknown()
        self.total_gpu_hours()
        return self.plan()

    def fill_unknown(self) -> None:
        present = {c.type for c in self.status.conditions}
        for stage, type_ in STAGE_CONDITION.items():
            if type_ not in present:
                self.cond(type_, None, "Pending", f"stage {stage.value} has not started")

    def total_gpu_hours(self) -> None:
        hours = [s.gpu_hours for s in self.status.stages.values() if s.gpu_hours]
        self.status.gpu_hours = round(sum(hours), 4) if hours else None

    def plan(self) -> Plan:
        order = {"Ready": 0, "Succeeded": 1, "Failed": 2, "Reconciling": 3, "Stalled": 4, "Suspended": 5}
        self.status.conditions.sort(key=lambda c: (order.get(c.type, 10), c.type))
        return Plan(actions=self.actions, status=self.status, events=self.events)


def plan(owner: Owner, generation: int, spec: DistillationSpec, status: DistillationStatus, observed: Observed,
         now: datetime, config: OperatorConfig) -> Plan:
    return _Pass(owner, generation, spec, status, observed, now, config).run()
