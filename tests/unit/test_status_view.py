"""`distillery status` rendering: a status dict in, readable text out."""

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.status import ModelScore, results_line
from distillery.cli.status import main, render
from tests.unit.status_samples import SUCCEEDED, cond, stage


def with_status(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(SUCCEEDED)
    obj["status"].update(changes)
    return obj


def test_results_line_has_the_model_prompt_score_shape() -> None:
    assert results_line([ModelScore.model_validate(r) for r in SUCCEEDED["status"]["results"]]) == (
        "teacher cot 69.98 / base-student cot 52.81 / distilled-student short 63.88")


def test_succeeded_run_shows_everything_and_flags_nothing() -> None:
    text = render(SUCCEEDED)
    assert text.startswith("Distillation research/conjnli\n")
    for expected in ("Phase:      Succeeded", "Task:       nli", "Region:     westus3",
                     "meta-llama/Llama-3.3-70B-Instruct on 8x H100, tensor parallel 8",
                     "Qwen/Qwen2.5-1.5B-Instruct, lora on 2 node(s) x 8x H100",
                     "GPU-hours:  61.25", "Endpoint:   http://conjnli-student.research.svc:8000/v1",
                     "labelled   5,611/5,623 rows (12 rejected)", "training   step 702/702, loss 0.4123",
                     "teacher    2,871,340 tokens in, 1,940,221 out",
                     "teacher cot 69.98 / base-student cot 52.81 / distilled-student short 63.88"):
        assert expected in text, expected
    lines = text.splitlines()
    training = next(line for line in lines if line.strip().startswith("training ") and "Succeeded" in line)
    assert training.split()[:5] == ["training", "Succeeded", "2026-11-28", "11:02:00", "3h10m"]
    assert "50.87" in training and "training job completed" in training
    header = next(i for i, line in enumerate(lines) if line.split() == ["MODEL", "PROMPT", "METRIC", "SCORE", "ROWS"])
    assert lines[header + 3].split() == ["distilled-student", "short", "accuracy", "63.88", "623"]
    # The teacher being gone after labeling is by design, not something to report.
    assert "Conditions not OK" not in text
    stages_at = lines.index("Stages:")
    assert [line.split()[0] for line in lines[stages_at + 2:stages_at + 7]] == [
        "teacher", "labeling", "training", "evaluation", "serving"]


def test_failure_is_reported_once_with_its_reason() -> None:
    message = "BackoffLimitExceeded: Job has reached the specified backoff limit (CUDA out of memory) " + "x" * 80
    obj = with_status(phase="Failed", progressSummary="failed at training", results=None, studentEndpoint=None)
    obj["status"]["stages"]["training"] = stage("Failed", "2026-11-28T11:02:00Z", "2026-11-28T11:40:00Z", message)
    obj["status"]["conditions"] = [
        cond("Ready", "False", "TrainingFailed", message), cond("Succeeded", "False", "TrainingFailed", message),
        cond("Failed", "True", "TrainingFailed", message), cond("Stalled", "True", "TrainingFailed", message),
        cond("Reconciling", "False", "TrainingFailed", message), cond("Evaluated", "Unknown", "Pending", "not started"),
    ]
    text = render(obj)
    assert "Phase:      Failed (failed at training)" in text
    flagged = text.split("Conditions not OK:\n", 1)[1].splitlines()
    assert flagged == [f"  Ready=False, Succeeded=False, Failed=True, Stalled=True  TrainingFailed: {message}"]
    training = next(line for line in text.splitlines() if line.strip().startswith("training"))
    assert training.endswith("…") and len(training) < len(message) + 60
    assert "Results" not in text and "Endpoint" not in text


def test_waiting_for_gpus_names_the_reason_and_hides_unknowns() -> None:
    wait = "no node pool in region eastus2 can hold 1 node(s) with 8x H100; waiting for capacity"
    obj = copy.deepcopy(SUCCEEDED)
    obj["spec"]["region"] = "eastus2"
    obj["status"] = {"observedGeneration": 1, "phase": "StartingTeacher", "progressSummary": "teacher: waiting",
                     "stages": {"teacher": stage("Waiting", message=wait), "labeling": stage("Pending")},
                     "conditions": [cond("Reconciling", "True", "NoMatchingGPUNodePool", wait),
                                    cond("TeacherReady", "False", "NoMatchingGPUNodePool", wait),
                                    cond("Labeled", "Unknown", "Pending", "stage labeling has not started"),
                                    cond("Failed", "False", "NoFailure")]}
    text = render(obj)
    assert f"Reconciling=True, TeacherReady=False  NoMatchingGPUNodePool: {wait}" in text
    assert "Labeled=" not in text and "Failed=" not in text
    assert "Progress:" not in text and "GPU-hours" not in text


def test_no_status_and_stale_generation() -> None:
    fresh = copy.deepcopy(SUCCEEDED)
    del fresh["status"]
    text = render(fresh)
    assert "Phase:      Pending" in text and "no status yet" in text and "Stages:" not in text
    stale = copy.deepcopy(SUCCEEDED)
    stale["metadata"]["generation"] = 3
    assert "operator has seen generation 1 of 3" in render(stale)


def test_external_teacher_endpoint() -> None:
    obj = copy.deepcopy(SUCCEEDED)
    obj["spec"]["teacher"] = {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt-teacher"}}
    assert "Teacher:    gpt-teacher at https://api.example.com/v1" in render(obj)


def test_unreachable_api_server_is_an_error_not_a_traceback(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "research"}}],
        "current-context": "x",
    }))
    assert main(["conjnli", "--kubeconfig", str(kubeconfig)]) == 1
    assert "distillery status:" in capsys.readouterr().err
