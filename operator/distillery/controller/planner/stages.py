"""The Job stages that follow the teacher: generation, labeling (or reusing labels) and evaluation."""

from distillery.api.modelref import PVC_SCHEME
from distillery.api.pipeline import FINGERPRINT_PARTS
from distillery.api.status import Stage, StageState
from distillery.controller.planner import reports
from distillery.controller.planner.capacity import wait_for_gpus
from distillery.controller.planner.context import Pass
from distillery.controller.planner.jobs import stage_job
from distillery.controller.planner.teachers import judge_uses_teacher, release_teacher, wait_for_judge
from distillery.resources import jobs, pipeline_json


def generation(ctx: Pass) -> None:
    """dataset.generate: a Job writes new inputs with the teacher before labeling; reused labels bring
    their inputs with them."""
    d = ctx.spec.dataset
    if d.generate is None or d.labels_from:
        if ctx.stage(Stage.GENERATION).state != StageState.SKIPPED:
            reason = ("inputs come with the labels reused from " + d.labels_from if d.labels_from
                      else "dataset.generate is not set")
            ctx.finish(Stage.GENERATION, StageState.SKIPPED, reason)
            ctx.cond("Generated", False, "NotRequested", reason)
        return
    if ctx.obs.generate_job is not None or ctx.ready_for(Stage.GENERATION):
        stage_job(ctx, Stage.GENERATION, ctx.obs.generate_job, jobs.generation_job, reports.generation_summary)


def labeling(ctx: Pass) -> None:
    if (ctx.obs.label_job is not None or ctx.ready_for(Stage.LABELING)) and labels_reusable(ctx):
        stage_job(ctx, Stage.LABELING, ctx.obs.label_job, jobs.labeling_job, reports.labeling_summary)


def labels_reusable(ctx: Pass) -> bool:
    """dataset.labelsFrom naming a Distillation: its labels must be finished and made from the same task,
    teacher, prompts and rows (a fingerprint of each, recorded in its status when its labeling finished).
    A pvc:// source is checked by the labeling pod, which reads the fingerprint file beside the labels."""
    source = ctx.spec.dataset.labels_from
    if (source is None or source.startswith(PVC_SCHEME) or ctx.done(Stage.LABELING)
            or ctx.obs.label_job is not None):
        return True
    if source == ctx.owner.name:
        _labels_mismatch(ctx, "dataset.labelsFrom names this Distillation itself")
        return False
    view = ctx.obs.labels_source
    if view is None or view.labels is None or view.deleting:
        reason = "LabelsSourceNotFound" if view is None or view.deleting else "LabelsSourceNotReady"
        message = (f"Distillation {source} (dataset.labelsFrom) " +
                   ("does not exist in this namespace" if view is None else
                    "is being deleted" if view.deleting else "has not finished labeling yet"))
        if ctx.stage(Stage.LABELING).state != StageState.WAITING:
            ctx.event(reason, message)
        ctx.start(Stage.LABELING, StageState.WAITING, message)
        ctx.cond("Labeled", False, reason, message)
        return False
    mine = pipeline_json.labels_fingerprint(ctx.spec)
    differ = [part for part in FINGERPRINT_PARTS if view.labels.fingerprint.get(part) != mine[part]]
    if differ:
        _labels_mismatch(ctx, f"the labels of Distillation {source} were made with a different "
                              f"{', '.join(differ)} (dataset.labelsFrom reuses labels only when the task, "
                              f"teacher, prompts and rows are the same)")
        return False
    return True


def _labels_mismatch(ctx: Pass, message: str) -> None:
    ctx.finish(Stage.LABELING, StageState.FAILED, message)
    ctx.cond("Labeled", False, "LabelsMismatch", message)


def evaluation(ctx: Pass) -> None:
    if not ctx.ready_for(Stage.EVALUATION):
        return
    if not ctx.spec.evaluation.enabled:
        ctx.finish(Stage.EVALUATION, StageState.SKIPPED, "evaluation disabled")
    elif not wait_for_gpus(ctx, Stage.EVALUATION, ctx.spec.student.gpu_type, 1) and not (
            ctx.obs.eval_job is None and wait_for_judge(ctx)):
        stage_job(ctx, Stage.EVALUATION, ctx.obs.eval_job, jobs.evaluation_job, reports.evaluation_summary, gpus=1)
    if ctx.done(Stage.EVALUATION) and judge_uses_teacher(ctx):
        release_teacher(ctx)
