"""The labeling stage: the teacher answers every row of this pod's shard, for train and validation.

One pod of the labeling Indexed Job takes the rows with row_id % shards == index
(index from JOB_COMPLETION_INDEX) and appends one JSON line per finished row to
`<workspace>/labels/<split>-shard-<index>.jsonl`. A restarted pod reads that file
first and asks the teacher only for rows not in it, so preemption costs at most
the requests that were in flight.

A row ends `ok` (a valid answer) or `rejected` (malformed after teacher.maxAttempts
tries, an answer cut off at max_tokens, or a request the teacher refuses with a 4xx).
A teacher that stops answering (restart, rollout: 5xx, timeouts, refused connections)
is waited out with capped backoff for up to teacher.outageBudgetSeconds, and the rows
in flight are asked again when it is back. Past the budget, or on 401/403/404, rows
are not recorded: the stage exits 4 and a rerun retries them. Exit 3 means too few
rows got a valid answer.

With student.loss kd each request also asks for the top-k log-probabilities of every generated token
(`logprobs`, `top_logprobs`), and an accepted record carries those of the chosen answer (`logprobs`) in the
same line, so they survive a restart exactly as the label does. An answer returned without them is treated
as malformed: asked again, then rejected.

With several teachers (pipeline `teachers`), every teacher is asked for every row at once and each
one's record goes to `<workspace>/labels/teachers/<split>-shard-<index>.jsonl` as soon as it finishes, so
a restarted pod asks only the teachers that had not answered. The row's record in the labels file then
holds the combined label (teacherStrategy vote, judge or all; see `teacher_votes`) and what each teacher
said (`teachers`).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from distillery.api.modelref import pvc_parts
from distillery.api.pipeline import (
    CONFIG_FILE,
    CONFIG_MOUNT_DIR,
    FINGERPRINT_PARTS,
    JOB_COMPLETION_INDEX_ENV,
    LABELS_DIR,
    LABELS_FINGERPRINT_FILE,
    PipelineConfig,
    TeacherClientConfig,
    WorkspaceLayout,
)
from distillery.api.spec import LossType, StrategyMode
from distillery.workloads.datasets import ROW_ID, split_rows
from distillery.workloads.environment import pvc_base, teacher_api_key, workspace_layout
from distillery.workloads.openai_client import (
    ChatResult,
    OpenAIChatClient,
    TeacherMisconfigured,
    TeacherRejected,
    TeacherUnavailable,
)
from distillery.workloads.progress import (
    Counters,
    LiveProgress,
    compact_json,
    write_json_atomic,
    write_termination_message,
)
from distillery.workloads.tasks import MalformedAnswer, MissingColumn, Parsed, TaskDefinition, get_task
from distillery.workloads.teacher_logprobs import TokenLogprobs
from distillery.workloads.teacher_votes import judge_messages, parse_verdict, plurality

log = logging.getLogger("distillery.labeler")

SPLITS = ("train", "validation")
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_LOW_SUCCESS = 3
EXIT_UNLABELED = 4

FSYNC_INTERVAL_S = 0.5
OUTAGE_BACKOFF_BASE_S = 2.0
OUTAGE_BACKOFF_MAX_S = 60.0
TRUNCATED = "truncated: the answer reached max_tokens (finish_reason length)"
NO_LOGPROBS = "the teacher returned no log-probabilities (logprobs.content), which student.loss kd needs"

outage_sleep = asyncio.sleep
"""How an outage waits between probes of the teacher (tests replace it to restart the teacher meanwhile)."""

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


def majority(votes: list[tuple[Parsed, str]]) -> tuple[Parsed, str]:
    """The first vote for the most common answer (Counter keeps first-seen order among ties)."""
    if len(votes) == 1:
        return votes[0]
    winner = Counter(parsed.answer for parsed, _ in votes).most_common(1)[0][0]
    return next(vote for vote in votes if vote[0].answer == winner)


class TeacherOutage:
    """The teacher is unreachable: workers wait it out together, bounded by an outage budget.

    One worker at a time waits a backoff step and then retries its row, so a recovering teacher sees
    one probe per step, not one per worker. The first success ends the outage; workers whose request
    failed before that retry at once. Backoff doubles up to OUTAGE_BACKOFF_MAX_S.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.since: float | None = None
        self.steps = 0
        self.generation = 0
        """Outages ended so far; a worker compares it with the value seen before its request."""
        self.exhausted = False
        self.lock = asyncio.Lock()
        self.since_wall: float | None = None
        self.error = ""

    def report(self) -> dict[str, Any]:
        """For the live progress report: since when (Unix time) and why the teacher is unreachable, while it is."""
        if self.since_wall is None:
            return {}
        return {"teacher_unreachable_since": int(self.since_wall), "teacher_error": self.error[:200]}

    def ended(self) -> None:
        if self.since is not None:
            log.info("the teacher answers again after %.0f s", time.monotonic() - self.since)
            self.since, self.steps = None, 0
            self.since_wall, self.error = None, ""
            self.generation += 1

    async def wait(self, generation: int, error: str) -> bool:
        """After a failed request begun at `generation`: True to retry the row, False once over budget."""
        async with self.lock:
            if self.exhausted:
                return False
            if generation != self.generation:
                return True
            now = time.monotonic()
            if self.since is None:
                self.since, self.since_wall, self.error = now, time.time(), error
                log.warning("the teacher is unreachable (%s); waiting up to %.0f s for it", error, self.budget_s)
            left = self.since + self.budget_s - now
            if left <= 0:
                self.exhausted = True
                log.error("the teacher stayed unreachable for %.0f s, teacher.outageBudgetSeconds", self.budget_s)
                return False
            step = min(OUTAGE_BACKOFF_MAX_S, OUTAGE_BACKOFF_BASE_S * 2 ** self.steps)
            self.steps += 1
            await outage_sleep(min(step, left))
            return True


