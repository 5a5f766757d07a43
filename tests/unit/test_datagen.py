"""Generated inputs and reused labels: validation, near-duplicate removal, the planner's stages and checks."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from distillery.api.config import OperatorConfig
from distillery.api.pipeline import PipelineConfig
from distillery.api.spec import DistillationSpec, PromptSpec, Task
from distillery.api.status import Phase, StageState
from distillery.resources import jobs, pipeline_json
from distillery.resources.common import Owner
from distillery.workloads.generator import (
    DUPLICATE_OF,
    EMPTY,
    MISSING,
    NOT_JSON,
    UNREADABLE,
    WRONG_TYPE,
    Generator,
    NearDuplicates,
    Rejected,
    input_columns,
    parse_input,
    row_text,
)
from distillery.workloads.tasks import get_task
from tests.unit.planner_world import World, make_spec

SEED = {"premise": "A man is playing a guitar on the street corner.", "hypothesis": "Music is played.",
        "label": 0}
GENERATE = {"seeds": {"rows": [SEED]}, "count": 50}


# Validation ------------------------------------------------------------------------------------------------

def test_generate_may_replace_train_rows() -> None:
    spec = make_spec(**{"dataset": {"generate": GENERATE}})
    assert spec.dataset.train is None and spec.dataset.generate is not None
    with pytest.raises(ValidationError, match=r"dataset\.train is required unless dataset\.generate is set"):
        make_spec(**{"dataset": {"validationFraction": 0.2}})


@pytest.mark.parametrize(("generate", "message"), [
    ({"seeds": {"rows": []}, "count": 5}, "seeds.rows must hold 1 to 100 rows"),
    ({"seeds": {"rows": [SEED] * 101}, "count": 5}, "seeds.rows must hold 1 to 100 rows"),
    ({"seeds": {"rows": [SEED]}, "count": 0}, "count"),
    ({"seeds": {"rows": [SEED]}, "count": 100_001}, "count"),
    ({"seeds": {"rows": [SEED]}, "count": 10, "maxRequests": 5}, "maxRequests must be at least"),
    ({"seeds": {"rows": [SEED]}, "count": 10, "similarityThreshold": 1}, "similarityThreshold"),
    ({"seeds": {"uri": "ftp://x/seeds.jsonl"}, "count": 10}, "uri"),
])
def test_bad_generation_settings_are_refused_naming_the_field(generate: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_spec(**{"dataset.generate": generate})


@pytest.mark.parametrize("source", ["Upper", "-leading", "pvc://", "pvc:///path", "hf://org/set"])
def test_labels_from_is_a_distillation_name_or_a_pvc_path(source: str) -> None:
    with pytest.raises(ValidationError, match=r"labels_from|labelsFrom"):
        make_spec(**{"dataset.labelsFrom": source})
    for good in ("ag-news-qwen", "pvc://labels/runs/ag-news"):
        assert make_spec(**{"dataset.labelsFrom": good}).dataset.labels_from == good


def test_the_crd_carries_the_same_rules() -> None:
    from distillery.api.crd import crd

    text = json.dumps(crd())
    for message in ("dataset.train is required unless dataset.generate is set",
                    "dataset.generate.seeds.rows must hold 1 to 100 rows",
                    "dataset.generate.maxRequests must be at least dataset.generate.count"):
        assert message in text


# Parsing and near-duplicates -------------------------------------------------------------------------------

def test_near_duplicates_are_found_and_distinct_inputs_are_not() -> None:
    dedup = NearDuplicates(0.7)
    columns = ["premise", "hypothesis"]
    dedup.add("seed:0", row_text(SEED, columns))
    # Case and punctuation only, one word changed, a word added: all near-duplicates of the seed.
    for near in ({"premise": "A MAN IS PLAYING A GUITAR ON THE STREET CORNER!", "hypothesis": "music is played"},
                 {"premise": "A man is playing the guitar on the street corner.", "hypothesis": "Music is played."},
                 {"premise": "A man is playing a guitar on the busy street corner.",
                  "hypothesis": "Music is played."}):
        found = dedup.match(row_text(near, columns))
        assert found is not None and found[0] == "seed:0", near
    for distinct in ({"premise": "Two children are building a sandcastle on the beach.",
                      "hypothesis": "The children are in a classroom."},
                     {"premise": "A woman reads a novel on a crowded morning train.",
                      "hypothesis": "The woman is going to work."}):
        assert dedup.match(row_text(distinct, columns)) is None, distinct


def test_input_columns_are_what_the_task_needs() -> None:
    nli = get_task(Task.NLI, PromptSpec(), {})
    assert input_columns(nli, SEED) == ["premise", "hypothesis"]
    mapped = get_task(Task.NLI, PromptSpec(), {"premise": "p", "hypothesis": "h"})
    assert input_columns(mapped, {"p": "x", "h": "y", "gold": "neutral"}) == ["p", "h"]
    custom = get_task(Task.CUSTOM, PromptSpec(user_template="Classify the ticket: {subject} / {body}"), {})
    assert input_columns(custom, {"subject": "s", "body": "b", "answer": "billing"}) == ["subject", "body"]
    mc = get_task(Task.MULTIPLE_CHOICE, PromptSpec(), {})
    assert input_columns(mc, {"question": "q?", "choices": ["a", "b", "c"], "answer": "A"}) == ["question",
                                                                                                 "choices"]


@pytest.mark.parametrize(("reply", "reason"), [
    ("Sure, here is one: premise = a dog", NOT_JSON),
    ('{"premise": "A dog runs."', NOT_JSON),
    ('["A dog runs.", "An animal moves."]', NOT_JSON),
    ('{"premise": "A dog runs."}', MISSING),
    ('{"premise": "A dog runs.", "hypothesis": ""}', EMPTY),
    ('{"premise": "A dog runs.", "hypothesis": ["An animal moves."]}', WRONG_TYPE),
])
def test_replies_that_are_not_the_tasks_columns_are_rejected(reply: str, reason: str) -> None:
    nli = get_task(Task.NLI, PromptSpec(), {})
    with pytest.raises(Rejected) as caught:
        parse_input(reply, ["premise", "hypothesis"], SEED, nli)
    assert caught.value.reason == reason


def test_a_reply_is_kept_in_the_seeds_columns_only() -> None:
    nli = get_task(Task.NLI, PromptSpec(), {})
    row = parse_input('```json\n{"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 2}\n```',
                      ["premise", "hypothesis"], SEED, nli)
    assert row == {"premise": "A dog runs.", "hypothesis": "An animal moves."}


def test_choices_the_task_cannot_read_are_rejected() -> None:
    mc = get_task(Task.MULTIPLE_CHOICE, PromptSpec(), {})
    seed = {"question": "Which is a fruit?", "choices": ["apple", "stone"], "answer": "A"}
    with pytest.raises(Rejected) as caught:
        parse_input('{"question": "Which is blue?", "choices": [{"x": 1}]}', ["question", "choices"], seed, mc)
    assert caught.value.reason in (UNREADABLE, EMPTY)


def test_generated_inputs_are_judged_against_seeds_dataset_rows_and_each_other() -> None:
    cfg = PipelineConfig.model_validate({
        "name": "g", "namespace": "n", "task": "nli", "teacher": {"base_url": "http://x/v1", "model": "t"},
        "dataset": {"generate": GENERATE}, "student": {"model": "s"}})
    assert cfg.dataset.generate is not None
    row = {"premise": "Two children are building a sandcastle on the beach.", "hypothesis": "Kids play."}
    gen = Generator(cfg, get_task(Task.NLI, PromptSpec(), {}), cfg.dataset.generate, [SEED], [row],
                    client=None)  # type: ignore[arg-type]
    reply = json.dumps
    assert gen.judge(0, reply({"premise": SEED["premise"].upper(), "hypothesis": "Music is played"}),
                     "stop").reason == DUPLICATE_OF["seed"]
    assert gen.judge(1, reply(row), "stop").reason == DUPLICATE_OF["row"]
    kept = gen.judge(2, reply({"premise": "A baker pulls bread from a hot oven.", "hypothesis": "Food is made."}),
                     "stop")
    assert kept.status == "kept"
    gen.count(kept)
    again = gen.judge(3, reply({"premise": "A baker pulls bread from the hot oven!", "hypothesis": "Food is made"}),
                      "stop")
    assert again.reason == DUPLICATE_OF["gen"]
    assert gen.judge(4, reply({"premise": "x"}), "length").reason == "truncated"


# The planner -----------------------------------------------------------------------------------------------

def test_generation_runs_between_the_teacher_and_labeling() -> None:
    w = World(make_spec(**{"dataset.generate": GENERATE}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    assert w.has("Job", "demo-gen") and not w.has("Job", "demo-label")
    assert w.status.phase == Phase.GENERATING
    w.complete_job("demo-gen", json.dumps({"generated": 60, "kept": 50, "rejected": 10, "rejections": {
        "near-duplicate of a seed": 4, "not a JSON object": 6}}), "generation")
    w.step()
    record = w.status.stages["generation"]
    assert record.state == StageState.SUCCEEDED
    assert record.message == ("60 inputs generated, 50 kept, 10 rejected (6 not a JSON object, "
                              "4 near-duplicate of a seed)")
    assert w.status.progress is not None and w.status.progress.inputs_kept == 50
    assert w.status.progress.input_rejections == {"near-duplicate of a seed": 4, "not a JSON object": 6}
    assert w.has("Job", "demo-label") and w.has("Deployment", "demo-teacher")


def test_live_generation_progress_reaches_status_and_the_summary_line() -> None:
    w = World(make_spec(**{"dataset.generate": GENERATE}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.children[("ConfigMap", "demo-progress")]["data"] = {"generation-00000": json.dumps(
        {"generated": 24, "kept": 20, "rejected": 4, "rejections": {"missing a column": 4}})}
    w.step()
    assert w.status.progress is not None and w.status.progress.inputs_generated == 24
    assert w.status.progress_summary == "generating 20/50"
    assert w.reason("Reconciling") == "Progressing"


def test_suspend_pauses_generation_and_removes_the_teacher() -> None:
    w = World(make_spec(**{"dataset.generate": GENERATE}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.spec = make_spec(**{"dataset.generate": GENERATE, "suspend": True})
    w.step()
    assert w.children[("Job", "demo-gen")]["spec"]["suspend"] is True
    assert not w.has("Deployment", "demo-teacher")
    w.spec = make_spec(**{"dataset.generate": GENERATE})
    w.step()
    assert w.children[("Job", "demo-gen")]["spec"]["suspend"] is True  # the teacher is not back yet
    w.make_available("demo-teacher")
    w.step()
    # Resumed only against a serving teacher; the pod resumes from generated/log.jsonl.
    assert w.children[("Job", "demo-gen")]["spec"]["suspend"] is False


def test_without_generate_the_stage_is_skipped() -> None:
    w = World(make_spec())
    w.step()
    assert w.status.stages["generation"].state == StageState.SKIPPED
    assert w.reason("Generated") == "NotRequested"


def test_the_generation_job_runs_the_generator_with_the_seeds_claim() -> None:
    spec = make_spec(**{"dataset.generate": {"seeds": {"uri": "pvc://seeds/nli.jsonl"}, "count": 10}})
    job = jobs.generation_job(Owner("demo", "ns", "u"), spec, OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1 and pod["containers"][0]["command"] == ["distillery", "generate"]
    assert {"name": "src-1", "persistentVolumeClaim": {"claimName": "seeds", "readOnly": True}} in pod["volumes"]


def finished_source(spec: DistillationSpec) -> dict[str, Any]:
    return {"metadata": {"name": "first"}, "status": {"labels": {
        "fingerprint": pipeline_json.labels_fingerprint(spec), "rows": 100}}}


def reusing_world(**overrides: Any) -> World:
    return World(make_spec(**{"dataset.labelsFrom": "first", **overrides}))


def test_matching_labels_are_reused_without_a_teacher() -> None:
    w = reusing_world(**{"student.model": "Qwen/Qwen2.5-0.5B-Instruct"})
    w.labels_source = finished_source(make_spec())
    w.step()
    w.step()
    assert not w.has("Deployment", "demo-teacher")
    assert w.status.stages["teacher"].state == StageState.SKIPPED and w.reason("TeacherReady") == "LabelsReused"
    assert w.status.stages["generation"].state == StageState.SKIPPED
    job = w.children[("Job", "demo-label")]
    assert job["spec"]["completions"] == 1
    assert {"name": "src-1", "persistentVolumeClaim": {"claimName": "first-workspace", "readOnly": True}} in \
        job["spec"]["template"]["spec"]["volumes"]
    w.complete_job("demo-label", json.dumps({"stage": "label", "reused_from": "pvc://first-workspace",
                                             "rows_ok": 95, "rows_rejected": 5, "rows_total": 100}), "labeling")
    w.step()
    assert w.status.stages["labeling"].message == ("95 labels reused from pvc://first-workspace, 5 rejected; "
                                                   "the teacher was not asked")
    assert w.status.labels is not None and w.status.labels.reused_from == "pvc://first-workspace"
    assert w.has("Job", "demo-train")


@pytest.mark.parametrize(("change", "part"), [
    ({"teacher.model": "Qwen/Qwen2.5-72B-Instruct"}, "teacher"),
    ({"teacher.sampling": {"temperature": 0.9}}, "teacher"),
    ({"prompt.chainOfThought": False}, "prompt"),
    ({"dataset.train": {"uri": "pvc://data/other.jsonl"}}, "rows"),
    ({"dataset.validationFraction": 0.3}, "rows"),
    ({"task": "math"}, "task"),
])
def test_labels_made_differently_are_refused_naming_what_differs(change: dict[str, Any], part: str) -> None:
    w = reusing_world(**change)
    w.labels_source = finished_source(make_spec())
    w.step()
    assert not w.has("Job", "demo-label")
    assert w.status.phase == Phase.FAILED
    assert w.reason("Labeled") == "LabelsMismatch"
    message = w.status.stages["labeling"].message or ""
    assert f"made with a different {part}" in message or f", {part}" in message, message


def test_reuse_waits_for_the_source_to_exist_and_finish() -> None:
    w = reusing_world()
    w.step()
    assert w.reason("Labeled") == "LabelsSourceNotFound" and w.status.stages["labeling"].state == StageState.WAITING
    w.labels_source = {"metadata": {"name": "first"}, "status": {}}
    w.step()
    assert w.reason("Labeled") == "LabelsSourceNotReady" and not w.has("Job", "demo-label")
    w.labels_source = finished_source(make_spec())
    w.step()
    assert w.has("Job", "demo-label")


def test_a_pvc_source_is_checked_by_the_labeling_pod() -> None:
    w = World(make_spec(**{"dataset.labelsFrom": "pvc://archive/runs/first"}))
    w.step()
    job = w.children[("Job", "demo-label")]
    pipeline = json.loads(w.children[("ConfigMap", "demo-pipeline")]["data"]["pipeline.json"])
    assert pipeline["labelsFrom"] == "pvc://archive/runs/first"
    assert pipeline["labelsFingerprint"] == pipeline_json.labels_fingerprint(w.spec)
    assert {"name": "src-1", "persistentVolumeClaim": {"claimName": "archive", "readOnly": True}} in \
        job["spec"]["template"]["spec"]["volumes"]


def test_finished_labels_record_their_fingerprint() -> None:
    w = World(make_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label", json.dumps({"rows_ok": 90, "rows_rejected": 10, "rows_total": 100}), "labeling")
    w.step()
    assert w.status.labels is not None
    assert w.status.labels.fingerprint == pipeline_json.labels_fingerprint(w.spec) and w.status.labels.rows == 90
    # The student, serving and labeling parallelism do not change what the labels are.
    other = make_spec(**{"student.model": "other", "teacher.replicas": 2, "serving.enabled": False})
    assert pipeline_json.labels_fingerprint(other) == w.status.labels.fingerprint


def test_status_shows_generated_kept_and_rejected_with_reasons() -> None:
    from distillery.cli.status import render

    text = render({"metadata": {"name": "gen", "namespace": "ns", "generation": 1}, "spec": {"task": "nli"},
                   "status": {"observedGeneration": 1, "phase": "Labeling", "progress": {
                       "inputsGenerated": 60, "inputsKept": 50, "inputsRejected": 10,
                       "inputRejections": {"near-duplicate of a seed": 4, "not a JSON object": 6}}}})
    assert "generated  60 inputs, 50 kept, 10 rejected (6 not a JSON object, 4 near-duplicate of a seed)" in text


def test_reused_labels_need_no_endpoint_teacher_either() -> None:
    endpoint = {"teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt"}}}
    w = reusing_world(**endpoint)
    w.labels_source = finished_source(make_spec(**endpoint))
    w.step()
    assert w.reason("TeacherReady") == "LabelsReused" and w.has("Job", "demo-label")


def test_seed_files_hold_a_handful_too() -> None:
    cfg = PipelineConfig.model_validate({
        "name": "g", "namespace": "n", "task": "nli", "teacher": {"base_url": "http://x/v1", "model": "t"},
        "dataset": {"generate": {"seeds": {"uri": "pvc://seeds/many.jsonl"}, "count": 5}},
        "student": {"model": "s"}})
    assert cfg.dataset.generate is not None
    with pytest.raises(ValueError, match="101 rows; it takes 1 to 100"):
        Generator(cfg, get_task(Task.NLI, PromptSpec(), {}), cfg.dataset.generate, [SEED] * 101, [],
                  client=None)  # type: ignore[arg-type]
