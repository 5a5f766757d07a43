"""spec.evaluation.judge, spec.evaluation.gate and spec.prompt.persona: what pydantic refuses, and that the CRD
carries the same rules as CEL (tests/cluster/test_validation.py sends them to a real API server)."""

from typing import Any

import pytest
from pydantic import ValidationError

from distillery.api.config import OperatorConfig
from distillery.api.crd import crd
from distillery.api.spec import DistillationSpec
from distillery.cli.status import render
from distillery.resources import student
from distillery.resources.common import Owner

ENDPOINT = {"url": "https://judge.example.com/v1", "model": "judge"}


def spec(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "conversation",
        "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct"},
        "dataset": {"train": {"uri": "pvc://data/chat.jsonl"}},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct"},
    }
    raw.update(overrides)
    return raw


# (what is wrong, spec overrides, message both pydantic and CEL give)
INVALID = [
    ("judge with neither teacher nor endpoint", {"evaluation": {"judge": {}}},
     "exactly one of evaluation.judge.teacher and evaluation.judge.endpoint must be set"),
    ("judge with teacher and endpoint", {"evaluation": {"judge": {"teacher": True, "endpoint": ENDPOINT}}},
     "exactly one of evaluation.judge.teacher and evaluation.judge.endpoint must be set"),
    ("judge for a task with a checkable answer", {"task": "nli", "evaluation": {"judge": {"teacher": True}}},
     "evaluation.judge is only valid for the open-ended tasks conversation and summarization"),
    ("persona for math", {"task": "math", "prompt": {"persona": {"name": "Ada"}}},
     "prompt.persona is only valid for the open-ended tasks conversation and summarization"),
    ("empty gate", {"evaluation": {"gate": {}}}, "evaluation.gate needs minScore or minGapClosed"),
    ("gate with evaluation disabled", {"evaluation": {"enabled": False, "gate": {"minScore": 50}}},
     "evaluation.gate needs evaluation.enabled"),
    ("gap gate without the teacher baseline",
     {"evaluation": {"baselines": ["base-student"], "gate": {"minGapClosed": 0.5}}},
     "evaluation.gate.minGapClosed needs both teacher and base-student in evaluation.baselines"),
]


@pytest.mark.parametrize(("what", "overrides", "message"), INVALID, ids=[i[0] for i in INVALID])
def test_pydantic_refuses_with_the_cel_message(what: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistillationSpec.model_validate(spec(**overrides))
    assert message in str(crd()), f"{what}: no CEL rule in the CRD gives {message!r}"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"evaluation": {"gate": {"minGapClosed": 1.5}}}, "less than or equal to 1"),
    ({"evaluation": {"gate": {"minScore": 101}}}, "less than or equal to 100"),
    ({"prompt": {"persona": {"name": ""}}}, "at least 1 character"),
])
def test_out_of_range_values_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistillationSpec.model_validate(spec(**overrides))


def test_valid_judge_gate_and_persona_are_accepted() -> None:
    parsed = DistillationSpec.model_validate(spec(
        prompt={"persona": {"name": "Ada", "traits": ["curious"], "tone": "warm"}},
        evaluation={"judge": {"endpoint": ENDPOINT}, "gate": {"minScore": 40, "minGapClosed": 0.6}}))
    assert parsed.evaluation.judge is not None and parsed.evaluation.judge.endpoint is not None
    assert parsed.evaluation.gate is not None and parsed.evaluation.gate.min_gap_closed == 0.6
    assert parsed.prompt.persona is not None and parsed.prompt.persona.name == "Ada"
    # A persona without a judge is allowed: it shapes labeling, training and serving; adherence is then not scored.
    DistillationSpec.model_validate(spec(prompt={"persona": {"name": "Ada"}}))
    DistillationSpec.model_validate(spec(task="nli", evaluation={"gate": {"minScore": 60}}))


def test_the_served_student_renders_prompts_with_the_trainers_persona_template() -> None:
    owner = Owner("chat", "team-a", "uid-1")
    plain = DistillationSpec.model_validate(spec())
    with_persona = DistillationSpec.model_validate(spec(prompt={"persona": {"name": "Ada"}}))
    args = student.student_deployment(owner, with_persona, OperatorConfig())["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[args.index("--chat-template") + 1] == "/workspace/train/adapter/chat_template.jinja"
    assert "--chat-template" not in student.student_deployment(owner, plain, OperatorConfig())["spec"][
        "template"]["spec"]["containers"][0]["args"]


def test_distillery_status_shows_the_judges_columns_beside_the_reference_metric() -> None:
    results = [{"model": "teacher", "prompt": "cot", "metric": "token_f1", "score": 41.5, "rows": 8, "judge": 82.5,
                "persona": 100.0, "unjudged": 0},
               {"model": "distilled-student", "prompt": "short", "metric": "token_f1", "score": 30.0, "rows": 8,
                "judge": 61.25, "unjudged": 2}]
    text = render({"metadata": {"name": "chat", "namespace": "a"}, "spec": {"task": "conversation"},
                   "status": {"phase": "Succeeded", "results": results}})
    lines = [line.split() for line in text.splitlines()]
    assert ["MODEL", "PROMPT", "METRIC", "SCORE", "ROWS", "JUDGE", "PERSONA", "UNJUDGED"] in lines
    assert ["teacher", "cot", "token_f1", "41.50", "8", "82.50", "100.00", "0"] in lines
    assert ["distilled-student", "short", "token_f1", "30.00", "8", "61.25", "-", "2"] in lines
    assert "teacher cot 41.50 judge 82.50 / distilled-student short 30.00 judge 61.25" in text