class Labeler:
    def __init__(self, cfg: PipelineConfig, task: TaskDefinition, client: OpenAIChatClient) -> None:
        self.cfg = cfg
        self.teacher: TeacherClientConfig = cfg.teacher
        self.task = task
        self.client = client
        self.requests = asyncio.Semaphore(self.teacher.concurrency)
        self.counters = Counters()
        self.unlabeled = 0
        self.last_error = ""
        self.consecutive_unavailable = 0
        # A wrong key, URL or model name fails every row; stop after this many in a row instead.
        self.unavailable_limit = max(8, 2 * self.teacher.concurrency)
        self.outage = TeacherOutage(self.teacher.outage_budget_seconds)
        loss = cfg.student.loss
        self.top_logprobs = loss.top_logprobs if loss.type == LossType.KD else None

    async def label_all(self, pending: Iterator[tuple[str, dict[str, Any]]],
                        writers: dict[str, LabelWriter]) -> None:
        async def worker() -> None:
            for split, row in pending:
                if self.consecutive_unavailable >= self.unavailable_limit or self.outage.exhausted:
                    self.unlabeled += 1
                    continue
                record = await self.label_row(split, row)
                if record is None:
                    self.unlabeled += 1
                    continue
                writers[split].put(record)
                self.counters.rows_done += 1
                self.counters.rows_ok += record.status == "ok"
                self.counters.rows_rejected += record.status == "rejected"

        # A fixed pool pulling from one iterator keeps memory flat however many rows the shard has.
        await asyncio.gather(*(worker() for _ in range(self.teacher.concurrency)))

    async def _request(self, messages: list[dict[str, str]], n: int) -> ChatResult:
        async with self.requests:
            return await self.client.chat(messages, self.teacher.sampling, n=n, top_logprobs=self.top_logprobs)

    async def sample(self, messages: list[dict[str, str]]) -> ChatResult:
        """self_consistency samples: one request with `n`, topped up by single requests when the
        server returns fewer choices (some OpenAI-compatible servers ignore `n`)."""
        n = self.cfg.prompt.self_consistency
        result = await self._request(messages, n)
        if len(result.texts) < n:
            extra = await asyncio.gather(*(self._request(messages, 1) for _ in range(n - len(result.texts))))
            parts = [result, *extra]
            result = ChatResult(texts=[text for part in parts for text in part.texts][:n],
                                finish_reasons=[reason for part in parts for reason in part.finish_reasons][:n],
                                tokens_in=sum(p.tokens_in for p in parts),
                                tokens_out=sum(p.tokens_out for p in parts),
                                requests=sum(p.requests for p in parts),
                                logprobs=[lp for part in parts for lp in part.logprobs][:n])
        self.counters.tokens_in += result.tokens_in
        self.counters.tokens_out += result.tokens_out
        return result

    async def label_row(self, split: str, row: dict[str, Any]) -> LabelRecord | None:
        tokens_in = tokens_out = 0

        def record(status: Status, attempts: int, parsed: Parsed | None = None,
                   raw: str = "", reason: str | None = None, logprobs: TokenLogprobs | None = None) -> LabelRecord:
            return LabelRecord(
                split=split, row_id=row[ROW_ID], row=row, answer=parsed.answer if parsed else "",
                rationale=parsed.rationale if parsed else "", raw=raw, attempts=attempts,
                tokens_in=tokens_in, tokens_out=tokens_out, status=status, reason=reason, logprobs=logprobs,
            )

        try:
            messages = self.task.teacher_messages(row)
        except MissingColumn as err:
            return record("rejected", 0, reason=f"bad row: {err}")
        reason, raw = "", ""
        attempt = 0
        while attempt < self.teacher.max_attempts:
            generation = self.outage.generation
            try:
                sample = await self.sample(messages)
            except TeacherRejected as err:
                self.consecutive_unavailable = 0
                return record("rejected", attempt + 1, raw=raw, reason=f"teacher refused: {err}")
            except TeacherUnavailable as err:
                self.last_error = str(err)
                # An outage is the teacher's, not the row's: it costs the row no attempt.
                if not isinstance(err, TeacherMisconfigured) and await self.outage.wait(generation, str(err)):
                    continue
                # Not recorded: a rerun should try the row again.
                self.consecutive_unavailable += 1
                log.warning("%s row %d not labeled: %s", split, row[ROW_ID], err)
                return None
            attempt += 1
            self.consecutive_unavailable = 0
            self.outage.ended()
            tokens_in += sample.tokens_in
            tokens_out += sample.tokens_out
            votes: list[tuple[Parsed, str]] = []
            vote_logprobs: list[TokenLogprobs | None] = []
            choice_logprobs = sample.logprobs or [None] * len(sample.texts)
            for text, finish, logprobs in zip(sample.texts, sample.finish_reasons, choice_logprobs, strict=True):
                # A cut-off answer may still parse, but trained on it (then end-of-turn) the student
                # learns to stop mid-sentence.
                if finish == "length":
                    reason, raw = TRUNCATED, text
                    continue
                if self.top_logprobs is not None and logprobs is None:
                    reason, raw = NO_LOGPROBS, text
                    continue
                try:
                    votes.append((self.task.parse(text, row), text))
                except MalformedAnswer as err:
                    reason, raw = err.reason, text
                    continue
                vote_logprobs.append(logprobs)
            if votes:
                chosen = majority(votes)
                parsed, text = chosen
                logprobs = vote_logprobs[next(i for i, vote in enumerate(votes) if vote is chosen)]
                return record("ok", attempt, parsed, raw=text, logprobs=logprobs)
        return record("rejected", self.teacher.max_attempts, raw=raw, reason=reason or "no answer")


