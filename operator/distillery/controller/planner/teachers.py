"""The teacher stage: one path for one teacher (a list of one) and for several. The served teachers start
together, labeling waits until all serve, and those not kept are removed together once labeling is over;
a single in-cluster teacher that judges the evaluation serves on until evaluation is over."""

from distillery.api.status import Stage, StageState
from distillery.controller.observe import DeploymentView
from distillery.controller.planner.capacity import wait_for_teachers_gpus
from distillery.controller.planner.context import Pass, hours_between
from distillery.controller.planner.serving import not_ready
from distillery.controller.planner.teacher_words import teacher_words
from distillery.resources import teacher
from distillery.resources.teacher import served_teachers, teacher_name

ENDED_BY_TEACHER_REMOVAL = {StageState.PENDING, StageState.WAITING, StageState.RUNNING, StageState.SUCCEEDED}
"""Teacher stage states that its removal ends. Pending and Waiting too: labeling may have run under a status
that never recorded the teacher (an operator killed before each of its status writes)."""


def _views(ctx: Pass, served: list[int]) -> dict[int, DeploymentView | None]:
    return {i: ctx.obs.deployments.get(teacher_name(ctx.owner, ctx.spec, i)) for i in served}


def teacher_stage(ctx: Pass) -> None:
    """Serve the in-cluster teachers until labeling is over; reused labels and endpoints need none."""
    if ctx.spec.dataset.labels_from:
        # Reused labels need no teacher: that is their point.
        if ctx.stage(Stage.TEACHER).state != StageState.SKIPPED:
            message = f"labels reused from {ctx.spec.dataset.labels_from}; no teacher is started"
            ctx.finish(Stage.TEACHER, StageState.SKIPPED, message)
            ctx.cond("TeacherReady", False, "LabelsReused", message)
        return
    served = served_teachers(ctx.spec)
    if not served:
        _endpoints_only(ctx)
        return
    # A finished labeling Job ends the teachers' use even before status records it (an operator restarted
    # between deleting the teachers and writing that status must not start them again).
    label_job = ctx.obs.label_job
    if ctx.done(Stage.LABELING) or (label_job is not None and label_job.finished):
        _after_labeling(ctx, served)
        return
    _serve(ctx, served)


def _endpoints_only(ctx: Pass) -> None:
    skipped, used = teacher_words(ctx.spec).endpoints()
    if ctx.stage(Stage.TEACHER).state != StageState.SKIPPED:
        ctx.finish(Stage.TEACHER, StageState.SKIPPED, skipped)
    ctx.cond("TeacherReady", True, "ExternalEndpoint", used)


def _after_labeling(ctx: Pass, served: list[int]) -> None:
    """Labeling is over: kept teachers stay applied, the judging teacher serves on."""
    members = ctx.spec.teacher_list()
    held = [i for i in served if members[i].keep_after_labeling or judge_holds_teacher(ctx)]
    for i in held:
        if teacher_name(ctx.owner, ctx.spec, i) in ctx.obs.deployments:
            ctx.apply(teacher.teacher_deployment(ctx.owner, ctx.spec, ctx.config, i))
    if judge_holds_teacher(ctx):
        judging_teacher(ctx)
    if held == served:
        served_before_recorded(ctx, list(_views(ctx, held).values()), teacher_words(ctx.spec).kept(held))


def _serve(ctx: Pass, served: list[int]) -> None:
    members, words = ctx.spec.teacher_list(), teacher_words(ctx.spec)
    views = _views(ctx, served)
    if all(view is None for view in views.values()):
        if wait_for_teachers_gpus(ctx, [members[i] for i in served]):
            return
        ctx.start(Stage.TEACHER, StageState.RUNNING, words.starting(served))
    for i in served:
        ctx.apply(teacher.teacher_deployment(ctx.owner, ctx.spec, ctx.config, i))
        ctx.apply(teacher.teacher_service(ctx.owner, ctx.spec, i))
    waiting = [i for i in served if not ((view := views[i]) is not None and view.available)]
    if not waiting:
        teacher_serving(ctx, *words.serving(served, views))
        return
    # A teacher that was ready and lost its pods goes back to starting; labeling waits and resumes.
    reason, message = not_ready(ctx, Stage.TEACHER, views[waiting[0]], words.not_serving(waiting))
    ctx.start(Stage.TEACHER, StageState.RUNNING, message)
    ctx.cond("TeacherReady", False, reason, message)


def served_before_recorded(ctx: Pass, views: list[DeploymentView | None], message: str) -> None:
    """Labeling ran, so the teachers served, even if no status of this Distillation ever said so (an
    operator killed before each of its status writes). A teacher kept after labeling gets its record back
    from its Deployments here; a removed one from release_teacher. Without that the stage would stay
    pending, and the Distillation would never succeed."""
    if not ctx.done(Stage.TEACHER) and all(view is not None and view.available for view in views):
        ctx.transition(Stage.TEACHER, StageState.SUCCEEDED, message)
        ctx.cond("TeacherReady", True, "Serving", message)


def teacher_serving(ctx: Pass, message: str, event: str) -> None:
    """The teacher stage succeeded (once: the Event is posted when it first does)."""
    if ctx.stage(Stage.TEACHER).state != StageState.SUCCEEDED:
        ctx.transition(Stage.TEACHER, StageState.SUCCEEDED, message)
        ctx.event("TeacherReady", event)
    ctx.cond("TeacherReady", True, "Serving", message)


