"""The labeling stage: the teachers answer every row of this pod's shard, for train and validation.

One pod of the labeling Indexed Job takes the rows with row_id % shards == index
(index from JOB_COMPLETION_INDEX) and appends one JSON line per finished row to
`<workspace>/labels/<split>-shard-<index>.jsonl` (`labels`). A restarted pod reads that file
first and asks the teachers only for rows not in it, so preemption costs at most
the requests that were in flight.

A single teacher is a list of one (`PipelineConfig.teacher_list`) without a teacherStrategy: its reply is
the row's label. With several teachers (pipeline `teachers`), every teacher is asked for every row at once
and each one's record goes to the replies file as soon as it finishes, so a restarted pod asks only the
teachers that had not answered. The row's record in the labels file then holds the combined label
(teacherStrategy vote, judge or all; see `teacher_votes`, `strategy_judge`) and what each teacher said
(`teachers`).

A row ends `ok` (a valid answer) or `rejected` (malformed after teacher.maxAttempts
tries, an answer cut off at max_tokens, or a request the teacher refuses with a 4xx).
A teacher that stops answering is waited out (`teacher_outage`) for up to teacher.outageBudgetSeconds,
and the rows in flight are asked again when it is back. Past the budget, or on 401/403/404, rows
are not recorded: the stage exits TEACHER_UNREACHABLE (`api.reports.ExitCode`) and a rerun retries
them; TOO_FEW_LABELS means too few rows got a valid answer. Finished labels get their fingerprint
(`label_reuse`), which a run with dataset.labelsFrom checks before it copies them instead of asking the teachers.

With student.loss kd each request also asks for the top-k log-probabilities of every generated token
(`logprobs`, `top_logprobs`), and an accepted record carries those of the chosen answer (`logprobs`) in the
same line, so they survive a restart exactly as the label does. An answer returned without them is treated
as malformed: asked again, then rejected.
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
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

from distillery.api.pipeline import (
    CONFIG_FILE,
    CONFIG_MOUNT_DIR,
    JOB_COMPLETION_INDEX_ENV,
    PipelineConfig,
    TeacherClientConfig,
)
from distillery.api.reports import ExitCode, LabelingReport, TeacherCounts
from distillery.api.spec import LossType, StrategyMode
from distillery.api.status import Stage
from distillery.workloads.datasets import ROW_ID, split_rows
from distillery.workloads.environment import workspace_layout
from distillery.workloads.label_reuse import LabelsMismatch, copy_labels, write_fingerprint
from distillery.workloads.labels import (
    Alternative,
    LabelRecord,
    LabelWriter,
    Status,
    TeacherVote,
    replies_path,
    shard_path,
)
from distillery.workloads.openai_client import (
    ChatResult,
    OpenAIChatClient,
    TeacherMisconfigured,
    TeacherRejected,
    TeacherUnavailable,
    teacher_client,
)
from distillery.workloads.program import ProgramResult, run_program
from distillery.workloads.progress import LiveProgress
from distillery.workloads.strategy_judge import StrategyJudge, StrategyJudgeUnavailable
from distillery.workloads.tasks import MalformedAnswer, MissingColumn, Parsed, TaskDefinition, get_task
from distillery.workloads.teacher_logprobs import TokenLogprobs
from distillery.workloads.teacher_outage import TeacherOutage
from distillery.workloads.teacher_votes import plurality

log = logging.getLogger("distillery.labeler")

PROGRAM = "label"
SPLITS = ("train", "validation")

TRUNCATED = "truncated: the answer reached max_tokens (finish_reason length)"
NO_LOGPROBS = "the teacher returned no log-probabilities (logprobs.content), which student.loss kd needs"


def majority(votes: list[tuple[Parsed, str]]) -> tuple[Parsed, str]:
    """The first vote for the most common answer (Counter keeps first-seen order among ties)."""
    if len(votes) == 1:
        return votes[0]
    winner = Counter(parsed.answer for parsed, _ in votes).most_common(1)[0][0]
    return next(vote for vote in votes if vote[0].answer == winner)


class Teacher:
    """One teacher's side of the labeling: its client, request slots, attempts and outage; asks it for a row.

    The tokens of its requests go to the labeler's counts as they come back."""

    def __init__(self, cfg: PipelineConfig, teacher: TeacherClientConfig, task: TaskDefinition,
                 client: OpenAIChatClient, counts: LabelingReport) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.task = task
        self.client = client
        self.counts = counts
        self.requests = asyncio.Semaphore(teacher.concurrency)
        self.last_error = ""
        self.consecutive_unavailable = 0
        # A wrong key, URL or model name fails every row; stop after this many in a row instead.
        self.unavailable_limit = max(8, 2 * teacher.concurrency)
        self.outage = TeacherOutage(teacher.outage_budget_seconds)
        loss = cfg.student.loss
        self.top_logprobs = loss.top_logprobs if loss.type == LossType.KD else None

    def stopped(self) -> bool:
        return self.consecutive_unavailable >= self.unavailable_limit or self.outage.exhausted

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
        self.counts.tokens_in += result.tokens_in
        self.counts.tokens_out += result.tokens_out
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
        # Greedy decoding gives the same reply again (vLLM's and llama.cpp's both), so asking again only repeats
        # its cost: one attempt (a real 0.5B teacher spent 40 s of a 2-core machine on each such row).
        attempts = 1 if self.teacher.sampling.temperature == 0 else self.teacher.max_attempts
        while attempt < attempts:
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
        return record("rejected", attempts, raw=raw, reason=reason or "no answer")