def _shard_rows(rows: list[dict[str, Any]], index: int, shards: int) -> list[dict[str, Any]]:
    return [row for row in rows if row[ROW_ID] % shards == index]


async def until_done_or_sigterm(work: Coroutine[Any, Any, None], writers: Sequence[LabelWriter],
                                reporter: LiveProgress) -> bool:
    """Run `work` with its label writers and live reporter around it; True when SIGTERM interrupted it.

    Preemption sends SIGTERM: stop asking, keep what is finished (the writers flush), exit promptly. Signals
    reach only the main thread, so a labeler run from another thread (tests) leaves them alone."""
    for writer in writers:
        writer.start()
    reporter.start()
    labeling = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        loop.add_signal_handler(signal.SIGTERM, labeling.cancel)
    try:
        await labeling
    except asyncio.CancelledError:
        if not labeling.cancelled():
            raise
        return True
    finally:
        if on_main_thread:
            loop.remove_signal_handler(signal.SIGTERM)
        for writer in writers:
            await writer.close()
        await asyncio.to_thread(reporter.stop)
    return False


def _client(teacher: TeacherClientConfig) -> OpenAIChatClient:
    return OpenAIChatClient(teacher.base_url, teacher.model, timeout_s=teacher.request_timeout_seconds,
                            max_attempts=teacher.max_attempts, api_key=teacher_api_key(teacher))


