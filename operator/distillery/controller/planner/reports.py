"""Folding what the stage pods report (termination messages, live progress) into status."""

import json
from datetime import UTC, datetime
from typing import Any

from distillery.api.status import STAGE_CONDITION, LabelsRecord, ModelScore, Stage, StageState, StageStatus, format_time
from distillery.controller.planner.context import Pass
from distillery.resources import jobs, pipeline_json


def _summary(messages: list[str]) -> dict[str, Any]:
    """Merge the JSON termination messages of a stage's pods (one per shard or node)."""
    merged: dict[str, Any] = {}
    for message in messages:
        try:
            data = json.loads(message)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and isinstance(merged.get(key), int | float):
                # Counts add up across shards; losses and times do not.
                merged[key] = merged[key] + value if key not in ("loss", "final_loss", "wall_seconds") else value
            else:
                merged.setdefault(key, value)
    return merged


def _judge_scores(entry: dict[str, Any]) -> dict[str, Any]:
    """evaluation.judge's numbers in one evaluator result entry, those that are numbers."""
    found: dict[str, Any] = {}
    for key in ("judge", "persona"):
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = round(float(value), 2)
    unjudged = entry.get("unjudged")
    if isinstance(unjudged, int) and not isinstance(unjudged, bool):
        found["unjudged"] = unjudged
    return found


def describe(ctx: Pass, stage: Stage, summary: dict[str, Any]) -> str:
    if stage == Stage.LABELING and summary.get("reused_from"):
        return (f"{summary.get('rows_ok', 0)} labels reused from {summary['reused_from']}, "
                f"{summary.get('rows_rejected', 0)} rejected; the teacher was not asked")
    if stage == Stage.GENERATION and "kept" in summary:
        reasons = summary.get("rejections") or {}
        detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        return (f"{summary.get('generated', 0)} inputs generated, {summary['kept']} kept, "
                f"{summary.get('rejected', 0)} rejected" + (f" ({detail})" if detail else ""))[:1000]
    if stage == Stage.LABELING and "rows_ok" in summary:
        return f"{summary['rows_ok']} rows labeled, {summary.get('rows_rejected', 0)} rejected"
    if stage == Stage.TRAINING and "steps" in summary:
        # student.loss kd: how many examples the teacher's distribution reached (the rest trained on text alone).
        kd = (f", logit distillation on {summary['kd_examples']} of {summary.get('examples', '?')} examples"
              if "kd_examples" in summary else "")
        return f"{summary['steps']} optimizer steps, final loss {summary.get('final_loss', '?')}{kd}"
    if stage == Stage.EVALUATION and ctx.status.results:
        return ", ".join(f"{r.model} {r.score:.2f}" for r in ctx.status.results)
    return f"{stage.value} job completed"


def live_progress(ctx: Pass) -> None:
    """Fold what running pods reported into status.progress (finished stages keep their final summary)."""
    shards: dict[str, list[dict[str, Any]]] = {}
    for key, value in sorted(ctx.obs.progress.items()):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            shards.setdefault(key.rsplit("-", 1)[0], []).append(data)
    if shards.get(jobs.GENERATION) and ctx.stage(Stage.GENERATION).state == StageState.RUNNING:
        generation_progress(ctx, shards[jobs.GENERATION][0])
    if shards.get(jobs.LABELING) and ctx.stage(Stage.LABELING).state == StageState.RUNNING:
        labeling_progress(ctx, shards[jobs.LABELING])
        teacher_outage(ctx, shards[jobs.LABELING])
    if shards.get(jobs.TRAINING) and ctx.stage(Stage.TRAINING).state == StageState.RUNNING:
        lead = max(shards[jobs.TRAINING], key=lambda r: int(r.get("step", 0)))
        p = ctx.progress()
        p.train_step = int(lead.get("step", 0))
        p.train_steps = int(lead.get("total_steps", 0)) or None
        loss = lead.get("loss")
        p.train_loss = round(float(loss), 4) if isinstance(loss, int | float) else None


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


