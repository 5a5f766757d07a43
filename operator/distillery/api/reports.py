"""What the stage pods report to the operator, and how the reports of one stage's pods combine.

A pod's final summary travels in its termination message (Kubernetes keeps the first 4096 bytes), its live
progress in the progress ConfigMap under the key `<stage>-<index>`; both are one of these models as JSON
with the keys below, only those the pod set (`Report.dump`).

Reading is lenient: keys a newer pod adds are ignored, and a message that is not its stage's report (not
JSON, a number where a count belongs) reads as None, never as an exception, because the operator must never
crash on what a resource holds. Writing is strict: the models refuse a key they do not define.

The workload programs' exit codes are here too, because the operator's Jobs act on them (`ExitCode.final`).
"""

import json
import signal
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillery.api.status import Stage


class ExitCode(IntEnum):
    """How every stage program exits; one value per meaning, whichever program."""

    OK = 0
    CONFIG = 2
    """A configuration error: a model that does not load, a checkpoint this run cannot resume, labels that
    are not the ones asked for, an unreadable pipeline.json."""
    TOO_FEW_LABELS = 3
    """Labeling: fewer rows got a valid answer than teacher.minSuccessRatio asks."""
    TEACHER_UNREACHABLE = 4
    """The teacher stayed unreachable (or kept failing); a rerun resumes where this one stopped."""
    NO_DATA = 5
    """Nothing to work on: no trainable example, no validation row with a reference."""
    TOO_FEW_INPUTS = 6
    """Generation: fewer inputs kept than dataset.generate.count within dataset.generate.maxRequests."""
    TERMINATED = 128 + signal.SIGTERM
    """Stopped by SIGTERM (suspend, drain, deletion) after saving what a rerun resumes from."""

    @property
    def final(self) -> bool:
        """A rerun fails the same way: the Job fails at once rather than spend its retries (and GPUs)."""
        return self in FINAL_EXIT_CODES


FINAL_EXIT_CODES = frozenset({ExitCode.CONFIG, ExitCode.TOO_FEW_LABELS, ExitCode.NO_DATA, ExitCode.TOO_FEW_INPUTS})


def progress_key(stage: str, index: int) -> str:
    """The progress ConfigMap key of a stage's pod (its shard, or its rank for training)."""
    return f"{stage}-{index:05d}"


def parse_progress_key(key: str) -> tuple[str, int] | None:
    """(stage, index) of a key `progress_key` built; None for any other key."""
    stage, dash, index = key.rpartition("-")
    return (stage, int(index)) if dash and stage and index.isdigit() else None


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    error: str | None = None
    """Why the program failed; absent when it succeeded."""

    def dump(self) -> dict[str, Any]:
        """The keys the writer set, as JSON values."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def known(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The keys of `data` this model reads (a newer pod may write more)."""
        return {key: value for key, value in data.items() if key in cls.model_fields}

    @classmethod
    def read(cls, data: Any) -> Self | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls.model_validate(cls.known(data))
        except ValidationError:
            return None

    @classmethod
    def parse(cls, text: str) -> Self | None:
        try:
            return cls.read(json.loads(text))
        except (ValueError, RecursionError):
            return None

    @classmethod
    def parse_all(cls, texts: Iterable[str]) -> list[Self]:
        """The texts that are reports of this stage, in order; the others are skipped."""
        return [report for text in texts if (report := cls.parse(text)) is not None]

    @classmethod
    @abstractmethod
    def merge(cls, reports: Sequence[Self]) -> Self:
        """One report for the stage from those of its pods (one per shard, node or retried pod)."""