def _my_rows(cfg: PipelineConfig, task: TaskDefinition, splits: dict[str, list[dict[str, Any]]],
             index: int) -> dict[str, list[dict[str, Any]]]:
    """This shard's rows of every split, checked against the task's columns."""
    mine = {split: _shard_rows(splits.get(split, []), index, cfg.label_shards) for split in SPLITS}
    for rows in mine.values():
        if rows:
            # A first row without a needed column is a column-mapping error: fail now, not row by row.
            task.teacher_messages(rows[0])
    return mine


async def run(cfg: PipelineConfig, task: TaskDefinition, splits: dict[str, list[dict[str, Any]]], index: int,
              progress_interval_s: float = 5.0) -> tuple[dict[str, Any], int]:
    """Label this shard's rows of every split; returns (summary, exit code)."""
    started = time.monotonic()
    labels_dir = cfg.workspace.labels_dir
    mine = _my_rows(cfg, task, splits, index)
    writers = {split: LabelWriter(shard_path(labels_dir, split, index)) for split in SPLITS}
    client = _client(cfg.teacher)
    labeler = Labeler(cfg, task, client)
    counters = labeler.counters
    counters.rows_total = sum(len(rows) for rows in mine.values())
    for split, writer in writers.items():
        ids = {row[ROW_ID] for row in mine[split]}
        for record in writer.existing:
            if record.row_id not in ids:
                continue  # written under another dataset or shard count: not part of this shard now
            counters.rows_done += 1
            counters.rows_ok += record.status == "ok"
            counters.rows_rejected += record.status == "rejected"
            counters.tokens_in += record.tokens_in
            counters.tokens_out += record.tokens_out
    resumed = counters.rows_done
    pending = ((split, row) for split in SPLITS for row in mine[split]
               if row[ROW_ID] not in writers[split].done)
    log.info("shard %d/%d: %d rows, %d already labeled",
             index, cfg.label_shards, counters.rows_total, resumed)
    if cfg.prompt.self_consistency > 1 and cfg.teacher.sampling.temperature == 0:
        log.warning("selfConsistency %d with temperature 0: the samples will agree by construction",
                    cfg.prompt.self_consistency)

    async with client:
        reporter = LiveProgress("labeling", index, lambda: counters.as_dict() | labeler.outage.report(),
                                progress_interval_s)
        interrupted = await until_done_or_sigterm(labeler.label_all(pending, writers), list(writers.values()),
                                                  reporter)

    wall = time.monotonic() - started
    decided = counters.rows_ok + counters.rows_rejected
    ratio = counters.rows_ok / decided if decided else 1.0
    unlabeled = counters.rows_total - counters.rows_done
    summary: dict[str, Any] = {
        "stage": "label", "shard": index, "shards": cfg.label_shards,
        **counters.as_dict(), "rows_resumed": resumed, "rows_unlabeled": unlabeled,
        "success_ratio": round(ratio, 4), "requests": client.requests_sent,
        "wall_seconds": round(wall, 3), "rows_per_second": round((counters.rows_done - resumed) / wall, 2),
    }
    if interrupted:
        summary["error"] = "interrupted by SIGTERM; a rerun resumes"
        return summary, 128 + signal.SIGTERM
    if unlabeled:
        summary["error"] = (f"{unlabeled} rows not labeled, the teacher kept failing "
                            f"({labeler.last_error[:300]}); a rerun resumes")
        return summary, EXIT_UNLABELED
    if ratio < cfg.teacher.min_success_ratio:
        summary["error"] = (f"only {ratio:.1%} of rows got a valid answer, "
                            f"below teacher.minSuccessRatio {cfg.teacher.min_success_ratio:.0%}")
        return summary, EXIT_LOW_SUCCESS
    write_fingerprint(cfg)
    return summary, EXIT_OK


