"""Generated inputs (dataset.generate) and reused labels (dataset.labelsFrom) against the real teacher server."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.pipeline import GENERATED_LOG_FILE, PipelineConfig
from distillery.api.reports import ExitCode
from distillery.api.spec import DistillationSpec, StrategyMode
from distillery.devcluster.teacher_server import TeacherServer
from distillery.resources.common import Owner
from distillery.resources.pipeline_json import pipeline_config
from distillery.workloads import generator, labeler
from distillery.workloads.datasets import parse_records, split_rows
from distillery.workloads.generator import NearDuplicates, Outcome, generation_messages, prompt_examples, row_text
from distillery.workloads.labels import read_labels
from distillery.workloads.tasks import TaskDefinition, get_task
from tests.workloads.nli import NLI_ROWS

SEEDS = NLI_ROWS[:4]
COLUMNS = ["hypothesis", "premise"]
"""The seeds' input columns in the order the generator finds them (pipeline.json is written with sorted keys)."""


def generating_config(tmp_path: Path, url: str, count: int, **generate: Any) -> Path:
    cfg = PipelineConfig.model_validate({
        "name": "gen", "namespace": "default", "task": "nli",
        "teacher": {"base_url": url, "model": "teacher", "concurrency": 4, "max_attempts": 2,
                    "request_timeout_seconds": 5, "min_success_ratio": 0.5},
        "dataset": {"train": {"rows": NLI_ROWS[4:]}, "validation_fraction": 0.25,
                    "generate": {"seeds": {"rows": SEEDS}, "count": count, "hint": "everyday scenes",
                                 **generate}},
        "student": {"model": "student"},
        "workspace": {"root": str(tmp_path / "workspace")},
        "labels_fingerprint": {"task": "t", "teacher": "te", "prompt": "p", "rows": "r"},
    })
    path = tmp_path / "pipeline.json"
    path.write_text(cfg.to_json())
    return path


async def generate(config: Path) -> tuple[int, dict[str, Any]]:
    """generator.main on a thread (its own event loop) while the teacher serves on this one."""
    code = await asyncio.to_thread(generator.main, ["--config", str(config), "--progress-interval", "0.1"])
    cfg = PipelineConfig.load(config)
    log = [Outcome.model_validate_json(line)
           for line in (cfg.workspace.generated_dir / GENERATED_LOG_FILE).read_text().splitlines()]
    return code, {"cfg": cfg, "log": log}


async def test_generation_writes_a_dataset_of_distinct_parseable_inputs(
        tmp_path: Path, teacher: TeacherServer, nli_task: TaskDefinition) -> None:
    config = generating_config(tmp_path, teacher.url, count=40)
    code, result = await generate(config)
    assert code == 0
    cfg: PipelineConfig = result["cfg"]
    rows = parse_records("train.jsonl", cfg.workspace.generated_train.read_bytes())
    # The dataset's own shape: the seeds' input columns, nothing else, reusable as a user dataset.
    assert len(rows) == 40 and all(set(row) == {"premise", "hypothesis"} for row in rows)
    log = result["log"]
    kept = [o for o in log if o.status == "kept"]
    rejected = [o for o in log if o.status == "rejected"]
    assert len(kept) == 40 and rows == [o.row for o in sorted(kept, key=lambda o: o.index)]
    reasons = {o.reason for o in rejected}
    # The local teacher writes near-copies of its previous input and of seeds, and malformed replies.
    assert {"near-duplicate of a generated input", "near-duplicate of a seed"} <= reasons, reasons
    assert reasons & {"not a JSON object", "missing a column", "empty column"}, reasons
    # No two kept inputs, and no kept input and seed or dataset row, are near-duplicates.
    dedup = NearDuplicates(0.7)
    for i, row in enumerate([*SEEDS, *NLI_ROWS[4:], *rows]):
        text = row_text(row, ["premise", "hypothesis"])
        assert dedup.match(text) is None, row
        dedup.add(str(i), text)
    # Labeling reads them after dataset.train's rows; the hold-out covers both.
    train, validation = split_rows(cfg)
    assert len(train) + len(validation) == len(NLI_ROWS[4:]) + 40
    for row in rows:
        nli_task.teacher_messages(row)