def present_teachers(ctx: Pass) -> list[str]:
    """The teacher Deployments of this Distillation that exist."""
    return [name for i in served_teachers(ctx.spec)
            if (name := teacher_name(ctx.owner, ctx.spec, i)) in ctx.obs.deployments]


def judge_uses_teacher(ctx: Pass) -> bool:
    """evaluation.judge is the in-cluster teacher: it serves until evaluation is over. The spec allows it
    only with a single teacher."""
    judge = ctx.spec.evaluation.judge
    return bool(judge is not None and judge.teacher and ctx.spec.evaluation.enabled
                and ctx.spec.teacher_list()[0].endpoint is None)


def judge_holds_teacher(ctx: Pass) -> bool:
    return judge_uses_teacher(ctx) and not ctx.done(Stage.EVALUATION)


def _judge_view(ctx: Pass) -> DeploymentView | None:
    return ctx.obs.deployments.get(teacher_name(ctx.owner, ctx.spec, 0))


def judge_ready(ctx: Pass) -> bool:
    view = _judge_view(ctx)
    return not judge_holds_teacher(ctx) or (view is not None and view.available)


def judging_teacher(ctx: Pass) -> None:
    """After labeling, the judging teacher serves on until evaluation is done; removed while suspended, it
    comes back on resume."""
    if _judge_view(ctx) is None:
        ctx.apply(teacher.teacher_deployment(ctx.owner, ctx.spec, ctx.config))
        ctx.apply(teacher.teacher_service(ctx.owner, ctx.spec))
    if judge_ready(ctx):
        ctx.cond("TeacherReady", True, "Serving", "serving as the evaluation judge")
    else:
        reason, message = not_ready(ctx, Stage.TEACHER, _judge_view(ctx),
                                    "the teacher, which judges the evaluation, is not serving yet")
        ctx.cond("TeacherReady", False, reason, message)


def wait_for_judge(ctx: Pass) -> bool:
    """The evaluation Job starts only once the teacher that judges it serves."""
    if judge_ready(ctx):
        return False
    ctx.start(Stage.EVALUATION, StageState.WAITING, "waiting for the teacher, which judges the evaluation")
    ctx.cond("Evaluated", False, "WaitingForJudge", "waiting for the teacher, which judges the evaluation")
    return True


def release_after_labeling(ctx: Pass) -> None:
    if ctx.done(Stage.LABELING) and not judge_holds_teacher(ctx):
        release_teacher(ctx)


def release_teacher(ctx: Pass) -> None:
    """Give the teachers' GPUs back once labeling is over (or failed), unless asked to keep them; a teacher
    that judges the evaluation goes once evaluation is over. The stage's GPU-hours (and each of several
    teachers') count from the teacher stage's start until now; a kept teacher's are not counted."""
    members = ctx.spec.teacher_list()
    removed = [i for i in served_teachers(ctx.spec) if not members[i].keep_after_labeling]
    if not removed or ctx.teacher_released:
        return
    ctx.teacher_released = True
    for i in removed:
        name = teacher_name(ctx.owner, ctx.spec, i)
        if name in ctx.obs.deployments:
            ctx.delete("Deployment", name)
        if ("Service", name) in ctx.obs.applied:
            ctx.delete("Service", name)
    record = ctx.stage(Stage.TEACHER)
    if record.state not in ENDED_BY_TEACHER_REMOVAL:
        return
    hours = hours_between(record.start_time, ctx.now)
    reason, message = _removal(ctx)
    ctx.transition(Stage.TEACHER, StageState.REMOVED, message, ended=True,
                   gpus=sum(members[i].replicas * members[i].gpus for i in removed))
    ctx.cond("TeacherReady", False, reason, message)
    if ctx.spec.several_teachers:
        stats = ctx.teacher_stats()
        for i in removed:
            stats[i].gpu_hours = round(members[i].replicas * members[i].gpus * hours, 4)


def _removal(ctx: Pass) -> tuple[str, str]:
    """Why the teacher stage ended, as TeacherReady's reason and message."""
    words = teacher_words(ctx.spec)
    who, whose = words.who, words.whose
    failed = ctx.failed_stage()
    if failed is not None:
        return "RemovedAfterFailure", f"{who} removed after the {failed.value} stage failed, to free {whose} GPUs"
    if judge_uses_teacher(ctx) and ctx.done(Stage.EVALUATION):
        return "RemovedAfterEvaluation", f"{who} removed after evaluation, which it judged, to free {whose} GPUs"
    return "RemovedAfterLabeling", f"{who} removed after labeling to free {whose} GPUs"


def suspend_teachers(ctx: Pass) -> None:
    """The teachers hold GPUs while idle; they are recreated on resume (their state is the model, not data)."""
    present = present_teachers(ctx)
    if present and not ctx.done(Stage.LABELING):
        for name in present:
            ctx.delete("Deployment", name)
        ctx.start(Stage.TEACHER, StageState.PENDING, "removed while suspended")
        ctx.cond("TeacherReady", False, "Suspended", "the teacher is removed while suspended")
    elif present and judge_holds_teacher(ctx):
        # Labeling is done, so its stage record stays; the judge comes back on resume (judging_teacher).
        for name in present:
            ctx.delete("Deployment", name)
        ctx.cond("TeacherReady", False, "Suspended", "the judging teacher is removed while suspended")