class Labeler:
    """Asks every teacher for each row at once and makes the row's label of their replies: a single teacher's
    reply as it is (no teacherStrategy), several teachers' combined by the teacher strategy.

    Each teacher has its own client, concurrency, attempts and outage budget; a row whose teacher stays
    unreachable is not recorded (a rerun asks that teacher again), while with several teachers the replies of
    the teachers that did answer are kept in the replies file."""

    def __init__(self, cfg: PipelineConfig, task: TaskDefinition, clients: dict[str, OpenAIChatClient],
                 judge: StrategyJudge | None) -> None:
        self.cfg, self.task, self.strategy = cfg, task, cfg.teacher_strategy
        self.counts = LabelingReport(rows_done=0, rows_ok=0, rows_rejected=0, rows_total=0, tokens_in=0, tokens_out=0)
        """The shard's counts so far; every one is reported, zero included."""
        self.teachers = {str(t.name): Teacher(cfg, t, task, clients[str(t.name)], self.counts)
                         for t in cfg.teacher_list()}
        self.order = list(self.teachers)
        assert (self.strategy is None) == (len(self.order) == 1), "a teacherStrategy combines several teachers"
        self.judge = judge
        self.per_teacher = {name: TeacherCounts() for name in self.order} if self.several else {}
        self.rows_disagreed = 0
        self.unlabeled = 0
        self.judge_error = ""
        """Set once the judge stayed unreachable: labeling stops, a rerun resumes."""
        self.replies: dict[tuple[str, int], dict[str, LabelRecord]] = {}
        """Teachers' records of rows not decided yet (from the replies file of a pod that stopped)."""

    @property
    def several(self) -> bool:
        """Several teachers, combined by the teacher strategy; each one's record is kept (the replies file) as
        it answers, before the row's label is decided."""
        return self.strategy is not None

    @property
    def last_error(self) -> str:
        errors = [f"{name}: {t.last_error}" if self.several else t.last_error
                  for name, t in self.teachers.items() if t.last_error]
        return "; ".join([*errors, *([f"judge: {self.judge_error}"] if self.judge_error else [])])

    def stopped(self) -> bool:
        return bool(self.judge_error) or any(t.stopped() for t in self.teachers.values())

    def snapshot(self) -> LabelingReport:
        """A copy of the counts, with several teachers `rows_disagreed` and each teacher's counts too: numbers
        the operator adds up across shards."""
        teachers = {name: counts.model_copy() for name, counts in self.per_teacher.items()}
        several = {"rows_disagreed": self.rows_disagreed} if self.several else {}
        return self.counts.model_copy(update={**several, "teachers": teachers})

    def live(self) -> LabelingReport:
        """The live progress report: the snapshot, and while a teacher is unreachable since when and why (the
        first such teacher's)."""
        report = self.snapshot()
        for teacher in self.teachers.values():
            if teacher.outage.report(report):
                break
        return report

    def account(self, record: LabelRecord) -> None:
        """Counts a recorded row (its tokens were counted as its requests came back)."""
        self.counts.rows_done += 1
        self.counts.rows_ok += record.status == "ok"
        self.counts.rows_rejected += record.status == "rejected"
        votes = record.teachers or {}
        for name, vote in votes.items():
            counts = self.per_teacher.setdefault(name, TeacherCounts())
            counts.tokens_in += vote.tokens_in
            counts.tokens_out += vote.tokens_out
            counts.answered += vote.status == "ok"
            counts.agreed += vote.agreed
        self.rows_disagreed += len({v.answer for v in votes.values() if v.status == "ok"}) > 1

    def resume(self, mine: dict[str, list[dict[str, Any]]], writers: dict[str, LabelWriter],
               reply_writers: dict[str, LabelWriter]) -> None:
        """Counts the rows of this shard that an earlier pod recorded, and keeps the teachers' replies to rows
        it had not decided, so they are not asked again."""
        for split in SPLITS:
            ids = {row[ROW_ID] for row in mine[split]}
            for record in writers[split].existing:
                if record.row_id not in ids:
                    continue  # written under another dataset or shard count: not part of this shard now
                self.account(record)
                self.counts.tokens_in += record.tokens_in
                self.counts.tokens_out += record.tokens_out
            for record in reply_writers[split].existing if split in reply_writers else []:
                if record.row_id in ids and record.row_id not in writers[split].done and record.teacher:
                    self.replies.setdefault((split, record.row_id), {})[record.teacher] = record
                    self.counts.tokens_in += record.tokens_in
                    self.counts.tokens_out += record.tokens_out

    async def label_all(self, pending: Iterator[tuple[str, dict[str, Any]]], writers: dict[str, LabelWriter],
                        reply_writers: dict[str, LabelWriter]) -> None:
        async def worker() -> None:
            for split, row in pending:
                if self.stopped():
                    self.unlabeled += 1
                    continue
                try:
                    record = await self.label_row(split, row, reply_writers.get(split))
                except StrategyJudgeUnavailable as err:
                    self.judge_error = str(err)
                    record = None
                if record is None:
                    self.unlabeled += 1
                    continue
                writers[split].put(record)
                self.account(record)

        # Rows in flight: enough to keep the most concurrent teacher busy; each teacher's own semaphore
        # bounds the requests it gets. A fixed pool pulling from one iterator keeps memory flat however
        # many rows the shard has.
        await asyncio.gather(*(worker() for _ in range(max(t.teacher.concurrency for t in self.teachers.values()))))

    async def label_row(self, split: str, row: dict[str, Any], reply_writer: LabelWriter | None) -> LabelRecord | None:
        known = self.replies.pop((split, row[ROW_ID]), {})

        async def ask(name: str) -> LabelRecord | None:
            record = await self.teachers[name].label_row(split, row)
            if record is not None:
                if reply_writer is not None:
                    record = record.model_copy(update={"teacher": name})
                    reply_writer.put(record)
                known[name] = record
            return record

        answers = await asyncio.gather(*(ask(name) for name in self.order if name not in known))
        if any(answer is None for answer in answers):
            if known:
                self.replies[(split, row[ROW_ID])] = known
            return None
        return await self.decide(split, row, [(name, known[name]) for name in self.order])

    async def decide(self, split: str, row: dict[str, Any], replies: list[tuple[str, LabelRecord]]) -> LabelRecord:
        if self.strategy is None:
            return replies[0][1]
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
        if self.strategy == StrategyMode.VOTE:
            winner, why = plurality([(name, r.answer) for name, r in accepted])
            if winner is None:
                return rejected(why)
            chosen = next(reply for reply in accepted if reply[1].answer == winner)
        elif self.strategy == StrategyMode.JUDGE and len({r.answer for _, r in accepted}) > 1:
            assert self.judge is not None
            pick, why, judge_in, judge_out = await self.judge.pick(self.task.teacher_messages(row),
                                                                   [r.raw for _, r in accepted])
            self.counts.tokens_in += judge_in
            self.counts.tokens_out += judge_out
            tokens_in, tokens_out = tokens_in + judge_in, tokens_out + judge_out
            if pick is None:
                return rejected(why)
            chosen = accepted[pick]
        elif self.strategy == StrategyMode.ALL:
            alternatives = [Alternative(teacher=name, answer=r.answer, rationale=r.rationale)
                            for name, r in accepted[1:]]
        name, reply = chosen
        for other, r in accepted:
            votes[other].agreed = r.answer == reply.answer
        return LabelRecord(split=split, row_id=row[ROW_ID], row=row, answer=reply.answer, rationale=reply.rationale,
                           raw=reply.raw, attempts=attempts, tokens_in=tokens_in, tokens_out=tokens_out,
                           status="ok", teacher=name, teachers=votes, alternatives=alternatives)


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
              progress_interval_s: float = 5.0) -> tuple[ExitCode, LabelingReport]:
    """Label this shard's rows of every split with every teacher; returns (exit code, summary)."""
    started = time.monotonic()
    labels_dir = cfg.workspace.labels_dir
    mine = _my_rows(cfg, task, splits, index)
    teachers = cfg.teacher_list()
    clients = {str(t.name): teacher_client(t) for t in teachers}
    judge = (StrategyJudge(cfg.strategy_judge, teacher_client(cfg.strategy_judge))
             if cfg.strategy_judge is not None else None)
    labeler = Labeler(cfg, task, clients, judge)
    writers = {split: LabelWriter(shard_path(labels_dir, split, index)) for split in SPLITS}
    reply_writers = ({split: LabelWriter(replies_path(labels_dir, split, index)) for split in SPLITS}
                     if labeler.several else {})
    counts = labeler.counts
    counts.rows_total = sum(len(rows) for rows in mine.values())
    labeler.resume(mine, writers, reply_writers)
    resumed = counts.rows_done
    pending = ((split, row) for split in SPLITS for row in mine[split] if row[ROW_ID] not in writers[split].done)
    log.info("shard %d/%d: %d rows, %d already labeled, %d with some teachers' replies; teachers %s, strategy %s",
             index, cfg.label_shards, counts.rows_total, resumed, len(labeler.replies),
             ", ".join(labeler.order), cfg.teacher_strategy)
    if cfg.prompt.self_consistency > 1 and any(t.sampling.temperature == 0 for t in teachers):
        log.warning("selfConsistency %d with temperature 0: the samples will agree by construction",
                    cfg.prompt.self_consistency)

    async with contextlib.AsyncExitStack() as stack:
        for client in [*clients.values(), *([judge.client] if judge else [])]:
            await stack.enter_async_context(client)
        reporter = LiveProgress(Stage.LABELING.value, index, labeler.live, progress_interval_s)
        interrupted = await until_done_or_sigterm(labeler.label_all(pending, writers, reply_writers),
                                                  [*writers.values(), *reply_writers.values()], reporter)

    wall = time.monotonic() - started
    decided = counts.rows_ok + counts.rows_rejected
    ratio = counts.rows_ok / decided if decided else 1.0
    unlabeled = counts.rows_total - counts.rows_done
    summary = labeler.snapshot()
    summary.stage, summary.shard, summary.shards = PROGRAM, index, cfg.label_shards
    if cfg.teacher_strategy:
        summary.strategy = str(cfg.teacher_strategy)
    summary.rows_resumed, summary.rows_unlabeled, summary.success_ratio = resumed, unlabeled, round(ratio, 4)
    summary.requests = sum(c.requests_sent for c in clients.values()) + (judge.client.requests_sent if judge else 0)
    summary.wall_seconds = round(wall, 3)
    summary.rows_per_second = round((counts.rows_done - resumed) / wall, 2)
    min_ratio = min(t.min_success_ratio for t in teachers)
    if interrupted:
        summary.error = "interrupted by SIGTERM; a rerun resumes"
        return ExitCode.TERMINATED, summary
    if unlabeled:
        who = "a teacher" if labeler.several else "the teacher"
        summary.error = (f"{unlabeled} rows not labeled, {who} kept failing ({labeler.last_error[:300]}); "
                         "a rerun resumes")
        return ExitCode.TEACHER_UNREACHABLE, summary
    if ratio < min_ratio:
        bound = "the teachers' minSuccessRatio" if labeler.several else "teacher.minSuccessRatio"
        summary.error = f"only {ratio:.1%} of rows got a valid answer, below {bound} {min_ratio:.0%}"
        return ExitCode.TOO_FEW_LABELS, summary
    write_fingerprint(cfg)
    return ExitCode.OK, summary


