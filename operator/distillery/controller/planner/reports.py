"""Folding what the stage pods report (termination messages, live progress) into status.

What each stage's pods write, and how several pods' reports merge, is `api/reports.py`'s: the planner reads
the typed reports only.
"""

from datetime import UTC, datetime
from typing import Any

from distillery.api.reports import (
    REPORT_OF_STAGE,
    EvaluationReport,
    EvaluationResult,
    GenerationReport,
    LabelingReport,
    Report,
    TrainingReport,
    parse_progress_key,
)
from distillery.api.status import STAGE_CONDITION, LabelsRecord, ModelScore, Stage, StageState, StageStatus, format_time
from distillery.controller.planner.context import Pass
from distillery.resources import jobs, pipeline_json


def _judge_scores(entry: EvaluationResult) -> dict[str, Any]:
    """evaluation.judge's numbers in one evaluator result entry, those it has."""
    found: dict[str, Any] = {key: round(value, 2) for key, value in (("judge", entry.judge),
                                                                     ("persona", entry.persona))
                             if value is not None}
    if entry.unjudged is not None:
        found["unjudged"] = entry.unjudged
    return found


def describe(ctx: Pass, stage: Stage, report: Report | None) -> str:
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
    if stage == Stage.EVALUATION and ctx.status.results:
        return ", ".join(f"{r.model} {r.score:.2f}" for r in ctx.status.results)
    return f"{stage.value} job completed"


def live_progress(ctx: Pass) -> None:
    """Fold what running pods reported into status.progress (finished stages keep their final summary)."""
    texts: dict[str, list[str]] = {}
    for key, value in sorted(ctx.obs.progress.items()):
        parsed = parse_progress_key(key)
        if parsed is not None and parsed[0] in REPORT_OF_STAGE:
            texts.setdefault(parsed[0], []).append(value)

    def running(stage: Stage) -> bool:
        return bool(texts.get(stage.value)) and ctx.stage(stage).state == StageState.RUNNING

    if running(Stage.GENERATION):
        generation = GenerationReport.parse_all(texts[jobs.GENERATION])
        if generation:
            generation_progress(ctx, generation[0])
    if running(Stage.LABELING):
        shards = LabelingReport.parse_all(texts[jobs.LABELING])
        if shards:
            labeling_progress(ctx, LabelingReport.merge(shards))
            teacher_outage(ctx, shards)
    if running(Stage.TRAINING):
        ranks = TrainingReport.parse_all(texts[jobs.TRAINING])
        if ranks:
            lead = TrainingReport.merge(ranks)
            p = ctx.progress()
            p.train_step = lead.step or 0
            p.train_steps = lead.total_steps or None
            p.train_loss = round(lead.loss, 4) if lead.loss is not None else None


def progress_line(ctx: Pass, stage: Stage, record: StageStatus) -> str:
    p = ctx.status.progress
    generate = ctx.spec.dataset.generate
    if stage == Stage.GENERATION and p and generate and p.inputs_kept is not None:
        return f"generating {p.inputs_kept}/{generate.count}"
    if stage == Stage.LABELING and p and p.rows_total:
        return f"labeling {(p.rows_labeled or 0) + (p.rows_rejected or 0)}/{p.rows_total}"
    if stage == Stage.TRAINING and p and p.train_steps:
        loss = f" loss {p.train_loss:.3f}" if p.train_loss is not None else ""
        return f"training {p.train_step or 0}/{p.train_steps}{loss}"
    return f"{stage.value}: {record.state.value.lower()}"


def labeling_summary(ctx: Pass, report: Report | None) -> None:
    labeled = report if isinstance(report, LabelingReport) else None
    if labeled is not None:
        labeling_progress(ctx, labeled)
    # What another Distillation's dataset.labelsFrom compares with its own before reusing these labels.
    ctx.status.labels = LabelsRecord(fingerprint=pipeline_json.labels_fingerprint(ctx.spec),
                                     rows=labeled.rows_ok if labeled is not None else None,
                                     reused_from=pipeline_json.labels_source_uri(ctx.spec))


def labeling_progress(ctx: Pass, report: LabelingReport) -> None:
    """The labeler's counters (every shard's live reports, or the final summary, merged) in status terms."""
    p = ctx.progress()
    p.rows_labeled, p.rows_rejected, p.rows_total = report.rows_ok, report.rows_rejected, report.rows_total
    p.teacher_tokens_in, p.teacher_tokens_out = report.tokens_in, report.tokens_out
    if not ctx.spec.several_teachers:
        return
    p.rows_disagreed = report.rows_disagreed
    for stats in ctx.teacher_stats():
        counts = report.teachers.get(stats.name)
        stats.rows_answered = counts.answered if counts else 0
        stats.rows_agreed = counts.agreed if counts else 0
        stats.agreement_rate = (round(stats.rows_agreed / stats.rows_answered, 4)
                                if stats.rows_answered else None)
        stats.tokens_in = counts.tokens_in if counts else 0
        stats.tokens_out = counts.tokens_out if counts else 0


def teacher_outage(ctx: Pass, reports: list[LabelingReport]) -> None:
    """A labeler that waits out a teacher outage says so in its live report; the stage says why it stalls."""
    waiting = [r for r in reports if r.teacher_unreachable_since is not None]
    if not waiting:
        return
    first = LabelingReport.merge(waiting)
    since = format_time(datetime.fromtimestamp(first.teacher_unreachable_since or 0, UTC))
    budget = ctx.spec.primary_teacher.outage_budget_seconds
    message = (f"{len(waiting)} labeling shard(s) wait for the teacher, unreachable since {since} "
               f"({first.teacher_error or ''}); they give up after teacher.outageBudgetSeconds ({budget} s) "
               "and resume from the rows already labeled")
    ctx.cond(STAGE_CONDITION[Stage.LABELING], False, "WaitingForTeacher", message)


def training_summary(ctx: Pass, report: Report | None) -> None:
    if not isinstance(report, TrainingReport):
        return
    p = ctx.progress()
    p.train_step = report.steps
    p.train_steps = report.total_steps if report.total_steps is not None else report.steps
    p.train_loss = round(report.final_loss, 4) if report.final_loss is not None else None


def evaluation_summary(ctx: Pass, report: Report | None) -> None:
    if not isinstance(report, EvaluationReport):
        return
    metric = report.metric or "score"
    scores = [ModelScore(model=r.model, prompt=r.prompt, metric=metric, score=round(r.score, 2), rows=r.rows,
                         **_judge_scores(r))
              for r in report.results if r.score is not None]
    if scores:
        ctx.status.results = scores


def generation_summary(ctx: Pass, report: Report | None) -> None:
    if isinstance(report, GenerationReport):
        generation_progress(ctx, report)


def generation_progress(ctx: Pass, report: GenerationReport) -> None:
    p = ctx.progress()
    p.inputs_generated, p.inputs_kept, p.inputs_rejected = report.generated, report.kept, report.rejected
    p.input_rejections = dict(report.rejections) or None