def write_fingerprint(cfg: PipelineConfig) -> None:
    """What a run that reuses these labels (dataset.labelsFrom) checks; every shard writes the same."""
    write_json_atomic(cfg.workspace.labels_fingerprint, {"fingerprint": cfg.labels_fingerprint})


class JudgeUnavailable(Exception):
    """The judge stayed unreachable: the row is left for a rerun."""


class SeveralTeachers:
    """Asks every teacher for each row at once and combines their replies by the teacher strategy.

    Each teacher has its own `Labeler` (its client, concurrency, attempts and outage budget); a row whose
    teacher stays unreachable is not recorded (a rerun asks that teacher again), while the replies of the
    teachers that did answer are kept in the replies file."""

    def __init__(self, cfg: PipelineConfig, task: TaskDefinition, clients: dict[str, OpenAIChatClient],
                 judge: OpenAIChatClient | None) -> None:
        assert cfg.teachers is not None and cfg.teacher_strategy is not None
        self.cfg, self.task, self.mode = cfg, task, cfg.teacher_strategy
        self.order = [str(t.name) for t in cfg.teachers]
        self.members = {str(t.name): Labeler(cfg.model_copy(update={"teacher": t}), task, clients[str(t.name)])
                        for t in cfg.teachers}
        self.judge = judge
        self.counters = Counters()
        self.per_teacher = {name: Counter[str]() for name in self.order}
        self.rows_disagreed = 0
        self.unlabeled = 0
        self.judge_error = ""
        """Set once the judge stayed unreachable: labeling stops, a rerun resumes."""
        self.replies: dict[tuple[str, int], dict[str, LabelRecord]] = {}
        """Teachers' records of rows not decided yet (from the replies file of a pod that stopped)."""

    @property
    def last_error(self) -> str:
        errors = [f"{name}: {m.last_error}" for name, m in self.members.items() if m.last_error]
        return "; ".join([*errors, *([f"judge: {self.judge_error}"] if self.judge_error else [])])

    def stopped(self) -> bool:
        return bool(self.judge_error) or any(m.consecutive_unavailable >= m.unavailable_limit or m.outage.exhausted
                   for m in self.members.values())

    def snapshot(self) -> dict[str, int]:
        """The counters plus `rows_disagreed` and `teacher.<name>.<counter>`: flat numbers, which the
        operator adds up across shards."""
        flat = {**self.counters.as_dict(), "rows_disagreed": self.rows_disagreed}
        for name, counts in self.per_teacher.items():
            for key in ("answered", "agreed", "tokens_in", "tokens_out"):
                flat[f"teacher.{name}.{key}"] = counts[key]
        return flat

    def account(self, record: LabelRecord) -> None:
        self.counters.rows_done += 1
        self.counters.rows_ok += record.status == "ok"
        self.counters.rows_rejected += record.status == "rejected"
        self.counters.tokens_in += record.tokens_in
        self.counters.tokens_out += record.tokens_out
        votes = record.teachers or {}
        for name, vote in votes.items():
            counts = self.per_teacher.setdefault(name, Counter())
            counts["tokens_in"] += vote.tokens_in
            counts["tokens_out"] += vote.tokens_out
            counts["answered"] += vote.status == "ok"
            counts["agreed"] += vote.agreed
        self.rows_disagreed += len({v.answer for v in votes.values() if v.status == "ok"}) > 1

    async def label_all(self, pending: Iterator[tuple[str, dict[str, Any]]], writers: dict[str, LabelWriter],
                        reply_writers: dict[str, LabelWriter]) -> None:
        async def worker() -> None:
            for split, row in pending:
                if self.stopped():
                    self.unlabeled += 1
                    continue
                try:
                    record = await self.label_row(split, row, reply_writers[split])
                except JudgeUnavailable as err:
                    self.judge_error = str(err)
                    record = None
                if record is None:
                    self.unlabeled += 1
                    continue
                writers[split].put(record)
                self.account(record)

        # Rows in flight: enough to keep the most concurrent teacher busy; each teacher's own semaphore
        # bounds the requests it gets.
        await asyncio.gather(*(worker() for _ in range(max(m.teacher.concurrency for m in self.members.values()))))

    async def label_row(self, split: str, row: dict[str, Any], reply_writer: LabelWriter) -> LabelRecord | None:
        known = self.replies.pop((split, row[ROW_ID]), {})

        async def ask(name: str) -> LabelRecord | None:
            record = await self.members[name].label_row(split, row)
            if record is not None:
                record = record.model_copy(update={"teacher": name})
                reply_writer.put(record)
                known[name] = record
            return record

        answers = await asyncio.gather(*(ask(name) for name in self.order if name not in known))
        if any(answer is None for answer in answers):
            self.replies[(split, row[ROW_ID])] = known
            return None
        return await self.decide(split, row, [(name, known[name]) for name in self.order])

    async def decide(self, split: str, row: dict[str, Any], replies: list[tuple[str, LabelRecord]]) -> LabelRecord:
        votes = {name: TeacherVote(status=r.status, answer=r.answer, tokens_in=r.tokens_in,
                                   tokens_out=r.tokens_out, reason=r.reason) for name, r in replies}
        accepted = [(name, r) for name, r in replies if r.status == "ok"]
        tokens_in = sum(r.tokens_in for _, r in replies)
        tokens_out = sum(r.tokens_out for _, r in replies)
        attempts = sum(r.attempts for _, r in replies)

        def rejected(reason: str) -> LabelRecord:
            return LabelRecord(split=split, row_id=row[ROW_ID], row=row, answer="", rationale="", raw="",
                               attempts=attempts, tokens_in=tokens_in, tokens_out=tokens_out, status="rejected",
                               reason=reason, teachers=votes)

        if not accepted:
            return rejected("no teacher gave a valid answer: " +
                            "; ".join(f"{name}: {r.reason}" for name, r in replies))
        chosen = accepted[0]
        alternatives = None
        if self.mode == StrategyMode.VOTE:
            winner, why = plurality([(name, r.answer) for name, r in accepted])
            if winner is None:
                return rejected(why)
            chosen = next(reply for reply in accepted if reply[1].answer == winner)
        elif self.mode == StrategyMode.JUDGE and len({r.answer for _, r in accepted}) > 1:
            pick, why, judge_in, judge_out = await self.ask_judge(row, [r.raw for _, r in accepted])
            tokens_in, tokens_out = tokens_in + judge_in, tokens_out + judge_out
            if pick is None:
                return rejected(why)
            chosen = accepted[pick]
        elif self.mode == StrategyMode.ALL:
            alternatives = [Alternative(teacher=name, answer=r.answer, rationale=r.rationale)
                            for name, r in accepted[1:]]
        name, reply = chosen
        for other, r in accepted:
            votes[other].agreed = r.answer == reply.answer
        return LabelRecord(split=split, row_id=row[ROW_ID], row=row, answer=reply.answer, rationale=reply.rationale,
                           raw=reply.raw, attempts=attempts, tokens_in=tokens_in, tokens_out=tokens_out,
                           status="ok", teacher=name, teachers=votes, alternatives=alternatives)

    async def ask_judge(self, row: dict[str, Any], replies: list[str]) -> tuple[int | None, str, int, int]:
        """(the index of the reply the judge picked or None, why not, tokens in, tokens out)."""
        assert self.judge is not None and self.cfg.strategy_judge is not None
        messages = judge_messages(self.task.teacher_messages(row), replies)
        tokens_in = tokens_out = 0
        text = ""
        for _ in range(self.cfg.strategy_judge.max_attempts):
            try:
                result = await self.judge.chat(messages, self.cfg.strategy_judge.sampling)
            except TeacherRejected as err:
                return None, f"judge refused: {err}", tokens_in, tokens_out
            except TeacherUnavailable as err:
                raise JudgeUnavailable(str(err)) from None
            tokens_in, tokens_out = tokens_in + result.tokens_in, tokens_out + result.tokens_out
            text = result.texts[0] if result.texts else ""
            pick = parse_verdict(text, len(replies))
            if pick is not None:
                return pick, "", tokens_in, tokens_out
        return None, f"the judge gave no valid verdict line: {text[-200:]!r}", tokens_in, tokens_out