def reuse_labels(cfg: PipelineConfig, base_dir_for_pvc: str | None = None) -> tuple[ExitCode, LabelingReport]:
    """dataset.labelsFrom: copy the labels (and generated inputs) of another workspace instead of asking the
    teacher, once they match this run (`label_reuse`). CONFIG with the reason otherwise."""
    uri = cfg.labels_from or ""
    try:
        summary = copy_labels(cfg, base_dir_for_pvc)
    except LabelsMismatch as err:
        return ExitCode.CONFIG, LabelingReport(stage=PROGRAM, reused_from=uri, error=f"labels mismatch: {err}")
    summary.stage, summary.reused_from = PROGRAM, uri
    return ExitCode.OK, summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillery label", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}", help="pipeline.json path")
    parser.add_argument("--shard-index", type=int, default=int(os.environ.get(JOB_COMPLETION_INDEX_ENV) or 0),
                        help=f"this pod's shard (default: ${JOB_COMPLETION_INDEX_ENV} or 0)")
    parser.add_argument("--progress-interval", type=float, default=5.0,
                        help="seconds between live progress reports")
    parser.add_argument("--pvc-base", help="where pvc:// claims are mounted (default: the pod's mount root)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def work() -> ProgramResult:
        cfg = PipelineConfig.load(args.config)
        cfg = cfg.model_copy(update={"workspace": workspace_layout(cfg)})
        if not 0 <= args.shard_index < cfg.label_shards:
            return ExitCode.CONFIG, LabelingReport(
                stage=PROGRAM, error=f"shard index {args.shard_index} is outside 0..{cfg.label_shards - 1}")
        if cfg.labels_from:
            return reuse_labels(cfg, args.pvc_base)
        task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
        train, validation = split_rows(cfg, args.pvc_base)
        return asyncio.run(run(cfg, task, {"train": train, "validation": validation},
                               args.shard_index, args.progress_interval))

    return run_program(PROGRAM, work, (OSError, ValueError, MissingColumn),
                       lambda error: LabelingReport(stage=PROGRAM, error=error))


if __name__ == "__main__":
    sys.exit(main())
