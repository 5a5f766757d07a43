"""The evaluator on CPU: teacher labels, the base student with the CoT prompt and the distilled student."""

import json
import shutil
from pathlib import Path

import pytest

from distillery.api.spec import PromptSpec, Task
from distillery.workloads import evaluator
from distillery.workloads.tasks import get_task
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload


def test_table_has_teacher_base_and_distilled_rows(trained: Path) -> None:
    result = tm.distillery(["evaluate", "--config", str(trained / "pipeline.json"), "--max-new-tokens", "8",
                            "--cot-max-new-tokens", "16"], trained / "eval-termination-log")
    assert result.returncode == 0, result.stderr[-4000:]

    saved = json.loads((trained / "eval" / "results.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == saved
    assert json.loads((trained / "eval-termination-log").read_text()) == saved
    assert (saved["metric"], saved["rows"], saved["reference"]) == ("accuracy", tm.VALIDATION_ROWS, "gold")
    scores = {(r["model"], r["prompt"]): r for r in saved["results"]}
    assert list(scores) == [("teacher", "cot"), ("base-student", "cot"), ("distilled-student", "short")]
    # The teacher got one validation row wrong and one rejected: 6 of 8.
    assert scores["teacher", "cot"]["score"] == 75.0
    assert all(r["rows"] == tm.VALIDATION_ROWS for r in saved["results"])
    assert scores["distilled-student", "short"]["score"] > scores["base-student", "cot"]["score"]

    table = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in
             (["teacher"], ["base-student"], ["distilled-student"])]
    assert [row[:3] for row in table] == [["teacher", "cot", "75.00"],
                                          ["base-student", "cot", f"{scores['base-student', 'cot']['score']:.2f}"],
                                          ["distilled-student", "short",
                                           f"{scores['distilled-student', 'short']['score']:.2f}"]]
    predictions = [json.loads(line) for line in (trained / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == tm.VALIDATION_ROWS and predictions[2]["teacher"] == ""


def test_rows_without_gold_are_scored_against_the_teacher(tmp_path: Path, trained: Path, model_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    validation = [{k: v for k, v in row.items() if k != "label"} for row in tm.nli_rows(tm.VALIDATION_ROWS, 100)]
    answers: list[str | None] = [row["label"] for row in tm.nli_rows(tm.VALIDATION_ROWS, 100)]
    answers[2] = None
    tm.write_labels(tmp_path, "validation", validation, answers)
    shutil.copytree(trained / "train" / "adapter", tmp_path / "train" / "adapter")
    cfg = tm.pipeline_config(tmp_path, model_dir, tm.nli_rows(tm.TRAIN_ROWS), validation, baselines=["teacher"],
                             **tm.STUDENT)
    config = tm.write_config(tmp_path / "pipeline.json", cfg)

    assert evaluator.main(["--config", str(config), "--max-new-tokens", "8"]) == 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    # The rejected row has neither a gold nor a teacher answer: it cannot be scored.
    assert (saved["reference"], saved["rows"], saved["gold_rows"]) == ("teacher", tm.VALIDATION_ROWS - 1, 0)
    teacher, distilled = saved["results"]
    assert teacher["model"] == "teacher" and teacher["score"] is None and teacher["rows"] == 0
    assert distilled["model"] == "distilled-student" and distilled["rows"] == tm.VALIDATION_ROWS - 1
    assert "n/a" in capsys.readouterr().out


def test_eval_rows_prefer_gold_then_teacher() -> None:
    task = get_task(Task.NLI, PromptSpec(), {})
    rows = [{"premise": "p", "hypothesis": "h", "label": "neutral", "row_id": 0},
            {"premise": "p", "hypothesis": "h", "row_id": 1},
            {"premise": "p", "hypothesis": "h", "row_id": 2}]
    picked = evaluator.eval_rows(task, rows, {0: "entailment", 1: "contradiction"})
    assert [(r.row["row_id"], r.reference, r.gold, r.teacher) for r in picked] == [
        (0, "neutral", True, "entailment"), (1, "contradiction", False, "contradiction")]