async def run_several(cfg: PipelineConfig, task: TaskDefinition, splits: dict[str, list[dict[str, Any]]],
                      index: int, progress_interval_s: float = 5.0) -> tuple[dict[str, Any], int]:
    """`run` for several teachers: label this shard's rows with every teacher; returns (summary, exit code)."""
    assert cfg.teachers is not None
    started = time.monotonic()
    labels_dir = cfg.workspace.labels_dir
    mine = _my_rows(cfg, task, splits, index)
    writers = {split: LabelWriter(shard_path(labels_dir, split, index)) for split in SPLITS}
    reply_writers = {split: LabelWriter(replies_path(labels_dir, split, index)) for split in SPLITS}
    clients = {str(t.name): _client(t) for t in cfg.teachers}
    judge = _client(cfg.strategy_judge) if cfg.strategy_judge is not None else None
    labeler = SeveralTeachers(cfg, task, clients, judge)
    labeler.counters.rows_total = sum(len(rows) for rows in mine.values())
    for split in SPLITS:
        ids = {row[ROW_ID] for row in mine[split]}
        for record in writers[split].existing:
            if record.row_id in ids:
                labeler.account(record)
        for record in reply_writers[split].existing:
            if record.row_id in ids and record.row_id not in writers[split].done and record.teacher:
                labeler.replies.setdefault((split, record.row_id), {})[record.teacher] = record
    resumed = labeler.counters.rows_done
    pending = ((split, row) for split in SPLITS for row in mine[split] if row[ROW_ID] not in writers[split].done)
    log.info("shard %d/%d: %d rows, %d already labeled, %d with some teachers' replies; teachers %s, strategy %s",
             index, cfg.label_shards, labeler.counters.rows_total, resumed, len(labeler.replies),
             ", ".join(labeler.order), cfg.teacher_strategy)

    every = [*writers.values(), *reply_writers.values()]
    async with contextlib.AsyncExitStack() as stack:
        for client in [*clients.values(), *([judge] if judge else [])]:
            await stack.enter_async_context(client)
        reporter = LiveProgress("labeling", index, labeler.snapshot, progress_interval_s)
        interrupted = await until_done_or_sigterm(labeler.label_all(pending, writers, reply_writers), every,
                                                  reporter)

    counters = labeler.counters
    wall = time.monotonic() - started
    decided = counters.rows_ok + counters.rows_rejected
    ratio = counters.rows_ok / decided if decided else 1.0
    unlabeled = counters.rows_total - counters.rows_done
    summary: dict[str, Any] = {
        "stage": "label", "shard": index, "shards": cfg.label_shards, "strategy": str(cfg.teacher_strategy),
        **labeler.snapshot(), "rows_resumed": resumed, "rows_unlabeled": unlabeled,
        "success_ratio": round(ratio, 4),
        "requests": sum(c.requests_sent for c in clients.values()) + (judge.requests_sent if judge else 0),
        "wall_seconds": round(wall, 3), "rows_per_second": round((counters.rows_done - resumed) / wall, 2),
    }
    min_ratio = min(t.min_success_ratio for t in cfg.teachers)
    if interrupted:
        summary["error"] = "interrupted by SIGTERM; a rerun resumes"
        return summary, 128 + signal.SIGTERM
    if unlabeled:
        summary["error"] = (f"{unlabeled} rows not labeled, a teacher kept failing "
                            f"({labeler.last_error[:300]}); a rerun resumes")
        return summary, EXIT_UNLABELED
    if ratio < min_ratio:
        summary["error"] = (f"only {ratio:.1%} of rows got a label, below the teachers' minSuccessRatio "
                            f"{min_ratio:.0%}")
        return summary, EXIT_LOW_SUCCESS
    write_fingerprint(cfg)
    return summary, EXIT_OK


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def reuse_labels(cfg: PipelineConfig, base_dir_for_pvc: str | None = None) -> tuple[dict[str, Any], int]:
    """dataset.labelsFrom: copy the labels (and generated inputs) of another workspace instead of asking the
    teacher, once its fingerprint file says they were made from the same task, teacher, prompts and rows,
    and every row of this run has a label there made for that very row. Exit 2 with the reason otherwise."""
    uri = cfg.labels_from or ""
    claim, rel = pvc_parts(uri) or ("", "")
    root = Path(base_dir_for_pvc or pvc_base(), claim, rel)
    source = WorkspaceLayout(root=str(root))
    summary: dict[str, Any] = {"stage": "label", "reused_from": uri}
    if not source.labels_fingerprint.is_file():
        summary["error"] = (f"labels mismatch: {uri} has no {LABELS_DIR}/{LABELS_FINGERPRINT_FILE}; its labeling "
                            "has not finished (or the path is not a workspace)")
        return summary, EXIT_CONFIG
    recorded = json.loads(source.labels_fingerprint.read_text()).get("fingerprint") or {}
    differ = [part for part in FINGERPRINT_PARTS if recorded.get(part) != cfg.labels_fingerprint.get(part)]
    if differ:
        summary["error"] = f"labels mismatch: the labels in {uri} were made with a different {', '.join(differ)}"
        return summary, EXIT_CONFIG
    mine = cfg.workspace
    if source.generated_train.is_file():
        mine.generated_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.generated_train, mine.generated_train)
    train, validation = split_rows(cfg, base_dir_for_pvc)
    counters = Counters(rows_total=len(train) + len(validation))
    for split, rows in (("train", train), ("validation", validation)):
        labelled = {r.row_id: r for r in read_labels(source.labels_dir, split)}
        for row in rows:
            record = labelled.get(row[ROW_ID])
            if record is None or _canonical(record.row) != _canonical(row):
                what = "has no label" if record is None else "differs from the labelled row"
                summary["error"] = f"labels mismatch: rows: {split} row {row[ROW_ID]} {what} in {uri}"
                return summary, EXIT_CONFIG
            counters.rows_done += 1
            counters.rows_ok += record.status == "ok"
            counters.rows_rejected += record.status == "rejected"
    mine.labels_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.labels_dir.glob("*.jsonl")):
        temporary = mine.labels_dir / f".{path.name}.tmp"
        shutil.copyfile(path, temporary)
        os.replace(temporary, mine.labels_dir / path.name)
    write_json_atomic(mine.labels_fingerprint, {"fingerprint": cfg.labels_fingerprint, "reused_from": uri})
    return {**summary, **counters.as_dict()}, EXIT_OK


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillery label", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}", help="pipeline.json path")
    parser.add_argument("--shard-index", type=int, default=int(os.environ.get(JOB_COMPLETION_INDEX_ENV) or 0),
                        help=f"this pod's shard (default: ${JOB_COMPLETION_INDEX_ENV} or 0)")
    parser.add_argument("--progress-interval", type=float, default=5.0,
                        help="seconds between live progress reports")
    parser.add_argument("--pvc-base", help="where pvc:// claims are mounted (default: the pod's mount root)")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    summary = {"stage": "label", "error": message}
    write_termination_message(summary)
    print(message, file=sys.stderr)
    print(compact_json(summary), flush=True)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = PipelineConfig.load(args.config)
        cfg = cfg.model_copy(update={"workspace": workspace_layout(cfg)})
        if not 0 <= args.shard_index < cfg.label_shards:
            return _fail(f"shard index {args.shard_index} is outside 0..{cfg.label_shards - 1}")
        if cfg.labels_from:
            summary, code = reuse_labels(cfg, args.pvc_base)
            write_termination_message(summary)
            print(compact_json(summary), flush=True)
            return code
        task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
        train, validation = split_rows(cfg, args.pvc_base)
        labeling = run_several if cfg.teachers else run
        summary, code = asyncio.run(labeling(cfg, task, {"train": train, "validation": validation},
                                             args.shard_index, args.progress_interval))
    except (OSError, ValueError, MissingColumn) as err:
        return _fail(f"{type(err).__name__}: {err}")
    write_termination_message(summary)
    print(compact_json(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