def _add(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


class GenerationReport(Report):
    """The generator's one pod: live progress (the counts) and its final summary (all of it)."""

    stage: str | None = None
    """The program that wrote it, for people reading the raw message."""
    generated: int = 0
    kept: int = 0
    rejected: int = 0
    rejections: dict[str, int] = Field(default_factory=dict)
    """Rejected inputs by reason."""
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int | None = None
    resumed: int | None = None
    """Requests a restarted pod found already answered in generated/log.jsonl."""
    columns: list[str] | None = None
    wall_seconds: float | None = None
    path: str | None = None
    """Where the kept inputs are, relative to the workspace."""

    @classmethod
    def merge(cls, reports: Sequence[Self]) -> Self:
        reasons: dict[str, int] = {}
        for r in reports:
            for reason, n in r.rejections.items():
                reasons[reason] = reasons.get(reason, 0) + n
        first = reports[0] if reports else cls()
        return first.model_copy(update={
            "generated": sum(r.generated for r in reports), "kept": sum(r.kept for r in reports),
            "rejected": sum(r.rejected for r in reports), "rejections": reasons,
            "tokens_in": sum(r.tokens_in for r in reports), "tokens_out": sum(r.tokens_out for r in reports),
            "requests": _add(r.requests for r in reports)})


TEACHER_COUNT_PREFIX = "teacher."


def teacher_count_key(teacher: str, counter: str) -> str:
    """The flat key of one teacher's counter in a labeling report (`teacher.<name>.<counter>`): flat numbers
    keep the message small and each counter visible on its own."""
    return f"{TEACHER_COUNT_PREFIX}{teacher}.{counter}"


def parse_teacher_count_key(key: str) -> tuple[str, str] | None:
    """(teacher, counter) of a key `teacher_count_key` built; None for any other key."""
    if not key.startswith(TEACHER_COUNT_PREFIX):
        return None
    teacher, dot, counter = key.removeprefix(TEACHER_COUNT_PREFIX).rpartition(".")
    return (teacher, counter) if dot and teacher and counter else None


class TeacherCounts(BaseModel):
    """One of several teachers' counts in one labeling shard."""

    model_config = ConfigDict(extra="forbid")

    answered: int = 0
    """Rows it gave a valid answer for."""
    agreed: int = 0
    """Rows whose label its answer agreed with."""
    tokens_in: int = 0
    tokens_out: int = 0


class LabelingReport(Report):
    """A labeling shard's live progress and final summary (the copying pod's with dataset.labelsFrom)."""

    stage: str | None = None
    """The program that wrote it, for people reading the raw message."""
    shard: int | None = None
    shards: int | None = None
    strategy: str | None = None
    """spec.teacherStrategy, with several teachers."""
    rows_done: int = 0
    rows_ok: int = 0
    rows_rejected: int = 0
    rows_total: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rows_disagreed: int = 0
    """Several teachers: rows on which their valid answers differ."""
    teachers: dict[str, TeacherCounts] = Field(default_factory=dict)
    """Several teachers' counts by name; on the wire each is a flat `teacher.<name>.<counter>` key."""
    rows_resumed: int | None = None
    rows_unlabeled: int | None = None
    success_ratio: float | None = None
    requests: int | None = None
    wall_seconds: float | None = None
    rows_per_second: float | None = None
    teacher_unreachable_since: int | None = None
    """While the shard waits out a teacher outage: since when (Unix seconds) the teacher is unreachable."""
    teacher_error: str | None = None
    """While the shard waits out a teacher outage: the last error."""
    reused_from: str | None = None
    """dataset.labelsFrom: the workspace the labels were copied from."""

    @model_validator(mode="before")
    @classmethod
    def _fold_teacher_counts(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(parse_teacher_count_key(str(k)) for k in data):
            return data
        folded: dict[str, Any] = {}
        teachers: dict[str, dict[str, Any]] = {
            name: dict(counts) for name, counts in (data.get("teachers") or {}).items()}
        for key, value in data.items():
            parsed = parse_teacher_count_key(str(key))
            if parsed is None:
                folded[key] = value
            elif parsed[1] in TeacherCounts.model_fields:
                teachers.setdefault(parsed[0], {})[parsed[1]] = value
        return {**folded, "teachers": teachers}

    @classmethod
    def known(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in data.items()
                if key in cls.model_fields or parse_teacher_count_key(str(key)) is not None}

    def dump(self) -> dict[str, Any]:
        flat = super().dump()
        teachers = flat.pop("teachers", {})
        for name, counts in teachers.items():
            for counter, value in counts.items():
                flat[teacher_count_key(name, counter)] = value
        return flat

    @classmethod
    def merge(cls, reports: Sequence[Self]) -> Self:
        """Shards label disjoint rows: their counts add up."""
        teachers: dict[str, TeacherCounts] = {}
        for r in reports:
            for name, c in r.teachers.items():
                t = teachers.setdefault(name, TeacherCounts())
                t.answered, t.agreed = t.answered + c.answered, t.agreed + c.agreed
                t.tokens_in, t.tokens_out = t.tokens_in + c.tokens_in, t.tokens_out + c.tokens_out
        waiting = [r for r in reports if r.teacher_unreachable_since is not None]
        outage = min(waiting, key=lambda r: r.teacher_unreachable_since or 0) if waiting else None
        first = reports[0] if reports else cls()
        decided = sum(r.rows_ok + r.rows_rejected for r in reports)
        update: dict[str, Any] = {
            "shard": None,
            **{key: sum(getattr(r, key) for r in reports) for key in (
                "rows_done", "rows_ok", "rows_rejected", "rows_total", "tokens_in", "tokens_out", "rows_disagreed")},
            **{key: _add(getattr(r, key) for r in reports) for key in (
                "rows_resumed", "rows_unlabeled", "requests")},
            "teachers": teachers,
            "success_ratio": round(sum(r.rows_ok for r in reports) / decided, 4) if decided else first.success_ratio,
            "wall_seconds": max((r.wall_seconds for r in reports if r.wall_seconds is not None), default=None),
            "rows_per_second": (round(sum(r.rows_per_second for r in reports if r.rows_per_second is not None), 2)
                                if any(r.rows_per_second is not None for r in reports) else None),
            "teacher_unreachable_since": outage.teacher_unreachable_since if outage else None,
            "teacher_error": outage.teacher_error if outage else None,
        }
        return first.model_copy(update=update)


class TrainingReport(Report):
    """What a training node's lead process (local rank 0) reports: live progress while it trains (rank 0
    only), and a final summary when it ends (every node's lead: each pod has a termination message)."""

    rank: int = 0
    """The global rank of the process that wrote it; rank 0 leads the group."""
    step: int | None = None
    """Live, and when terminated: the last optimizer step finished."""
    total_steps: int | None = None
    loss: float | None = None
    """Live: the last step's loss, averaged over ranks."""
    terminated: bool | None = None
    """Stopped by SIGTERM after checkpointing step `step`."""
    steps: int | None = None
    """Final: the optimizer steps of the whole run, resumed ones included."""
    resumed_from_step: int | None = None
    final_loss: float | None = None
    tokens_per_second: float | None = None
    train_seconds: float | None = None
    wall_time_seconds: float | None = None
    world_size: int | None = None
    examples: int | None = None
    rejected: int | None = None
    bad_rows: int | None = None
    truncated: int | None = None
    dropped: int | None = None
    kd_examples: int | None = None
    """student.loss kd: examples with the teacher's distribution lined up; the others train on text alone."""
    kd_unaligned: int | None = None
    kd_missing: int | None = None
    adapter: str | None = None
    model: str | None = None
    """Full fine-tuning: where the trained model is (rank 0 only)."""
    merged: str | None = None

    @classmethod
    def merge(cls, reports: Sequence[Self]) -> Self:
        """The lead rank's report: every node lead reports the whole group's steps, loss, world size and time,
        so adding them up would count the group once per node."""
        return min(reports, key=lambda r: r.rank) if reports else cls()


class JudgeSummary(BaseModel):
    """evaluation.judge's tally over the whole evaluation."""

    model_config = ConfigDict(extra="forbid")

    model: str
    requests: int = 0
    malformed: int = 0
    unjudged: int = 0
    last_problem: str | None = None


class EvaluationResult(BaseModel):
    """One model's score under one prompt."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str = ""
    score: float | None = None
    """The task's reference metric; None when nothing could be scored (a teacher without gold answers)."""
    rows: int = 0
    details: dict[str, float] | None = None
    judge: float | None = None
    """evaluation.judge's score, 0-100."""
    persona: float | None = None
    """prompt.persona adherence by the judge, 0-100."""
    unjudged: int | None = None
    note: str | None = None


class EvaluationReport(Report):
    """The evaluator's summary (it also writes it to eval/results.json)."""

    metric: str | None = None
    rows: int | None = None
    reference: str | None = None
    """gold, teacher or mixed: what the students' answers were compared with."""
    gold_rows: int | None = None
    validation_rows: int | None = None
    results: list[EvaluationResult] = Field(default_factory=list)
    judge: JudgeSummary | None = None

    @field_validator("results", mode="before")
    @classmethod
    def _readable_results(cls, value: Any) -> Any:
        """Entries that do not read as a result are left out, not the whole report."""
        if not isinstance(value, list):
            return value
        kept: list[Any] = []
        for entry in value:
            if isinstance(entry, dict):
                try:
                    entry = EvaluationResult.model_validate(
                        {k: v for k, v in entry.items() if k in EvaluationResult.model_fields})
                except ValidationError:
                    continue
            kept.append(entry)
        return kept

    @classmethod
    def merge(cls, reports: Sequence[Self]) -> Self:
        """One pod evaluates: its report."""
        return reports[0] if reports else cls()


REPORT_OF_STAGE: dict[str, type[Report]] = {
    Stage.GENERATION.value: GenerationReport,
    Stage.LABELING.value: LabelingReport,
    Stage.TRAINING.value: TrainingReport,
    Stage.EVALUATION.value: EvaluationReport,
}
"""Each Job stage's report, by the stage's name (its pods' stage label and progress key prefix)."""


def stage_report(stage: str, texts: Iterable[str], succeeded: bool = False) -> Report | None:
    """The stage's report merged from its pods' messages; None when none of them is one.

    `succeeded`: only the reports of pods that succeeded, for a finished stage. A pod that failed and was
    replaced (say while the teacher was unreachable) reported counts that its replacement reports again."""
    model = REPORT_OF_STAGE[stage]
    reports = [r for r in model.parse_all(texts) if not succeeded or r.error is None]
    return model.merge(reports) if reports else None
