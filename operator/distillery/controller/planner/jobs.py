"""Stage Jobs: created once, read back into the stage record; Kueue's queueing; suspend and resume."""

from collections.abc import Callable
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.reports import Report, stage_report
from distillery.api.spec import DistillationSpec
from distillery.api.status import STAGE_CONDITION, Stage, StageState
from distillery.controller.observe import JobView
from distillery.controller.planner import reports
from distillery.controller.planner.capacity import blocked
from distillery.controller.planner.context import Pass
from distillery.controller.planner.teachers import judge_ready
from distillery.resources.common import Owner

JobBuilder = Callable[[Owner, DistillationSpec, OperatorConfig], dict[str, Any]]
Summarise = Callable[[Pass, Report | None], None]


def stage_jobs(ctx: Pass) -> list[tuple[Stage, JobView | None, str]]:
    return [(Stage.GENERATION, ctx.obs.generate_job, ctx.names.generate),
            (Stage.LABELING, ctx.obs.label_job, ctx.names.label),
            (Stage.TRAINING, ctx.obs.train_job, ctx.names.train),
            (Stage.EVALUATION, ctx.obs.eval_job, ctx.names.eval)]


def stage_job(ctx: Pass, stage: Stage, view: JobView | None, build: JobBuilder, summarise: Summarise,
              gpus: int = 0) -> None:
    """Create the stage's Job once, then follow it to success or failure."""
    if ctx.done(stage):
        return
    if view is None:
        ctx.create(build(ctx.owner, ctx.spec, ctx.config))
        if ctx.kueue_managed:
            queued(ctx, stage, "")
        else:
            _running(ctx, stage)
        return
    messages = ctx.obs.messages.get(stage.value, [])
    if view.complete:
        report = stage_report(stage.value, messages, succeeded=True)
        summarise(ctx, report)
        ctx.finish(stage, StageState.SUCCEEDED, reports.describe(ctx, stage, report), gpus=gpus)
        ctx.cond(STAGE_CONDITION[stage], True, "Succeeded", ctx.stage(stage).message or "")
    elif view.failed:
        detail = "; ".join(dict.fromkeys(m for m in messages if m))[:600]
        message = f"{view.reason or 'JobFailed'}: {view.message}" + (f" ({detail})" if detail else "")
        ctx.finish(stage, StageState.FAILED, message, gpus=gpus)
        ctx.cond(STAGE_CONDITION[stage], False, view.reason or "JobFailed", message)
    elif ctx.kueue_managed and view.suspended:
        queued(ctx, stage, view.queue_message)
    else:
        _pods_waiting_or_running(ctx, stage)


def _running(ctx: Pass, stage: Stage) -> None:
    # One message from creation to completion: pod counts would turn every pod event into a status write.
    ctx.start(stage, StageState.RUNNING)
    ctx.cond(STAGE_CONDITION[stage], False, "Running", f"{stage.value} job running")


def _pods_waiting_or_running(ctx: Pass, stage: Stage) -> None:
    """A Job that runs, or whose pods wait to be placed or to start."""
    unplaced = blocked(ctx, stage.value)
    if unplaced:
        # Waiting, not failing: the claim may be created or capacity may come.
        message = f"pods cannot be scheduled: {unplaced}"
        ctx.start(stage, StageState.RUNNING, message)
        ctx.cond(STAGE_CONDITION[stage], False, "Unschedulable", message)
    elif stage.value in ctx.obs.stuck:
        # The Job's pods cannot start (an image, a missing Secret): say so, the Job itself waits.
        reason, message = ctx.obs.stuck[stage.value]
        ctx.start(stage, StageState.RUNNING, message)
        ctx.cond(STAGE_CONDITION[stage], False, reason, message)
    else:
        _running(ctx, stage)


def queued(ctx: Pass, stage: Stage, kueue_message: str) -> None:
    """A Job that Kueue holds suspended until its ClusterQueue has quota: waiting, not running, so its
    GPU-hours start counting only once Kueue admits it."""
    message = (f"queued in Kueue LocalQueue {ctx.spec.scheduling.queue_name}: "
               f"{kueue_message or 'waiting for admission'}")
    if ctx.stage(stage).state != StageState.WAITING:
        ctx.event("QueuedByKueue", message)
    ctx.start(stage, StageState.WAITING, message)
    ctx.cond(STAGE_CONDITION[stage], False, "QueuedByKueue", message)


def resume_jobs(ctx: Pass) -> None:
    if ctx.kueue_managed:
        # Kueue un-suspends a Job when it admits it; un-suspending it here would bypass the quota.
        return
    for stage, view, name in stage_jobs(ctx):
        # Labeling resumes only against a serving teacher, or its retries would reject good rows.
        if stage in (Stage.GENERATION, Stage.LABELING) and not ctx.done(Stage.TEACHER):
            continue
        # Likewise an evaluation the teacher judges, or its replies would go unjudged.
        if stage == Stage.EVALUATION and not judge_ready(ctx):
            continue
        if view is not None and view.suspended and not view.finished:
            ctx.patch("Job", name, {"spec": {"suspend": False}})
            ctx.event("Resumed", f"Resumed {stage.value} job {name}")


def suspend_jobs(ctx: Pass) -> None:
    for stage, view, name in stage_jobs(ctx):
        if ctx.kueue_managed:
            # Kueue un-suspends any suspended Job whose Workload it has admitted, so suspend=true on the
            # Job would not hold. Deleting it gives its quota back at once; its work is in the
            # workspace (labeling resumes per row, training from its checkpoint) and on resume a new
            # Job queues for admission again.
            if view is not None and not view.finished:
                ctx.delete("Job", name)
                ctx.event("Suspended", f"Deleted {stage.value} job {name} to release its Kueue quota; "
                                       "progress is kept in the workspace")
                ctx.start(stage, StageState.PENDING, "deleted while suspended; queues again on resume")
            continue
        if view is not None and not view.suspended and not view.finished:
            ctx.patch("Job", name, {"spec": {"suspend": True}})
            ctx.event("Suspended", f"Suspended {stage.value} job {name}; progress is kept in the workspace")
