"""The `Distillation` status: what the operator observed. Written only by the operator."""

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from distillery.api.base import ApiModel


class StatusModel(ApiModel):
    """Status is read back from the cluster: fields written by a newer operator are ignored, not fatal."""

    model_config = ApiModel.model_config | {"extra": "ignore"}


def format_time(moment: datetime) -> str:
    """Kubernetes' RFC 3339 timestamps at second resolution, as status times are written."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def seconds_between(start: str | None, end: str | None) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    return (finish - begin).total_seconds() if begin and finish else None


class Stage(StrEnum):
    TEACHER = "teacher"
    GENERATION = "generation"
    LABELING = "labeling"
    TRAINING = "training"
    EVALUATION = "evaluation"
    SERVING = "serving"


STAGE_CONDITION = {
    Stage.TEACHER: "TeacherReady",
    Stage.GENERATION: "Generated",
    Stage.LABELING: "Labeled",
    Stage.TRAINING: "Trained",
    Stage.EVALUATION: "Evaluated",
    Stage.SERVING: "StudentReady",
}


class StageState(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    REMOVED = "Removed"


class Phase(StrEnum):
    PENDING = "Pending"
    TEACHER = "StartingTeacher"
    GENERATING = "Generating"
    LABELING = "Labeling"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    SERVING = "StartingStudent"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Condition(StatusModel):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str
    observed_generation: int | None = None


class StageStatus(StatusModel):
    state: StageState = StageState.PENDING
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = Field(None, max_length=1024)
    gpu_hours: float | None = None
    """GPU-hours requested by the stage's pods while it ran (GPUs x wall time)."""
    attempts: int | None = None
    """Training: how many times its Job was created; more than one after whole-group restarts."""
    failures: int | None = None
    """Training: attempts that ended in a workload failure (not a disruption); the operator's jobBackoffLimit
    of them are retried."""


class Progress(StatusModel):
    rows_labeled: int | None = None
    rows_rejected: int | None = None
    rows_total: int | None = None
    train_step: int | None = None
    train_steps: int | None = None
    train_loss: float | None = None
    teacher_tokens_in: int | None = None
    teacher_tokens_out: int | None = None
    rows_disagreed: int | None = None
    """Several teachers: rows whose valid answers were not all the same."""
    inputs_generated: int | None = None
    """Generation requests answered (dataset.generate): kept plus rejected."""
    inputs_kept: int | None = None
    inputs_rejected: int | None = None
    input_rejections: dict[str, int] | None = None
    """Rejected generated inputs by reason (not parseable as the task's columns, near-duplicate of ...)."""


class TeacherStats(StatusModel):
    """One of several teachers (spec.teachers) over the labeling stage."""

    name: str
    rows_answered: int | None = None
    """Rows this teacher gave a valid answer for."""
    rows_agreed: int | None = None
    """Of those, rows where its answer is the label's answer."""
    agreement_rate: float | None = None
    """rowsAgreed / rowsAnswered, 0..1."""
    tokens_in: int | None = None
    tokens_out: int | None = None
    gpu_hours: float | None = None
    """GPU-hours of its in-cluster servers (replicas x GPUs x the teacher stage's wall time); none for an
    endpoint."""


class LabelsRecord(StatusModel):
    """Written when labeling finishes: what the labels were made from, for `dataset.labelsFrom` in another
    Distillation to compare with its own."""

    fingerprint: dict[str, str]
    """A digest per part: task, teacher, prompt, rows."""
    rows: int | None = None
    """Rows with an accepted label."""
    reused_from: str | None = None
    """The workspace these labels were copied from, when they were reused."""


class ModelScore(StatusModel):
    model: str
    """teacher, base-student or distilled-student."""
    prompt: str
    """Which prompt the model was asked with (cot or short)."""
    metric: str
    score: float
    rows: int
    judge: float | None = None
    """evaluation.judge's mean score of the replies, 0-100 (ten times the mean 0-10 score)."""
    persona: float | None = None
    """evaluation.judge's mean persona-adherence score, 0-100 (prompt.persona set)."""
    unjudged: int | None = None
    """Replies the judge gave no valid score for after evaluation.judge.maxAttempts (left out of the means)."""


def results_line(results: Sequence[ModelScore]) -> str:
    """'teacher cot 69.98 / base-student cot 52.81 / distilled-student short 63.88': the Progress column of
    a finished Distillation and the line under `distillery status`'s results table."""
    return " / ".join(f"{r.model} {r.prompt} {_score_text(r)}" for r in results)


def _score_text(result: ModelScore) -> str:
    """The main score, and the judge's beside it when there is one: '41.20 judge 72.50'."""
    main = f"{result.score:.2f}"
    return main if result.judge is None else f"{main} judge {result.judge:.2f}"


class DistillationStatus(StatusModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    progress_summary: str | None = None
    """One short line for kubectl get, e.g. 'labeling 340/1000'."""
    conditions: list[Condition] = Field(default_factory=list)
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    progress: Progress | None = None
    results: list[ModelScore] | None = None
    student_endpoint: str | None = None
    """OpenAI-compatible base URL of the served student."""
    gpu_hours: float | None = None
    """GPU-hours across all stages so far."""
    teachers: list[TeacherStats] | None = None
    """Several teachers: each one's answers, agreement with the labels, tokens and GPU-hours."""
    labels: LabelsRecord | None = None
    """Set when labeling has finished."""
