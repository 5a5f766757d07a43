"""The stage pods' reports (api/reports.py): what each program writes parses, reports of several pods merge
the way their stage runs (shards add up, a training group reports once), and the planner folds them into
status (issue 17, item 1 and bug 1)."""

import json

import pytest
from pydantic import ValidationError

from distillery.api.reports import (
    EvaluationReport,
    GenerationReport,
    LabelingReport,
    TeacherCounts,
    TrainingReport,
    parse_progress_key,
    parse_teacher_count_key,
    progress_key,
    stage_report,
    teacher_count_key,
)
from distillery.api.status import Stage, StageState
from tests.unit.planner_world import H100, World, make_spec

# What the labeler writes today (workloads/labeler.py, which converts to LabelingReport after issue 17).
LABELER_SUMMARY = {"stage": "label", "shard": 1, "shards": 2, "rows_done": 50, "rows_ok": 45, "rows_rejected": 5,
                   "rows_total": 50, "tokens_in": 4000, "tokens_out": 900, "rows_resumed": 10,
                   "rows_unlabeled": 0, "success_ratio": 0.9, "requests": 57, "wall_seconds": 12.5,
                   "rows_per_second": 3.2}
SEVERAL_TEACHERS_SNAPSHOT = {"rows_done": 4, "rows_ok": 4, "rows_rejected": 0, "rows_total": 10, "tokens_in": 80,
                             "tokens_out": 20, "rows_disagreed": 1,
                             "teacher.big.answered": 4, "teacher.big.agreed": 3, "teacher.big.tokens_in": 40,
                             "teacher.big.tokens_out": 10, "teacher.small.answered": 3, "teacher.small.agreed": 3,
                             "teacher.small.tokens_in": 40, "teacher.small.tokens_out": 10}
OUTAGE_SNAPSHOT = {"rows_done": 2, "rows_ok": 2, "rows_rejected": 0, "rows_total": 10, "tokens_in": 8,
                   "tokens_out": 2, "teacher_unreachable_since": 1_800_000_000,
                   "teacher_error": "connection refused"}
REUSE_SUMMARY = {"stage": "label", "reused_from": "pvc://other-workspace/", "rows_done": 12, "rows_ok": 11,
                 "rows_rejected": 1, "rows_total": 12, "tokens_in": 0, "tokens_out": 0}


def node_lead_message(rank: int, train_seconds: float, world_size: int = 4, **outputs: str) -> str:
    """The termination message of one training node's lead process, built as workloads/trainer.py builds it:
    every node lead reports the whole group's steps, loss and world size; only rank 0 saves outputs."""
    return json.dumps(TrainingReport(
        rank=rank, steps=40, resumed_from_step=0, final_loss=0.41, tokens_per_second=1234.5,
        train_seconds=train_seconds, wall_time_seconds=train_seconds + 30, world_size=world_size,
        examples=900, rejected=3, bad_rows=0, truncated=2, dropped=0, **outputs).dump())


def training_world(nodes: int) -> World:
    """A Distillation whose labeling finished and whose training Job was just created."""
    w = World(make_spec(**{"student.nodes": nodes}), nodes=(H100,) * nodes)
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label", json.dumps(LabelingReport(rows_ok=90, rows_rejected=10, rows_total=100).dump()),
                   Stage.LABELING.value)
    w.step(30)
    assert w.has("Job", "demo-train")
    return w


def test_two_nodes_report_their_forty_steps_once_not_twice() -> None:
    """Bug 1: every training node's rank 0 writes a termination message; adding them up said 80 steps."""
    w = training_world(nodes=2)
    messages = [node_lead_message(0, 600.25, adapter="/workspace/train/adapter"), node_lead_message(2, 600.75)]
    for message in messages:
        w.complete_job("demo-train", message, Stage.TRAINING.value)
    w.step(60)
    training = w.status.stages[Stage.TRAINING.value]
    assert training.state == StageState.SUCCEEDED
    assert training.message == "40 optimizer steps, final loss 0.41"
    assert w.status.progress is not None
    assert (w.status.progress.train_step, w.status.progress.train_steps) == (40, 40)
    assert w.status.progress.train_loss == 0.41
    merged = stage_report(Stage.TRAINING.value, reversed(messages))
    assert isinstance(merged, TrainingReport)
    assert (merged.world_size, merged.train_seconds, merged.adapter) == (4, 600.25, "/workspace/train/adapter")


