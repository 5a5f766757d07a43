"""The labels a labeling stage writes and the stages after it read: one JSON line per row.

`<workspace>/labels/<split>-shard-<index>.jsonl` holds one `LabelRecord` per finished row of a shard. With
several teachers, `<workspace>/labels/teachers/<split>-shard-<index>.jsonl` holds each teacher's record per
row as soon as it answers (outside the labels files' glob), so a restarted pod asks only the teachers that
had not answered.
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from distillery.workloads.teacher_logprobs import TokenLogprobs

log = logging.getLogger("distillery.labels")

FSYNC_INTERVAL_S = 0.5

Status = Literal["ok", "rejected"]


class TeacherVote(BaseModel):
    """What one of several teachers said for a row, kept in the row's record."""

    status: Status
    answer: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    agreed: bool = False
    """Its answer is the label's answer."""
    reason: str | None = None


class Alternative(BaseModel):
    """Another teacher's valid reply to the row (teacherStrategy all): one more training example."""

    teacher: str
    answer: str
    rationale: str


class LabelRecord(BaseModel):
    """One line of a labels file; the trainer and the evaluator read these."""

    split: str
    row_id: int
    row: dict[str, Any]
    answer: str
    rationale: str
    raw: str
    attempts: int
    tokens_in: int
    tokens_out: int
    status: Status
    reason: str | None = None
    logprobs: TokenLogprobs | None = None
    """student.loss kd: the teacher's tokens of `raw` and its top-k log-probabilities at each."""
    teacher: str | None = None
    """Several teachers: whose reply this is (in the teachers' replies files), or whose reply the label is."""
    teachers: dict[str, TeacherVote] | None = None
    """Several teachers: what each one said."""
    alternatives: list[Alternative] | None = None
    """teacherStrategy all: the other teachers' valid replies."""


def shard_path(labels_dir: Path, split: str, index: int) -> Path:
    return labels_dir / f"{split}-shard-{index:05d}.jsonl"


def replies_path(labels_dir: Path, split: str, index: int) -> Path:
    """Several teachers: each teacher's record per row, outside the labels files' glob."""
    return labels_dir / "teachers" / f"{split}-shard-{index:05d}.jsonl"


def read_records(path: Path) -> tuple[list[LabelRecord], int]:
    """The records of a labels file and the byte length of its complete lines.

    A pod killed mid-write leaves a last line without its newline; it is not a record,
    and the caller truncates it away before appending.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(LabelRecord.model_validate_json(line))
        except ValidationError:
            log.warning("%s:%d: skipping an unreadable record; that row will be labeled again", path, number)
    return records, complete


def read_labels(labels_dir: Path, split: str) -> list[LabelRecord]:
    """Every shard's records of a split, one per row (the first if a row was written twice), by row_id."""
    by_row: dict[int, LabelRecord] = {}
    for path in sorted(labels_dir.glob(f"{split}-shard-*.jsonl")):
        for record in read_records(path)[0]:
            by_row.setdefault(record.row_id, record)
    return [by_row[row_id] for row_id in sorted(by_row)]


class LabelWriter:
    """Appends records to one file as they finish.

    Each record goes to the kernel with one unbuffered write as soon as its row finishes, so a
    killed or preempted pod (the process dies, the node lives) loses no finished row. fsync only
    matters when the node itself goes down; it runs every `fsync_interval_s` and on close, since
    one per row would cost a disk round trip per row.
    """

    def __init__(self, path: Path, fsync_interval_s: float = FSYNC_INTERVAL_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        records, complete = read_records(path)
        self.existing = records
        self.done = {r.row_id for r in records}
        self.handle = open(path, "ab", buffering=0)
        self.handle.truncate(complete)
        self.fsync_interval_s = fsync_interval_s
        self.dirty = False
        self.syncer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.syncer = asyncio.create_task(self._sync_periodically())

    def put(self, record: LabelRecord) -> None:
        self.done.add(record.row_id)
        self.handle.write(record.model_dump_json(exclude_none=True).encode() + b"\n")
        self.dirty = True

    async def _sync(self) -> None:
        if self.dirty:
            self.dirty = False
            await asyncio.to_thread(os.fsync, self.handle.fileno())

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval_s)
            await self._sync()

    async def close(self) -> None:
        if self.syncer is not None:
            self.syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.syncer
        await self._sync()
        self.handle.close()
