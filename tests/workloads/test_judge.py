"""evaluation.judge and prompt.persona on CPU, over the real HTTP path: the evaluator asks the local teacher
server acting as a judge (a rule the test recomputes), the labeler and the trainer use the persona, and the
trainer's saved chat template makes the persona the default system message."""

import asyncio
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from distillery.api.pipeline import JudgeClientConfig, PipelineConfig, TeacherClientConfig, WorkspaceLayout
from distillery.api.spec import (
    DatasetSpec,
    DataSource,
    EvaluationJudgeSpec,
    EvaluationSpec,
    Persona,
    PromptSpec,
    StudentSpec,
    Task,
)
from distillery.devcluster.teacher_server import FaultConfig, TeacherServer
from distillery.workloads import evaluator, labeler
from distillery.workloads.evaluation_judge import JUDGE_ROLE, MalformedJudgement, parse_score
from distillery.workloads.finetune_data import build_finetune_set, prompt_ids
from distillery.workloads.labels import read_labels
from distillery.workloads.models import load_tokenizer
from distillery.workloads.tasks import get_task
from distillery.workloads.tasks.metrics import token_f1
from distillery.workloads.tasks.persona import persona_chat_template, persona_system
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload

ADA = Persona(name="Ada", traits=["curious", "patient"], tone="warm and brief")
QUESTIONS = ["what is 2 + 3?", "what is the answer?", "who are you?", "add the numbers then divide by two"]
REFERENCES = ["The answer is 5.", "The answer is 42.", "I am a helpful assistant.", "First add, then divide."]


def chat_rows() -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": q}], "reference": r} for q, r in zip(QUESTIONS, REFERENCES,
                                                                                          strict=True)]


def conversation_config(workspace: Path, model: Path | str, url: str, persona: Persona | None = None,
                        baselines: tuple[str, ...] = ("teacher",), max_attempts: int = 2,
                        **student: Any) -> PipelineConfig:
    return PipelineConfig(
        name="chat", namespace="default", task=Task.CONVERSATION, prompt=PromptSpec(persona=persona),
        teacher=TeacherClientConfig(base_url=url, model="teacher", concurrency=4, max_attempts=2,
                                    request_timeout_seconds=5, min_success_ratio=0.5),
        dataset=DatasetSpec(train=DataSource(rows=chat_rows()), validation=DataSource(rows=chat_rows())),
        student=StudentSpec(model=str(model), **student),
        evaluation=EvaluationSpec(baselines=list(baselines), judge=EvaluationJudgeSpec(teacher=True)),
        judge=JudgeClientConfig(base_url=url, model="teacher", max_attempts=max_attempts, concurrency=4,
                                request_timeout_seconds=5),
        workspace=WorkspaceLayout(root=str(workspace)), seed=7)


def write_chat_labels(workspace: Path, split: str, answers: list[str]) -> None:
    labels = workspace / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"split": split, "row_id": i, "row": {**row, "row_id": i}, "answer": answer,
                         "rationale": "", "raw": f"Reply: {answer}", "attempts": 1, "tokens_in": 10,
                         "tokens_out": 5, "status": "ok"})
             for i, (row, answer) in enumerate(zip(chat_rows(), answers, strict=True))]
    (labels / f"{split}-shard-00000.jsonl").write_text("".join(f"{line}\n" for line in lines))


def judged_workspace(tmp_path: Path, trained: Path, teacher_answers: list[str]) -> Path:
    """Teacher labels for the chat rows and a trained adapter for the tiny student (its training data does not
    matter here: the judge scores whatever the student writes)."""
    workspace = tmp_path / "workspace"
    write_chat_labels(workspace, "validation", teacher_answers)
    shutil.copytree(trained / "train" / "adapter", workspace / "train" / "adapter")
    return workspace


def expected_judge(replies: list[str], references: list[str]) -> float:
    """The local judge's rule (devcluster/teacher_server.judge_reply), recomputed: round(10 x token F1)."""
    scores = [round(10 * token_f1(r, ref)) if r else 0 for r, ref in zip(replies, references, strict=True)]
    return round(100 * sum(scores) / (10 * len(scores)), 2)


async def evaluate(config: Path) -> int:
    # The evaluator runs its own event loop; the judge serves on this one.
    return await asyncio.to_thread(evaluator.main, ["--config", str(config), "--max-new-tokens", "8",
                                                    "--cot-max-new-tokens", "8"])