def labeling_summary(ctx: Pass, summary: dict[str, Any]) -> None:
    if summary:
        labeling_progress(ctx, [summary])
    # What another Distillation's dataset.labelsFrom compares with its own before reusing these labels.
    ctx.status.labels = LabelsRecord(fingerprint=pipeline_json.labels_fingerprint(ctx.spec),
                                      rows=int(summary.get("rows_ok", 0)) if summary else None,
                                      reused_from=pipeline_json.labels_source_uri(ctx.spec))


def labeling_progress(ctx: Pass, reports: list[dict[str, Any]]) -> None:
    """The labeler's counters (live reports of every shard, or the final summary) in status terms."""
    p = ctx.progress()
    p.rows_labeled = sum(int(r.get("rows_ok", 0)) for r in reports)
    p.rows_rejected = sum(int(r.get("rows_rejected", 0)) for r in reports)
    p.rows_total = sum(int(r.get("rows_total", 0)) for r in reports)
    p.teacher_tokens_in = sum(int(r.get("tokens_in", 0)) for r in reports)
    p.teacher_tokens_out = sum(int(r.get("tokens_out", 0)) for r in reports)
    if ctx.spec.teachers is None:
        return
    p.rows_disagreed = sum(int(r.get("rows_disagreed", 0)) for r in reports)
    for stats in ctx.teacher_stats():
        def total(key: str, name: str = stats.name) -> int:
            return sum(int(r.get(f"teacher.{name}.{key}", 0)) for r in reports)
        stats.rows_answered, stats.rows_agreed = total("answered"), total("agreed")
        stats.agreement_rate = (round(stats.rows_agreed / stats.rows_answered, 4)
                                if stats.rows_answered else None)
        stats.tokens_in, stats.tokens_out = total("tokens_in"), total("tokens_out")


def teacher_outage(ctx: Pass, reports: list[dict[str, Any]]) -> None:
    """A labeler that waits out a teacher outage says so in its live report; the stage says why it stalls."""
    waiting = [r for r in reports if isinstance(r.get("teacher_unreachable_since"), int)]
    if not waiting:
        return
    first = min(waiting, key=lambda r: int(r["teacher_unreachable_since"]))
    since = format_time(datetime.fromtimestamp(int(first["teacher_unreachable_since"]), UTC))
    budget = ctx.spec.primary_teacher.outage_budget_seconds
    message = (f"{len(waiting)} labeling shard(s) wait for the teacher, unreachable since {since} "
               f"({first.get('teacher_error', '')}); they give up after teacher.outageBudgetSeconds ({budget} s) "
               "and resume from the rows already labeled")
    ctx.cond(STAGE_CONDITION[Stage.LABELING], False, "WaitingForTeacher", message)


def training_summary(ctx: Pass, summary: dict[str, Any]) -> None:
    if not summary:
        return
    p = ctx.progress()
    p.train_step = summary.get("steps")
    p.train_steps = summary.get("total_steps", summary.get("steps"))
    loss = summary.get("final_loss")
    p.train_loss = round(float(loss), 4) if isinstance(loss, int | float) else None


def evaluation_summary(ctx: Pass, summary: dict[str, Any]) -> None:
    metric = str(summary.get("metric", "score"))
    scores = []
    for r in summary.get("results") or []:
        try:
            scores.append(ModelScore(model=str(r["model"]), prompt=str(r.get("prompt", "")), metric=metric,
                                     score=round(float(r["score"]), 2), rows=int(r.get("rows", 0)),
                                     **_judge_scores(r)))
        except (KeyError, TypeError, ValueError):
            continue
    if scores:
        ctx.status.results = scores


def generation_summary(ctx: Pass, summary: dict[str, Any]) -> None:
    if summary:
        generation_progress(ctx, summary)


def generation_progress(ctx: Pass, report: dict[str, Any]) -> None:
    p = ctx.progress()
    p.inputs_generated = int(report.get("generated", 0))
    p.inputs_kept = int(report.get("kept", 0))
    p.inputs_rejected = int(report.get("rejected", 0))
    reasons = report.get("rejections")
    if isinstance(reasons, dict):
        p.input_rejections = {str(k): int(v) for k, v in reasons.items() if isinstance(v, int)} or None