async def test_a_rerun_resumes_from_the_log_without_asking_again(tmp_path: Path, teacher: TeacherServer) -> None:
    config = generating_config(tmp_path, teacher.url, count=20)
    code, first = await generate(config)
    assert code == 0
    cfg: PipelineConfig = first["cfg"]
    dataset = cfg.workspace.generated_train.read_text()
    asked = teacher.total_requests
    # A finished generation is not asked again.
    code, _ = await generate(config)
    assert code == 0 and teacher.total_requests == asked and cfg.workspace.generated_train.read_text() == dataset
    # A pod killed half way: the log keeps the first requests and a torn line; the dataset was not written.
    log_path = cfg.workspace.generated_dir / GENERATED_LOG_FILE
    lines = log_path.read_text().splitlines(keepends=True)
    log_path.write_text("".join(lines[:10]) + lines[10][:25])
    cfg.workspace.generated_train.unlink()
    code, resumed = await generate(config)
    assert code == 0
    logged = [Outcome.model_validate_json(line) for line in lines[:10]]
    for outcome in logged:
        messages = generation_messages("nli", prompt_examples(SEEDS, 3, cfg.seed, outcome.index),
                                       COLUMNS, outcome.index + 1, "everyday scenes")
        assert teacher.requests_for(messages) == 1, outcome.index  # asked by the first run only
    assert resumed["log"][:10] == logged
    assert len(parse_records("train.jsonl", cfg.workspace.generated_train.read_bytes())) == 20


async def test_generation_fails_with_the_reasons_when_too_few_are_kept(tmp_path: Path,
                                                                      teacher: TeacherServer) -> None:
    config = generating_config(tmp_path, teacher.url, count=30, max_requests=30, similarity_threshold=0.05)
    code, result = await generate(config)
    assert code == ExitCode.TOO_FEW_INPUTS
    assert not result["cfg"].workspace.generated_train.exists()


async def test_reused_labels_are_copied_when_the_fingerprint_and_rows_match(
        tmp_path: Path, teacher: TeacherServer, write_config: Any) -> None:
    source = write_config(teacher.url)
    assert await asyncio.to_thread(labeler.main, ["--config", str(source), "--progress-interval", "0.1"]) == 0
    source_cfg = PipelineConfig.load(source)
    fingerprint = json.loads(source_cfg.workspace.labels_fingerprint.read_text())["fingerprint"]
    asked = teacher.total_requests

    def reusing(name: str, **changes: Any) -> PipelineConfig:
        cfg = source_cfg.model_copy(update={
            "workspace": source_cfg.workspace.model_copy(update={"root": str(tmp_path / name)}),
            "labels_from": "pvc://claim/workspace", "labels_fingerprint": {**fingerprint, **changes}})
        (tmp_path / "pvc" / "claim").mkdir(parents=True, exist_ok=True)
        link = tmp_path / "pvc" / "claim" / "workspace"
        if not link.exists():
            link.symlink_to(source_cfg.workspace.root)
        return cfg

    code, summary = labeler.reuse_labels(reusing("b"), str(tmp_path / "pvc"))
    assert code == ExitCode.OK, summary
    reused = reusing("b")
    assert summary.reused_from == "pvc://claim/workspace" and summary.tokens_in == 0
    assert summary.rows_ok == len(read_labels(reused.workspace.labels_dir, "train")) + len(
        read_labels(reused.workspace.labels_dir, "validation"))
    assert teacher.total_requests == asked  # no teacher request

    code, summary = labeler.reuse_labels(reusing("c", teacher="another"), str(tmp_path / "pvc"))
    assert code == ExitCode.CONFIG and "different teacher" in (summary.error or "")
    assert not (tmp_path / "c" / "labels").exists()

    # Same fingerprint, different rows behind it (the file changed): the pod compares the rows themselves.
    other_rows = reusing("d")
    assert other_rows.dataset.train is not None
    other_rows = other_rows.model_copy(update={"dataset": other_rows.dataset.model_copy(update={
        "train": other_rows.dataset.train.model_copy(update={"rows": [
            {**NLI_ROWS[0], "premise": "Something else entirely."}, *NLI_ROWS[1:]]})})})
    code, summary = labeler.reuse_labels(other_rows, str(tmp_path / "pvc"))
    assert code == ExitCode.CONFIG and "rows:" in (summary.error or ""), summary



EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
SEEDS_BY_EXAMPLE: dict[str, list[dict[str, Any]]] = {
    "math": [{"question": "Tom has 3 boxes of 12 pencils and gives away 7. How many pencils are left?",
              "answer": "29"},
             {"question": "A train travels 60 km per hour for 3 hours. How far does it go?", "answer": "180"}],
    "multiple-choice": [{"question": "Which gas do plants take in for photosynthesis?", "answerKey": "B",
                         "choices": {"text": ["oxygen", "carbon dioxide", "nitrogen", "helium"],
                                     "label": ["A", "B", "C", "D"]}}],
    "conversation": [{"messages": [{"role": "user", "content": "How do I keep basil alive on a windowsill?"},
                                   {"role": "assistant", "content": "Give it six hours of sun and water ..."}]}],
    "summarization-cod": [{"article": "The city council voted on Tuesday to extend the tram line to the harbour. "
                                      "Construction starts in spring. The project costs 40 million euros.",
                           "highlights": "The council approved a 40-million-euro tram extension."}],
    "custom": [{"subject": "Charged twice", "body": "My card was billed two times for one order.",
                "category": "billing"}],
    "nli-conjnli": [{"premise": "The band toured Europe and Japan.", "hypothesis": "The band toured Japan.",
                     "label": "entailment"}],
}
EXAMPLES = [EXAMPLES_DIR / f"{name}.yaml" for name in SEEDS_BY_EXAMPLE]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_every_task_gets_inputs_in_its_own_columns(path: Path, tmp_path: Path) -> None:
    """The local teacher writes plausible inputs for every task's seeds; each kept one builds the task's prompt."""
    raw = yaml.safe_load(path.read_text())["spec"]
    raw["dataset"]["generate"] = {"seeds": {"rows": SEEDS_BY_EXAMPLE[path.stem]}, "count": 6}
    # Only the generated rows: the examples' own sources are hub datasets and claims that are not here.
    raw["dataset"].pop("train", None)
    raw["dataset"].pop("validation", None)
    spec = DistillationSpec.model_validate(raw)
    async with TeacherServer() as teacher:
        cfg = pipeline_config(Owner("gen", "ns", "uid"), spec)
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"base_url": teacher.url}),
                                     "workspace": cfg.workspace.model_copy(update={"root": str(tmp_path)})})
        task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
        code, report = await generator.run(cfg, task)
    assert code == ExitCode.OK, report
    rows = parse_records("train.jsonl", cfg.workspace.generated_train.read_bytes())
    assert report.columns is not None
    assert len(rows) == 6 and all(set(row) == set(report.columns) for row in rows)
    assert not {"answer", "answerKey", "label", "highlights", "category"} & set(report.columns)
    for row in rows:
        assert task.teacher_messages(row) and task.student_messages(row)


async def test_generation_with_several_teachers_uses_the_first_ones_own_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With spec.teachers the pod has each endpoint teacher's key in its own variable and no TEACHER_API_KEY;
    the generator asks the first teacher with that teacher's key."""
    monkeypatch.delenv("TEACHER_API_KEY", raising=False)
    monkeypatch.setenv("TEACHER_API_KEY_GOLD", "right")
    async with TeacherServer(api_key="right") as teacher:
        config = generating_config(tmp_path, teacher.url, count=6)
        cfg = PipelineConfig.load(config)
        first = cfg.teacher.model_copy(update={"name": "gold", "api_key_env": "TEACHER_API_KEY_GOLD"})
        other = cfg.teacher.model_copy(update={"name": "other", "base_url": "http://127.0.0.1:9/v1"})
        config.write_text(cfg.model_copy(update={"teacher": first, "teachers": [first, other],
                                                 "teacher_strategy": StrategyMode.VOTE}).to_json())
        code, result = await generate(config)
        assert teacher.outcomes["401"] == 0
    assert code == 0
    assert len(parse_records("train.jsonl", result["cfg"].workspace.generated_train.read_bytes())) == 6
