"""The evaluation stage: teacher vs base student vs distilled student on the validation split.

- distilled-student: base + adapter (or the fully fine-tuned model), SHORT prompt;
- base-student (evaluation.baselines): the untrained student with the teacher's CoT prompt;
- teacher (evaluation.baselines): its validation labels from the labeling stage, not a new
  run; a rejected or missing label counts as a wrong answer.

References are the gold answers; a row without one is scored against the teacher's
answer for the students (and not for the teacher itself), which the output reports as
"reference": "teacher" (or "mixed" when only some rows have gold answers).
Generation is greedy and batched, with a bounded number of new tokens.

With evaluation.judge, open-ended outputs are also scored by a judge model with the task's judge prompt
(0-10 per reply, reported as 0-100 beside the reference metric; the teacher only on rows with gold
answers), and with prompt.persona by a persona rubric; replies it leaves unscored are counted.
"""

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from distillery.api.pipeline import CONFIG_FILE, CONFIG_MOUNT_DIR, JudgeClientConfig, PipelineConfig
from distillery.api.reports import EvaluationReport, EvaluationResult, ExitCode, JudgeSummary
from distillery.api.spec import Baseline, Persona, TrainingMethod
from distillery.workloads.datasets import ROW_ID, split_rows
from distillery.workloads.environment import workspace_layout
from distillery.workloads.evaluation_judge import JudgeTally, judge, mean_percent
from distillery.workloads.finetune_data import prompt_ids
from distillery.workloads.labels import read_labels
from distillery.workloads.models import ModelLoadError, load_model, load_tokenizer
from distillery.workloads.program import ProgramResult, run_program
from distillery.workloads.progress import write_json_atomic
from distillery.workloads.report import text_table
from distillery.workloads.tasks import Message, MissingColumn, Row, TaskDefinition, get_task
from distillery.workloads.tasks.persona import persona_judge_messages

SHORT_MAX_NEW_TOKENS = 256
COT_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class EvalRow:
    row: Row
    reference: str
    gold: bool
    teacher: str
    """The teacher's normalised answer, "" when its label was rejected or is missing."""


def eval_rows(task: TaskDefinition, rows: Sequence[Row], teacher_answers: dict[int, str]) -> list[EvalRow]:
    """The rows that have a reference: their gold answer, else the teacher's answer."""
    result = []
    for row in rows:
        try:
            gold = task.reference(row)
        except MissingColumn:
            gold = None
        teacher = teacher_answers.get(row[ROW_ID], "")
        if gold is not None:
            result.append(EvalRow(row, gold, True, teacher))
        elif teacher:
            result.append(EvalRow(row, teacher, False, teacher))
    return result