@pytest.mark.asyncio
async def test_the_judge_scores_every_model_next_to_the_reference_metric(
        tmp_path: Path, trained: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_answers = [*REFERENCES[:3], "Nothing to say."]
    workspace = judged_workspace(tmp_path, trained, teacher_answers)
    async with TeacherServer() as server:
        cfg = conversation_config(workspace, model_dir, server.url, baselines=("teacher", "base-student"),
                                  **tm.STUDENT)
        assert await evaluate(tm.write_config(tmp_path / "pipeline.json", cfg)) == 0
    saved = json.loads((workspace / "eval" / "results.json").read_text())
    assert saved["metric"] == "token_f1"
    entries = {e["model"]: e for e in saved["results"]}
    assert list(entries) == ["teacher", "base-student", "distilled-student"]
    predictions = [json.loads(line) for line in (workspace / "eval" / "predictions.jsonl").read_text().splitlines()]
    for model, entry in entries.items():
        assert entry["judge"] == expected_judge([p[model] for p in predictions], REFERENCES), model
        assert entry["unjudged"] == 0 and "score" in entry
        # Each row's score sits beside its reply, so a low mean can be traced to the rows that made it.
        assert [p["judge"][model] for p in predictions] == [
            round(10 * token_f1(p[model], ref)) if p[model] else 0 for p, ref in zip(predictions, REFERENCES,
                                                                                   strict=True)], model
    assert entries["teacher"]["judge"] == 75.0  # three replies equal to the reference, one shares no word
    # One request per reply, none malformed.
    assert saved["judge"] == {"model": "teacher", "requests": 3 * len(QUESTIONS), "malformed": 0, "unjudged": 0}
    header, *table = [line.split() for line in capsys.readouterr().out.splitlines()
                      if line.split()[:1] in (["MODEL"], ["teacher"], ["base-student"], ["distilled-student"])]
    assert header == ["MODEL", "PROMPT", "TOKEN_F1", "ROWS", "JUDGE", "UNJUDGED"]
    assert table[0] == ["teacher", "cot", f"{entries['teacher']['score']:.2f}", "4", "75.00", "0"]


@pytest.mark.asyncio
async def test_malformed_judge_replies_are_retried_then_counted(tmp_path: Path, trained: Path,
                                                                 model_dir: Path) -> None:
    workspace = judged_workspace(tmp_path, trained, REFERENCES)
    # Every prompt's first judge reply has no score line; the retry gets a valid one.
    retried = FaultConfig(sequence=["malformed"], malformed_text="Great reply, 8/10.", only_matching=JUDGE_ROLE)
    async with TeacherServer(faults=retried) as server:
        cfg = conversation_config(workspace, model_dir, server.url, **tm.STUDENT)
        assert await evaluate(tm.write_config(tmp_path / "pipeline.json", cfg)) == 0
    saved = json.loads((workspace / "eval" / "results.json").read_text())
    prompts = 2 * len(QUESTIONS)
    assert saved["judge"]["requests"] == 2 * prompts and saved["judge"]["malformed"] == prompts
    assert saved["judge"]["unjudged"] == 0 and saved["results"][0]["judge"] == 100.0

    # A judge that never gives a score line: every reply unjudged after maxAttempts, the mean is not guessed.
    never = FaultConfig(malformed=1.0, malformed_text="Score: excellent", only_matching=JUDGE_ROLE)
    async with TeacherServer(faults=never) as server:
        cfg = conversation_config(workspace, model_dir, server.url, max_attempts=3, **tm.STUDENT)
        assert await evaluate(tm.write_config(tmp_path / "pipeline.json", cfg)) == 0
    saved = json.loads((workspace / "eval" / "results.json").read_text())
    assert saved["judge"]["requests"] == 3 * prompts and saved["judge"]["unjudged"] == prompts
    assert "malformed judge reply" in saved["judge"]["last_problem"]
    assert all(e["judge"] is None and e["unjudged"] == len(QUESTIONS) for e in saved["results"])
    assert all(e["score"] is not None for e in saved["results"])  # the reference metric does not depend on it


@pytest.mark.asyncio
async def test_persona_adherence_is_judged(tmp_path: Path, trained: Path, model_dir: Path) -> None:
    workspace = judged_workspace(tmp_path, trained, [f"Ada here. {r}" for r in REFERENCES])
    async with TeacherServer() as server:
        cfg = conversation_config(workspace, model_dir, server.url, persona=ADA, **tm.STUDENT)
        assert await evaluate(tm.write_config(tmp_path / "pipeline.json", cfg)) == 0
    saved = json.loads((workspace / "eval" / "results.json").read_text())
    teacher, distilled = saved["results"]
    assert teacher["persona"] == 100.0  # every label speaks as Ada
    predictions = [json.loads(line) for line in (workspace / "eval" / "predictions.jsonl").read_text().splitlines()]
    in_character = [bool(p["distilled-student"]) and "ada" in p["distilled-student"].lower() for p in predictions]
    assert distilled["persona"] == round(100 * sum(in_character) / len(in_character), 2)
    assert [p["persona"]["distilled-student"] for p in predictions] == [10 * c for c in in_character]
    assert saved["judge"]["requests"] == 2 * 2 * len(QUESTIONS) - sum(not p["distilled-student"]
                                                                      for p in predictions) * 2


@pytest.mark.parametrize(("text", "score"), [("Fine.\nScore: 7", 7.0), ("Score: 10\n\n", 10.0),
                                             ("ok\nScore:0", 0.0), ("Score: 6.5", 6.5)])
def test_a_judge_score_is_read_from_the_last_line(text: str, score: float) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["Score: 7\nThanks!", "7/10", "Score: 11", "Score: seven", "", "Score: -1",
                                  "Score: 7/10"])