def test_live_training_progress_comes_from_the_lead_rank() -> None:
    w = training_world(nodes=2)
    w.step()
    w.children[("ConfigMap", "demo-progress")]["data"] = {
        progress_key(Stage.TRAINING.value, 0): json.dumps(TrainingReport(rank=0, step=12, total_steps=40,
                                                                         loss=1.2345).dump()),
        progress_key(Stage.TRAINING.value, 2): json.dumps(TrainingReport(rank=2, step=12, total_steps=40,
                                                                         loss=1.2345).dump()),
    }
    w.step()
    assert w.status.progress_summary == "training 12/40 loss 1.234"


def test_a_replaced_labeling_pods_counts_are_not_added_to_its_replacements() -> None:
    """The pod that gave up while the teacher was unreachable reported counts its replacement reports again."""
    w = World(make_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    gave_up = LabelingReport(rows_done=30, rows_ok=30, rows_total=100, error="30 rows not labeled, the teacher "
                             "kept failing; a rerun resumes")
    finished = LabelingReport(rows_done=100, rows_ok=95, rows_rejected=5, rows_total=100, rows_resumed=30)
    w.complete_job("demo-label", json.dumps(gave_up.dump()), Stage.LABELING.value)
    w.complete_job("demo-label", json.dumps(finished.dump()), Stage.LABELING.value)
    w.step()
    assert w.status.stages[Stage.LABELING.value].message == "95 rows labeled, 5 rejected"
    assert w.status.labels is not None and w.status.labels.rows == 95


def test_a_message_that_is_no_report_never_stops_the_operator() -> None:
    w = World(make_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.children[("ConfigMap", "demo-progress")]["data"] = {
        progress_key(Stage.LABELING.value, 0): json.dumps({"rows_ok": "many", "rows_total": 10}),
        progress_key(Stage.LABELING.value, 1): json.dumps({"rows_ok": 3, "rows_total": 10}),
        "notes": "not a pod's key"}
    w.step()
    assert w.status.progress is not None and w.status.progress.rows_labeled == 3
    w.complete_job("demo-label", json.dumps({"rows_ok": [1, 2]}), Stage.LABELING.value)
    w.step()
    assert w.status.stages[Stage.LABELING.value].state == StageState.SUCCEEDED
    assert w.status.stages[Stage.LABELING.value].message == "labeling job completed"


def test_progress_keys_have_one_builder_and_one_parser() -> None:
    assert progress_key(Stage.LABELING.value, 3) == "labeling-00003"
    assert parse_progress_key(progress_key(Stage.TRAINING.value, 12)) == ("training", 12)
    for other in ("notes", "labeling-", "-00001", "labeling-1a"):
        assert parse_progress_key(other) is None


def test_teacher_count_keys_have_one_builder_and_one_parser() -> None:
    assert teacher_count_key("big", "agreed") == "teacher.big.agreed"
    assert parse_teacher_count_key("teacher.big.agreed") == ("big", "agreed")
    for other in ("teacher.big", "teacher..agreed", "rows_ok", "teacher_error"):
        assert parse_teacher_count_key(other) is None


@pytest.mark.parametrize("written", [LABELER_SUMMARY, SEVERAL_TEACHERS_SNAPSHOT, OUTAGE_SNAPSHOT, REUSE_SUMMARY],
                         ids=["summary", "several-teachers", "outage", "reuse"])
def test_what_the_labeler_writes_today_parses_and_writes_back_the_same(written: dict[str, object]) -> None:
    report = LabelingReport.parse(json.dumps(written))
    assert report is not None
    assert report.dump() == written


def test_several_teachers_counts_are_read_per_teacher() -> None:
    report = LabelingReport.parse(json.dumps(SEVERAL_TEACHERS_SNAPSHOT))
    assert report is not None
    assert report.teachers == {"big": TeacherCounts(answered=4, agreed=3, tokens_in=40, tokens_out=10),
                               "small": TeacherCounts(answered=3, agreed=3, tokens_in=40, tokens_out=10)}


def test_labeling_shards_add_up_and_the_earliest_outage_is_kept() -> None:
    late = {**OUTAGE_SNAPSHOT, "teacher_unreachable_since": 1_800_000_100, "teacher_error": "HTTP 503"}
    shards = LabelingReport.parse_all(json.dumps(r) for r in (SEVERAL_TEACHERS_SNAPSHOT, late, OUTAGE_SNAPSHOT))
    merged = LabelingReport.merge(shards)
    assert (merged.rows_ok, merged.rows_total, merged.tokens_in, merged.rows_disagreed) == (8, 30, 96, 1)
    assert merged.teachers["big"].answered == 4 and merged.teachers["small"].tokens_in == 40
    assert (merged.teacher_unreachable_since, merged.teacher_error) == (1_800_000_000, "connection refused")
    assert merged.success_ratio == 1.0


def test_generation_counts_and_reasons_add_up() -> None:
    one = GenerationReport(generated=5, kept=4, rejected=1, rejections={"truncated": 1})
    two = GenerationReport(generated=3, kept=1, rejected=2, rejections={"truncated": 1, "not a JSON object": 1})
    merged = GenerationReport.merge([one, two])
    assert (merged.generated, merged.kept, merged.rejected) == (8, 5, 3)
    assert merged.rejections == {"truncated": 2, "not a JSON object": 1}


def test_keys_a_newer_pod_adds_are_ignored_and_malformed_messages_read_as_none() -> None:
    report = TrainingReport.parse(json.dumps({"steps": 3, "final_loss": 0.5, "gpu_temperature": 71}))
    assert report is not None and report.steps == 3 and "gpu_temperature" not in report.dump()
    for text in ("not json", "[1, 2]", "null", json.dumps({"steps": "three"}), "{" * 100_000):
        assert TrainingReport.parse(text) is None


def test_writers_cannot_add_keys_the_models_do_not_define() -> None:
    with pytest.raises(ValidationError):
        TrainingReport.model_validate({"stpes": 3})
    report = GenerationReport()
    with pytest.raises(ValidationError):
        report.kept = "many"  # type: ignore[assignment]


def test_a_report_writes_only_the_keys_its_writer_set() -> None:
    assert TrainingReport(rank=0, step=3, total_steps=40, loss=None).dump() == {
        "rank": 0, "step": 3, "total_steps": 40, "loss": None}
    assert LabelingReport(teachers={"big": TeacherCounts(answered=2)}).dump() == {"teacher.big.answered": 2}


def test_evaluation_results_that_do_not_read_are_left_out_not_the_report() -> None:
    report = EvaluationReport.parse(json.dumps({"metric": "accuracy", "rows": 8, "results": [
        {"model": "teacher", "prompt": "cot", "score": None, "rows": 0, "note": "no gold answers"},
        {"model": "distilled-student", "prompt": "short", "score": "high", "rows": 8},
        {"prompt": "short", "score": 50.0},
        {"model": "base-student", "prompt": "cot", "score": 51.2, "rows": 8, "judge": 63.0, "unjudged": 1}]}))
    assert report is not None
    assert [(r.model, r.score) for r in report.results] == [("teacher", None), ("base-student", 51.2)]
    assert report.results[1].judge == 63.0 and report.results[1].unjudged == 1


def test_a_finished_stage_reads_only_the_pods_that_succeeded() -> None:
    failed = json.dumps(LabelingReport(rows_ok=5, rows_total=10, error="gave up").dump())
    done = json.dumps(LabelingReport(rows_ok=9, rows_total=10).dump())
    merged = stage_report(Stage.LABELING.value, [failed, done], succeeded=True)
    assert isinstance(merged, LabelingReport) and merged.rows_ok == 9
    live = stage_report(Stage.LABELING.value, [failed, done])
    assert isinstance(live, LabelingReport) and live.rows_ok == 14
    assert stage_report(Stage.LABELING.value, [failed], succeeded=True) is None

