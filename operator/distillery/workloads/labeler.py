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
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from distillery.api.pipeline import (
    CONFIG_FILE,
    CONFIG_MOUNT_DIR,
    JOB_COMPLETION_INDEX_ENV,
    PipelineConfig,
    TeacherClientConfig,
)
from distillery.workloads.datasets import ROW_ID, split_rows
from distillery.workloads.environment import workspace_layout
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
    write_termination_message,
)
from distillery.workloads.tasks import MalformedAnswer, MissingColumn, Parsed, TaskDefinition, get_task

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

outage_sleep = asyncio.sleep
"""How an outage waits between probes of the teacher (tests replace it to restart the teacher meanwhile)."""

Status = Literal["ok", "rejected"]


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


def shard_path(labels_dir: Path, split: str, index: int) -> Path:
    return labels_dir / f"{split}-shard-{index:05d}.jsonl"


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
            return await self.client.chat(messages, self.teacher.sampling, n=n)

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
                                requests=sum(p.requests for p in parts))
        self.counters.tokens_in += result.tokens_in
        self.counters.tokens_out += result.tokens_out
        return result

    async def label_row(self, split: str, row: dict[str, Any]) -> LabelRecord | None:
        tokens_in = tokens_out = 0

        def record(status: Status, attempts: int, parsed: Parsed | None = None,
                   raw: str = "", reason: str | None = None) -> LabelRecord:
            return LabelRecord(
                split=split, row_id=row[ROW_ID], row=row, answer=parsed.answer if parsed else "",
                rationale=parsed.rationale if parsed else "", raw=raw, attempts=attempts,
                tokens_in=tokens_in, tokens_out=tokens_out, status=status, reason=reason,
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
            for text, finish in zip(sample.texts, sample.finish_reasons, strict=True):
                # A cut-off answer may still parse, but trained on it (then end-of-turn) the student
                # learns to stop mid-sentence.
                if finish == "length":
                    reason, raw = TRUNCATED, text
                    continue
                try:
                    votes.append((self.task.parse(text, row), text))
                except MalformedAnswer as err:
                    reason, raw = err.reason, text
            if votes:
                parsed, text = majority(votes)
                return record("ok", attempt, parsed, raw=text)
        return record("rejected", self.teacher.max_attempts, raw=raw, reason=reason or "no answer")


def _shard_rows(rows: list[dict[str, Any]], index: int, shards: int) -> list[dict[str, Any]]:
    return [row for row in rows if row[ROW_ID] % shards == index]


async def run(cfg: PipelineConfig, task: TaskDefinition, splits: dict[str, list[dict[str, Any]]], index: int,
              progress_interval_s: float = 5.0) -> tuple[dict[str, Any], int]:
    """Label this shard's rows of every split; returns (summary, exit code)."""
    started = time.monotonic()
    labels_dir = cfg.workspace.labels_dir
    mine = {split: _shard_rows(splits.get(split, []), index, cfg.label_shards) for split in SPLITS}
    for rows in mine.values():
        if rows:
            # A first row without a needed column is a column-mapping error: fail now, not row by row.
            task.teacher_messages(rows[0])
    writers = {split: LabelWriter(shard_path(labels_dir, split, index)) for split in SPLITS}
    client = OpenAIChatClient(
        cfg.teacher.base_url, cfg.teacher.model, timeout_s=cfg.teacher.request_timeout_seconds,
        max_attempts=cfg.teacher.max_attempts,
    )
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

    interrupted = False
    async with client:
        for writer in writers.values():
            writer.start()
        reporter = LiveProgress("labeling", index, lambda: counters.as_dict() | labeler.outage.report(),
                                progress_interval_s)
        reporter.start()
        labeling = asyncio.ensure_future(labeler.label_all(pending, writers))
        loop = asyncio.get_running_loop()
        # Preemption sends SIGTERM: stop asking, keep what is finished, exit promptly. Signals reach
        # only the main thread, so a labeler run from another thread (tests) leaves them alone.
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:
            loop.add_signal_handler(signal.SIGTERM, labeling.cancel)
        try:
            await labeling
        except asyncio.CancelledError:
            if not labeling.cancelled():
                raise
            interrupted = True
        finally:
            if on_main_thread:
                loop.remove_signal_handler(signal.SIGTERM)
            for writer in writers.values():
                await writer.close()
            await asyncio.to_thread(reporter.stop)

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
    return summary, EXIT_OK


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
        task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
        train, validation = split_rows(cfg, args.pvc_base)
        summary, code = asyncio.run(run(cfg, task, {"train": train, "validation": validation},
                                        args.shard_index, args.progress_interval))
    except (OSError, ValueError, MissingColumn) as err:
        return _fail(f"{type(err).__name__}: {err}")
    write_termination_message(summary)
    print(compact_json(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
