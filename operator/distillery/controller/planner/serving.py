"""Servers: why a Deployment is not serving yet, and the student's serving stage."""

from distillery.api.status import Stage, StageState
from distillery.controller.observe import DeploymentView
from distillery.controller.planner.capacity import blocked, wait_for_gpus
from distillery.controller.planner.context import Pass
from distillery.resources import student


def not_ready(ctx: Pass, stage: Stage, view: DeploymentView | None, default: str) -> tuple[str, str]:
    """Why a server stage is not serving: pods the scheduler cannot place, a stuck rollout, or starting."""
    unplaced = blocked(ctx, stage.value)
    if unplaced:
        return "Unschedulable", f"pods cannot be scheduled: {unplaced}"
    if stage.value in ctx.obs.stuck:
        return ctx.obs.stuck[stage.value]
    if view is not None and view.deadline_exceeded:
        return "ProgressDeadlineExceeded", default
    return "Starting", default


def serving(ctx: Pass) -> None:
    sv = ctx.spec.serving
    if not sv.enabled:
        if ctx.stage(Stage.SERVING).state != StageState.SKIPPED:
            ctx.finish(Stage.SERVING, StageState.SKIPPED, "serving disabled")
        ctx.cond("StudentReady", False, "ServingDisabled", "serving is disabled in the spec")
        return
    view = ctx.obs.student
    if view is None:
        if wait_for_gpus(ctx, Stage.SERVING, sv.gpu_type, sv.gpus):
            return
        ctx.start(Stage.SERVING, StageState.RUNNING, "starting the student server")
    ctx.apply(student.student_deployment(ctx.owner, ctx.spec, ctx.config))
    ctx.apply(student.student_service(ctx.owner))
    ctx.status.student_endpoint = student.student_endpoint(ctx.owner)
    if view is not None and view.available and view.replicas == sv.replicas:
        if ctx.stage(Stage.SERVING).state != StageState.SUCCEEDED:
            ctx.transition(Stage.SERVING, StageState.SUCCEEDED, f"{view.available_replicas} replica(s) serving",
                           ended=True)
            ctx.event("StudentReady", f"Student serving at {ctx.status.student_endpoint}")
        ctx.cond("StudentReady", True, "Serving", f"{view.available_replicas} replica(s) at "
                 f"{ctx.status.student_endpoint}")
    else:
        reason, message = not_ready(ctx, Stage.SERVING, view, "student server is not serving yet")
        if ctx.stage(Stage.SERVING).state != StageState.SUCCEEDED:
            ctx.start(Stage.SERVING, StageState.RUNNING, message)
        ctx.cond("StudentReady", False, reason, message)


def suspend_student(ctx: Pass) -> None:
    if ctx.obs.student is not None:
        # The builder scales the student to zero while spec.suspend is set.
        ctx.apply(student.student_deployment(ctx.owner, ctx.spec, ctx.config))