def test_anything_else_is_a_malformed_judgement(text: str) -> None:
    with pytest.raises(MalformedJudgement):
        parse_score(text)


@pytest.mark.asyncio
async def test_the_labeler_asks_the_teacher_in_character(tmp_path: Path) -> None:
    async with TeacherServer() as server:
        cfg = conversation_config(tmp_path / "workspace", "student", server.url, persona=ADA)
        config = tm.write_config(tmp_path / "pipeline.json", cfg)
        assert await asyncio.to_thread(labeler.main, ["--config", str(config)]) == 0
        task = get_task(Task.CONVERSATION, cfg.prompt, {})
        for row in chat_rows():
            messages = task.teacher_messages(row)
            assert messages[0]["content"].startswith(persona_system(ADA))
            assert server.requests_for(messages) >= 1
    labels = read_labels(cfg.workspace.labels_dir, "train")
    assert len(labels) == len(QUESTIONS) and all(r.answer.startswith("Ada here.") for r in labels)


def test_the_student_is_trained_with_the_persona_as_its_system_message(tmp_path: Path, model_dir: Path) -> None:
    write_chat_labels(tmp_path, "train", [f"Ada here. {r}" for r in REFERENCES])
    tokenizer = load_tokenizer(str(model_dir))
    task = get_task(Task.CONVERSATION, PromptSpec(persona=ADA), {})
    data = build_finetune_set(read_labels(tmp_path / "labels", "train"), task, tokenizer, 512, False)
    assert len(data.examples) == len(QUESTIONS)
    first = tokenizer.decode(data.examples[0].input_ids)
    assert first.startswith(f"<|im_start|>system\n{persona_system(ADA)}<|im_end|>")
    without = get_task(Task.CONVERSATION, PromptSpec(), {})
    assert persona_system(ADA) not in tokenizer.decode(
        build_finetune_set(read_labels(tmp_path / "labels", "train"), without, tokenizer, 512, False)
        .examples[0].input_ids)


def test_the_trainers_saved_template_makes_the_persona_the_default_system_message(tmp_path: Path,
                                                                                   model_dir: Path) -> None:
    """The trainer, run for real on a conversation with a persona: its adapter directory carries a chat template
    that renders a caller's system-less conversation exactly as the student was trained, and leaves a caller's
    own system message alone."""
    workspace = tmp_path / "workspace"
    write_chat_labels(workspace, "train", [f"Ada here. {r}" for r in REFERENCES])
    cfg = conversation_config(workspace, model_dir, "http://127.0.0.1:9/v1", persona=ADA,
                              **{**tm.STUDENT, "epochs": 1, "merge_weights": True, "max_seq_length": 512})
    config = tm.write_config(workspace / "pipeline.json", cfg)
    result = tm.distillery(["train", "--config", str(config)], workspace / "termination-log")
    assert result.returncode == 0, result.stderr[-4000:]
    task = get_task(Task.CONVERSATION, cfg.prompt, {})
    trained_with = prompt_ids(load_tokenizer(str(model_dir)), task.student_messages(chat_rows()[0]))
    caller = [{"role": "user", "content": QUESTIONS[0]}]
    for out in ("adapter", "merged"):
        saved = AutoTokenizer.from_pretrained(workspace / "train" / out)
        assert (workspace / "train" / out / "chat_template.jinja").exists()
        assert prompt_ids(saved, caller) == trained_with, out
        own = saved.apply_chat_template([{"role": "system", "content": "Be terse."}, *caller], tokenize=False)
        assert persona_system(ADA) not in own and "Be terse." in own


def test_a_persona_with_quotes_and_non_ascii_survives_the_template() -> None:
    odd = Persona(name='Zoë "Z" O\'Neil', traits=["naïve\\bold", "🙂"], tone="line one\nline two")
    template = persona_chat_template("{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}", odd)
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(messages=[{"role": "user",
                                                                                      "content": "hi"}])
    assert rendered == f"[system:{persona_system(odd)}][user:hi]"


def test_the_cpu_server_answers_in_character_with_the_persona_template(tmp_path: Path, model_dir: Path) -> None:
    """`distillery serve --chat-template`, as vLLM's flag: a request without a system message is rendered with
    the persona's system turn (the prompt's token count says so), one with its own system message is not."""
    template = tmp_path / "chat_template.jinja"
    tokenizer = load_tokenizer(str(model_dir))
    template.write_text(persona_chat_template(tokenizer.chat_template, ADA))
    with tm.serving(["--model", str(model_dir), "--chat-template", str(template)], tmp_path) as url:
        def prompt_tokens(messages: list[dict[str, str]]) -> int:
            body = json.dumps({"model": str(model_dir), "messages": messages, "max_tokens": 1}).encode()
            req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as response:
                return int(json.loads(response.read())["usage"]["prompt_tokens"])

        caller = [{"role": "user", "content": QUESTIONS[2]}]
        assert prompt_tokens(caller) == len(prompt_ids(tokenizer, [
            {"role": "system", "content": persona_system(ADA)}, *caller]))
        own = [{"role": "system", "content": "Be terse."}, *caller]
        assert prompt_tokens(own) == len(prompt_ids(tokenizer, own))