def generate(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]], max_new_tokens: int,
             batch_size: int) -> list[str]:
    """Greedy completions, in input order. Prompts are batched by length to waste little padding."""
    encoded = [prompt_ids(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    texts = [""] * len(encoded)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        # Left padding: every row's next token comes right after its prompt.
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, i in enumerate(chunk):
            input_ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention_mask[j, width - len(encoded[i]):] = 1
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for j, i in enumerate(chunk):
            texts[i] = tokenizer.decode(output[j, width:], skip_special_tokens=True)
    return texts


def score_entry(task: TaskDefinition, model: str, prompt: str, predictions: Sequence[str],
                references: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(metric name, result entry)."""
    score = task.score(predictions, references)
    entry: dict[str, Any] = {"model": model, "prompt": prompt, "score": round(score.value, 2), "rows": len(references)}
    if score.details:
        entry["details"] = {name: round(value, 2) for name, value in score.details.items()}
    return score.metric, entry


def format_table(results: Sequence[dict[str, Any]], metric: str) -> str:
    rows = [[e["model"], e["prompt"], "n/a" if e["score"] is None else f"{e['score']:.2f}", e["rows"]]
            for e in results]
    headers = ["MODEL", "PROMPT", metric.upper(), "ROWS"]
    # The judge's columns appear when it judged; the reference metric keeps its place.
    for key in ("judge", "persona", "unjudged"):
        if any(key in e for e in results):
            headers.append(key.upper())
            for row, e in zip(rows, results, strict=True):
                value = e.get(key)
                row.append("n/a" if value is None else value if key == "unjudged" else f"{value:.2f}")
    return "\n".join(text_table(headers, rows, indent=""))


RowScores = dict[str, dict[str, dict[Any, float | None]]]
"""Per-row judge scores (0..10, None where the judge gave none): key ("judge" or "persona") -> model -> row id."""


def judge_results(judge_cfg: JudgeClientConfig, persona: Persona | None, task: TaskDefinition,
                  rows: Sequence[EvalRow], predictions: dict[str, list[str]],
                  results: list[dict[str, Any]]) -> tuple[JudgeSummary, RowScores]:
    """Adds the judge's score (and persona adherence) to each result entry; returns the judge's tally and
    every row's score, so a low mean can be traced to its rows. The teacher is judged on the rows with gold
    answers only, as its reference metric is."""
    plan: list[tuple[dict[str, Any], str, list[EvalRow], list[list[Message] | None]]] = []
    for entry in results:
        answers = predictions.get(entry["model"])
        if answers is None:
            continue
        picked = [(r, a) for r, a in zip(rows, answers, strict=True) if entry["model"] != "teacher" or r.gold]
        if not picked:
            continue
        judged = [r for r, _ in picked]
        plan.append((entry, "judge", judged, [task.judge_messages(r.row, a, r.reference) if a else None
                                              for r, a in picked]))
        if persona is not None:
            plan.append((entry, "persona", judged, [
                persona_judge_messages(persona, task.student_messages(r.row)[-1]["content"], a) if a else None
                for r, a in picked]))
    tally = JudgeTally()
    scores = judge(judge_cfg, [p for _, _, _, prompts in plan for p in prompts], tally)
    per_row: RowScores = {}
    start = 0
    for entry, key, judged, prompts in plan:
        chunk = scores[start:start + len(prompts)]
        start += len(prompts)
        entry[key] = mean_percent(chunk)
        entry["unjudged"] = entry.get("unjudged", 0) + sum(score is None for score in chunk)
        per_row.setdefault(key, {})[entry["model"]] = {r.row[ROW_ID]: s for r, s in zip(judged, chunk, strict=True)}
    return JudgeSummary(model=judge_cfg.model, **tally.summary()), per_row


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillery evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}", help="pipeline.json")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=SHORT_MAX_NEW_TOKENS,
                        help="for the distilled student's short prompt (answers only)")
    parser.add_argument("--cot-max-new-tokens", type=int, default=None,
                        help="for reasoning outputs: base student with the CoT prompt, and the distilled "
                             f"student with includeRationale (default: teacher maxTokens, at most "
                             f"{COT_MAX_NEW_TOKENS})")
    return parser.parse_args(argv)


def evaluate(cfg: PipelineConfig, args: argparse.Namespace) -> ProgramResult:
    layout = workspace_layout(cfg)
    task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
    _, validation = split_rows(cfg)
    teacher_answers = {r.row_id: r.answer for r in read_labels(layout.labels_dir, "validation")
                       if r.status == "ok"}
    rows = eval_rows(task, validation, teacher_answers)
    if not rows:
        return ExitCode.NO_DATA, EvaluationReport(error="no validation row has a gold answer or a teacher label",
                                                  validation_rows=len(validation))
    gold_rows = [r for r in rows if r.gold]
    references = [r.reference for r in rows]
    cot_budget = args.cot_max_new_tokens or min(cfg.teacher.sampling.max_tokens, COT_MAX_NEW_TOKENS)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    device = "cuda" if cuda else "cpu"
    student = cfg.student
    tokenizer = load_tokenizer(student.model)
    predictions: dict[str, list[str]] = {}
    results: list[dict[str, Any]] = []

    if Baseline.TEACHER in cfg.evaluation.baselines:
        predictions["teacher"] = [r.teacher for r in rows]
        if gold_rows:
            results.append(score_entry(task, "teacher", "cot", [r.teacher for r in gold_rows],
                                       [r.reference for r in gold_rows])[1])
        else:
            results.append({"model": "teacher", "prompt": "cot", "score": None, "rows": 0,
                            "note": "no gold answers: the teacher's answers are the reference"})

    if Baseline.BASE_STUDENT in cfg.evaluation.baselines:
        base = load_model(student.model, dtype=dtype).to(device).eval()
        texts = generate(base, tokenizer, [task.teacher_messages(r.row) for r in rows], cot_budget, args.batch_size)
        predictions["base-student"] = [task.prediction(t, r.row) for t, r in zip(texts, rows, strict=True)]
        results.append(score_entry(task, "base-student", "cot", predictions["base-student"], references)[1])
        del base  # before the distilled copy is loaded: two models need not fit at once

    if student.method == TrainingMethod.LORA:
        distilled = load_model(student.model, dtype=dtype, adapter=layout.adapter_dir, merge=True)
    else:
        distilled = load_model(str(layout.adapter_dir), dtype=dtype)
    distilled = distilled.to(device).eval()
    budget = cot_budget if student.include_rationale else args.max_new_tokens
    texts = generate(distilled, tokenizer, [task.student_messages(r.row) for r in rows], budget, args.batch_size)
    predictions["distilled-student"] = [task.prediction(t, r.row) for t, r in zip(texts, rows, strict=True)]
    metric, entry = score_entry(task, "distilled-student", "short", predictions["distilled-student"], references)
    results.append(entry)
    kind = "gold" if len(gold_rows) == len(rows) else "teacher" if not gold_rows else "mixed"
    per_row: RowScores = {}
    tally = None
    if cfg.judge is not None:
        tally, per_row = judge_results(cfg.judge, cfg.prompt.persona, task, rows, predictions, results)
    report = EvaluationReport(metric=metric, rows=len(rows), reference=kind, gold_rows=len(gold_rows),
                              results=[EvaluationResult(**entry) for entry in results])
    if tally is not None:
        report.judge = tally
    layout.eval_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.eval_dir / "results.json", report.dump())
    with open(layout.eval_dir / "predictions.jsonl", "w") as handle:
        for i, r in enumerate(rows):
            row_id = r.row[ROW_ID]
            judged = {key: {model: by_row[row_id] for model, by_row in models.items() if row_id in by_row}
                      for key, models in per_row.items()}
            handle.write(json.dumps({ROW_ID: row_id, "reference": r.reference,
                                     **{name: preds[i] for name, preds in predictions.items()}, **judged}) + "\n")
    print(format_table(results, metric), flush=True)
    return ExitCode.OK, report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_program("evaluate", lambda: evaluate(PipelineConfig.load(args.config), args),
                       (OSError, ValueError, ModelLoadError), lambda error: EvaluationReport(error=error))
