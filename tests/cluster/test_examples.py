"""examples/: one Distillation per task, each accepted by the models, usable by its task, and
admitted by a real API server (server-side dry run: schema, defaults and CEL rules)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.crd import GROUP, KIND, VERSION
from distillery.api.spec import DistillationSpec, Task
from distillery.resources import pipeline_json
from distillery.workloads.generator import input_columns
from distillery.workloads.tasks import get_task
from tests.cluster.kube import REPO, Kube

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_against_the_models(path: Path) -> None:
    doc = load(path)
    assert (doc["apiVersion"], doc["kind"]) == (f"{GROUP}/{VERSION}", KIND)
    assert "namespace" not in doc["metadata"], "examples go wherever `kubectl apply -n` puts them"
    spec = DistillationSpec.model_validate(doc["spec"])
    assert all(t.gpus % t.tensor_parallel_size == 0 for t in spec.teacher_list())


def test_every_task_has_an_example() -> None:
    tasks = [load(p)["spec"]["task"] for p in EXAMPLES]
    # Every task has an example; features (several teachers, logit distillation, a judge and a gate, a persona)
    # add examples of a task.
    assert set(tasks) == {t.value for t in Task}
    assert "summarization-cod.yaml" in {p.name for p in EXAMPLES}
    assert load(REPO / "examples" / "summarization-cod.yaml")["spec"]["prompt"]["chainOfDensity"] is True


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_inline_rows_make_prompts_and_gold_answers(path: Path) -> None:
    spec = DistillationSpec.model_validate(load(path)["spec"])
    task = get_task(spec.task, spec.prompt, spec.dataset.columns)
    sources = [s for s in (spec.dataset.train, spec.dataset.validation) if s is not None and s.rows is not None]
    for row in [row for source in sources for row in source.rows or []]:
        assert task.teacher_messages(row) and task.student_messages(row)
        if spec.task == Task.NLI:
            assert task.reference(row) in ("entailment", "neutral", "contradiction")


def test_conjnli_rows_are_premise_hypothesis_label() -> None:
    spec = load(REPO / "examples" / "nli-conjnli.yaml")["spec"]
    rows = spec["dataset"]["train"]["rows"] + spec["dataset"]["validation"]["rows"]
    assert all(set(row) == {"premise", "hypothesis", "label"} for row in rows)
    assert {row["label"] for row in rows} == {"entailment", "neutral", "contradiction"}


def test_the_judge_gate_and_persona_examples_make_judge_and_persona_prompts() -> None:
    gated = DistillationSpec.model_validate(load(REPO / "examples" / "conversation-judge-gate.yaml")["spec"])
    assert gated.evaluation.judge is not None and gated.evaluation.judge.teacher
    assert gated.evaluation.gate is not None and gated.evaluation.gate.min_gap_closed == 0.6
    persona = DistillationSpec.model_validate(load(REPO / "examples" / "persona.yaml")["spec"])
    assert persona.prompt.persona is not None and persona.evaluation.judge is not None
    for spec in (gated, persona):
        task = get_task(spec.task, spec.prompt, spec.dataset.columns)
        for row in (spec.dataset.validation.rows if spec.dataset.validation else None) or []:
            reference = task.reference(row)
            assert reference and reference in task.judge_messages(row, "a reply", reference)[-1]["content"]
    system = get_task(persona.task, persona.prompt, {}).student_messages(
        {"messages": [{"role": "user", "content": "hi"}]})[0]
    assert system["role"] == "system" and system["content"].startswith("You are Ada.")


def test_custom_answer_pattern_extracts_the_category() -> None:
    spec = DistillationSpec.model_validate(load(REPO / "examples" / "custom.yaml")["spec"])
    task = get_task(spec.task, spec.prompt, spec.dataset.columns)
    teacher_output = "The customer was charged twice for one order.\nCategory: billing"
    assert task.parse(teacher_output).answer == "billing"
    assert task.reference({"subject": "s", "body": "b", "category": "billing"}) == "billing"


def test_reuse_labels_example_matches_the_labels_it_names() -> None:
    source = DistillationSpec.model_validate(load(REPO / "examples" / "nli-conjnli.yaml")["spec"])
    doc = load(REPO / "examples" / "reuse-labels.yaml")
    reusing = DistillationSpec.model_validate(doc["spec"])
    assert reusing.dataset.labels_from == load(REPO / "examples" / "nli-conjnli.yaml")["metadata"]["name"]
    assert pipeline_json.labels_fingerprint(reusing) == pipeline_json.labels_fingerprint(source)
    assert reusing.student.model != source.student.model


def test_generated_example_seeds_are_the_tasks_inputs() -> None:
    spec = DistillationSpec.model_validate(load(REPO / "examples" / "nli-generated.yaml")["spec"])
    assert spec.dataset.generate is not None and spec.dataset.generate.seeds.rows and spec.dataset.train is None
    task = get_task(spec.task, spec.prompt, spec.dataset.columns)
    for row in spec.dataset.generate.seeds.rows:
        assert input_columns(task, row) == ["premise", "hypothesis"]


@pytest.mark.cluster
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_passes_a_server_side_dry_run(kube: Kube, namespace: str, crd: None, path: Path) -> None:
    result = kube.run("apply", "--dry-run=server", "--server-side", "--field-manager=examples", "-n", namespace,
                      "-f", str(path), "-o", "yaml", check=False)
    assert result.returncode == 0, result.stderr
    admitted = yaml.safe_load(result.stdout)
    # The API server applied the CRD's defaults: what a user gets is what the operator will plan from.
    assert admitted["spec"]["storage"]["size"]
    assert DistillationSpec.model_validate(admitted["spec"]) == DistillationSpec.model_validate(load(path)["spec"])
