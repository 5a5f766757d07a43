"""The training stage: one Indexed Job per attempt, restarted as a whole group when one of its pods is lost."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.api.status import STAGE_CONDITION, Stage, StageState
from distillery.controller.observe import JobView
from distillery.controller.planner import reports
from distillery.controller.planner.capacity import wait_for_gpus
from distillery.controller.planner.context import Pass
from distillery.controller.planner.jobs import stage_job
from distillery.resources import jobs
from distillery.resources.common import Owner

MAX_TRAINING_ATTEMPTS = 20
"""A bound on whole-group training restarts of any cause, so a pool that keeps losing nodes cannot loop forever."""


def training(ctx: Pass) -> None:
    s = ctx.spec.student
    if not ctx.ready_for(Stage.TRAINING) or ctx.done(Stage.TRAINING):
        return
    if ctx.obs.train_job is None and wait_for_gpus(ctx, Stage.TRAINING, s.gpu_type, s.gpus_per_node, s.nodes):
        return
    ctx.apply(jobs.training_service(ctx.owner))
    view = ctx.obs.train_job
    attempt = ctx.stage(Stage.TRAINING).attempts or 1
    if view is not None and view.attempt > attempt:
        # The Job knows better than a status that lost its count (restored from a backup, say).
        attempt = view.attempt
        ctx.transition(Stage.TRAINING, attempts=attempt)
    if view is not None and view.attempt < attempt:
        # The attempt restarted last is still going away: foreground deletion keeps its Job until its pods
        # have ended, so the next attempt never meets the last one's ranks or checkpoint writes.
        message = f"restarting the training group as attempt {attempt}; waiting for the previous pods to end"
        ctx.start(Stage.TRAINING, StageState.RUNNING, message)
        ctx.cond(STAGE_CONDITION[Stage.TRAINING], False, "RestartingGroup", message)
        return
    if view is not None and restart_training(ctx, view, attempt):
        return

    def build(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
        job = jobs.training_job(owner, spec, config)
        job["metadata"].setdefault("annotations", {})[jobs.ATTEMPT_ANNOTATION] = str(attempt)
        return job

    stage_job(ctx, Stage.TRAINING, view, build, reports.training_summary, gpus=s.nodes * s.gpus_per_node)


def restart_training(ctx: Pass, view: JobView, attempt: int) -> bool:
    """Restart the whole training group as a new Job when one of its pods was lost or failed.

    Why not JobSet: it needs its own controller and webhooks in every cluster; an Indexed Job already
    fails as a whole on the first counted failure (backoffLimitPerIndex 0, maxFailedIndexes 0), and a
    disrupted pod's replacement is marked by the Job controller. The one missing piece, starting every
    rank again together, is a delete and a create, which the planner decides and bounds here. The new
    attempt resumes from the last checkpoint in the workspace. Failures of the workload count against
    the operator's jobBackoffLimit; disruptions (as for the other Jobs) do not, up to MAX_TRAINING_ATTEMPTS.
    """
    failures = ctx.stage(Stage.TRAINING).failures or 0
    if view.failed and view.reason != "PodFailurePolicy":
        # PodFailurePolicy: a configuration exit code, which fails the same way every time.
        detail = "; ".join(dict.fromkeys(m for m in ctx.obs.messages.get(Stage.TRAINING.value, []) if m))
        why, failures = f"{view.reason or 'JobFailed'}: {view.message} {detail[:300]}".strip(), failures + 1
        if failures > ctx.config.job_backoff_limit:
            ctx.transition(Stage.TRAINING, failures=failures)
            return False
    elif not view.finished and not view.deleting and ctx.spec.student.nodes > 1 \
            and Stage.TRAINING.value in ctx.obs.replaced:
        # One Indexed Job pod is the whole group only when there is one node; with more, the replacement
        # cannot join the others, which wait in a collective for the rank that is gone.
        why = ctx.obs.replaced[Stage.TRAINING.value]
    else:
        return False
    if attempt >= MAX_TRAINING_ATTEMPTS:
        _give_up(ctx, view, f"gave up after {attempt} attempts of the training group: {why}"[:1000])
        return True
    ctx.transition(Stage.TRAINING, attempts=attempt + 1, failures=failures)
    ctx.delete("Job", ctx.names.train, propagation="Foreground")
    message = f"restarting the training group as attempt {attempt + 1} from its last checkpoint: {why}"
    ctx.event("TrainingRestarted", message, warning=True)
    ctx.start(Stage.TRAINING, StageState.RUNNING, message[:1000])
    ctx.cond(STAGE_CONDITION[Stage.TRAINING], False, "RestartingGroup", message[:1000])
    return True


def _give_up(ctx: Pass, view: JobView, message: str) -> None:
    """Left to itself the Job would hold every GPU of the group while the remaining ranks wait for the lost
    one: fail the stage and end the group (its checkpoints stay in the workspace)."""
    if not view.finished and not view.deleting:
        ctx.delete("Job", ctx.names.train, propagation="Foreground")
    student = ctx.spec.student
    ctx.finish(Stage.TRAINING, StageState.FAILED, message, gpus=student.nodes * student.gpus_per_node)
    ctx.cond(STAGE_CONDITION[Stage.TRAINING], False, "TooManyRestarts", message)
