"""The Distillation as a whole: the children every stage needs, and the conditions, phase and totals that
conclude a pass (succeeded, in progress, failed or suspended)."""

from distillery.api.status import STAGE_CONDITION, Phase, Stage, StageState, results_line
from distillery.controller.conditions import get_condition
from distillery.controller.planner.actions import Plan
from distillery.controller.planner.context import ORDER, Pass
from distillery.controller.planner.gate import QUALITY_GATE_FAILED
from distillery.controller.planner.reports import progress_line
from distillery.resources import pipeline_json, reporting, workspace

PHASE_OF_STAGE = {
    Stage.TEACHER: Phase.TEACHER,
    Stage.GENERATION: Phase.GENERATING,
    Stage.LABELING: Phase.LABELING,
    Stage.TRAINING: Phase.TRAINING,
    Stage.EVALUATION: Phase.EVALUATING,
    Stage.SERVING: Phase.SERVING,
}
PROGRESS_SUMMARY_WIDTH = 80
"""`kubectl get` prints status.progressSummary as a column; keep it one screen wide."""


def shared_children(ctx: Pass) -> None:
    """The workspace, pipeline.json and the stage pods' identity, before any stage."""
    if not ctx.obs.pvc:
        ctx.create(workspace.workspace_pvc(ctx.owner, ctx.spec, ctx.config))
    ctx.apply(pipeline_json.pipeline_configmap(ctx.owner, ctx.spec))
    if not ctx.obs.progress_configmap:
        ctx.create(reporting.progress_configmap(ctx.owner))
    identity = ctx.obs.workload_identity
    if "ServiceAccount" not in identity:
        ctx.create(reporting.workload_service_account(ctx.owner))
    if "Role" not in identity:
        ctx.create(reporting.workload_role(ctx.owner))
    elif "RoleBinding" not in identity:
        # Binding a Role that does not exist yet is refused to an identity without the bind verb (the
        # API server cannot check it grants nothing more): the Role first, its binding a pass later.
        ctx.create(reporting.workload_role_binding(ctx.owner))


def suspended(ctx: Pass) -> Plan:
    ctx.status.phase = Phase.SUSPENDED
    ctx.status.progress_summary = "suspended"
    ctx.cond("Suspended", True, "Suspended", "spec.suspend is true; progress is kept")
    ctx.cond("Reconciling", False, "Suspended", "paused by spec.suspend")
    ctx.cond("Ready", False, "Suspended", "paused by spec.suspend")
    ctx.cond("Stalled", False, "Suspended", "")
    fill_unknown(ctx)
    return ctx.plan()


def conclude_failed(ctx: Pass, stage: Stage) -> Plan:
    message = ctx.stage(stage).message or f"{stage.value} failed"
    reason = f"{stage.value.capitalize()}Failed"
    student_ready = get_condition(ctx.status.conditions, "StudentReady")
    if stage == Stage.SERVING and student_ready is not None and student_ready.reason == QUALITY_GATE_FAILED:
        reason = QUALITY_GATE_FAILED
    ctx.status.phase = Phase.FAILED
    ctx.status.progress_summary = f"failed at {stage.value}"
    ctx.cond("Failed", True, reason, message)
    ctx.cond("Stalled", True, reason, message)
    ctx.cond("Succeeded", False, reason, message)
    ctx.cond("Reconciling", False, reason, message)
    ctx.cond("Ready", False, reason, message)
    ctx.cond("Suspended", False, "NotSuspended", "")
    fill_unknown(ctx)
    total_gpu_hours(ctx)
    return ctx.plan()


def conclude(ctx: Pass) -> Plan:
    ctx.cond("Suspended", False, "NotSuspended", "")
    ctx.cond("Failed", False, "NoFailure", "")
    ctx.cond("Stalled", False, "NotStalled", "")
    current = next((s for s in ORDER if not ctx.done(s)), None)
    if current is None:
        _succeeded(ctx)
    else:
        _in_progress(ctx, current)
    fill_unknown(ctx)
    total_gpu_hours(ctx)
    return ctx.plan()


def _succeeded(ctx: Pass) -> None:
    ctx.status.phase = Phase.SUCCEEDED
    ctx.cond("Succeeded", True, "Completed", "every stage finished")
    ctx.cond("Reconciling", False, "Completed", "")
    if ctx.spec.serving.enabled:
        student_ready = get_condition(ctx.status.conditions, "StudentReady")
        ok = student_ready is not None and student_ready.status == "True"
        ctx.cond("Ready", ok, "StudentServing" if ok else "StudentNotServing",
                 student_ready.message if student_ready else "")
    else:
        ctx.cond("Ready", True, "Completed", "pipeline finished; serving is disabled")
    summary = results_line(ctx.status.results or [])
    ctx.status.progress_summary = summary[:PROGRESS_SUMMARY_WIDTH] or "done"


def _in_progress(ctx: Pass, current: Stage) -> None:
    ctx.status.phase = PHASE_OF_STAGE[current]
    record = ctx.stage(current)
    stage_cond = get_condition(ctx.status.conditions, STAGE_CONDITION[current])
    waiting = record.state == StageState.WAITING and stage_cond is not None
    ctx.cond("Succeeded", False, "InProgress", f"stage {current.value} is {record.state.value.lower()}")
    ctx.cond("Reconciling", True, stage_cond.reason if waiting and stage_cond else "Progressing",
             record.message or f"stage {current.value} in progress")
    ctx.cond("Ready", False, "InProgress", f"stage {current.value} in progress")
    ctx.status.progress_summary = progress_line(ctx, current, record)


def fill_unknown(ctx: Pass) -> None:
    present = {c.type for c in ctx.status.conditions}
    for stage, type_ in STAGE_CONDITION.items():
        if type_ not in present:
            ctx.cond(type_, None, "Pending", f"stage {stage.value} has not started")


def total_gpu_hours(ctx: Pass) -> None:
    hours = [s.gpu_hours for s in ctx.status.stages.values() if s.gpu_hours]
    ctx.status.gpu_hours = round(sum(hours), 4) if hours else None
