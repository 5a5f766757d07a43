"""The generation stage (dataset.generate): the teacher writes new task inputs from a handful of seed rows.

Each request shows the teacher a few seeds (only the columns the task reads) and asks for one new input as a
JSON object with those columns. A reply is kept when it parses as the task's columns (the same keys and value
types as the seeds, none empty, and the task can build its teacher prompt from it) and is not a near-duplicate
of a seed, of a row of dataset.train or dataset.validation, or of an input kept before it; otherwise it is
rejected with a reason. Every request's outcome is appended to `<workspace>/generated/log.jsonl` as it
finishes, so a restarted pod resumes where it stopped and never asks for a kept input again. Once `count`
inputs are kept they are written to `<workspace>/generated/train.jsonl` in the dataset's own shape (the seeds'
column names, no row ids), which labeling reads after dataset.train's rows and which another Distillation
can use as `pvc://<name>-workspace/generated/train.jsonl`.

Exits (api.reports.ExitCode): OK, count inputs kept; CONFIG, a configuration error (seeds without the task's
columns); TOO_FEW_INPUTS, fewer than count kept within dataset.generate.maxRequests; TEACHER_UNREACHABLE, the
teacher stayed unreachable, and a rerun resumes.
"""

import argparse
import asyncio
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel

from distillery.api.pipeline import CONFIG_FILE, CONFIG_MOUNT_DIR, GENERATED_LOG_FILE, PipelineConfig
from distillery.api.reports import ExitCode, GenerationReport
from distillery.api.spec import MAX_SEED_ROWS, GenerateSpec
from distillery.api.status import Stage
from distillery.workloads.datasets import Row, load_rows, parse_records
from distillery.workloads.environment import workspace_layout
from distillery.workloads.openai_client import (
    OpenAIChatClient,
    TeacherRejected,
    TeacherUnavailable,
    teacher_client,
)
from distillery.workloads.program import ProgramResult, run_program
from distillery.workloads.progress import LiveProgress
from distillery.workloads.tasks import MissingColumn, TaskDefinition, get_task

log = logging.getLogger("distillery.generator")

PROGRAM = "generate"
REPLY_INSTRUCTION = "Reply with only one JSON object with exactly these keys:"
"""The last line of every generation prompt (the local teacher server recognises it)."""
SHINGLE = 5
NUM_PERM = 128

# Rejection reasons, as status counts them.
NOT_JSON = "not a JSON object"
MISSING = "missing a column"
EMPTY = "empty column"
WRONG_TYPE = "wrong column type"
UNREADABLE = "unreadable by the task"
TRUNCATED = "truncated"
REFUSED = "teacher refused"
DUPLICATE_OF = {"seed": "near-duplicate of a seed", "row": "near-duplicate of a dataset row",
                "gen": "near-duplicate of a generated input"}


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Outcome(BaseModel):
    """One line of generated/log.jsonl."""

    index: int
    status: str
    """kept or rejected"""
    reason: str | None = None
    detail: str | None = None
    row: dict[str, Any] | None = None
    raw: str = ""
    tokens_in: int = 0
    tokens_out: int = 0


def input_columns(task: TaskDefinition, seed: Row) -> list[str]:
    """The seed's columns the task's teacher prompt needs: those without which it cannot be built. Asking the
    task itself covers every task, a column mapping and a custom template alike; answers are not among them."""
    task.teacher_messages(seed)  # raises MissingColumn when the seed itself lacks one
    needed = []
    for key in seed:
        try:
            task.teacher_messages({k: v for k, v in seed.items() if k != key})
        except (MissingColumn, KeyError, ValueError, TypeError):
            needed.append(key)
    if not needed:
        raise ValueError(f"dataset.generate.seeds: cannot tell which of the columns {sorted(seed)} are the task's "
                         "input (each has a fallback); keep one column per input field")
    return needed


def flatten(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(flatten(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(flatten(v) for v in value)
    return str(value)


def row_text(row: Row, columns: Sequence[str]) -> str:
    """What near-duplicates are judged on: the input columns, lower-cased, punctuation folded to spaces."""
    text = " ".join(flatten(row[c]) for c in columns if c in row)
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


class NearDuplicates:
    """Near-duplicate lookup with datasketch's MinHash LSH over character 5-grams.

    Why datasketch: it is the maintained reference implementation of MinHash and LSH in Python; LSH keeps each
    lookup sublinear in the inputs kept so far, where comparing all pairs would be quadratic. Character
    5-grams rather than word n-grams because inputs are often one short sentence, where changing one word
    changes most word trigrams. LSH candidates are confirmed with the MinHash estimate of Jaccard similarity.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.hashes: dict[str, MinHash] = {}

    @staticmethod
    def minhash(text: str) -> MinHash:
        shingles = {text[i:i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([s.encode() for s in shingles])
        return m

    def match(self, text: str) -> tuple[str, float] | None:
        """The most similar known text at or above the threshold, as (key, estimated Jaccard)."""
        m = self.minhash(text)
        scored = [(key, m.jaccard(self.hashes[key])) for key in self.lsh.query(m)]
        best = max(scored, key=lambda kv: kv[1], default=None)
        return best if best is not None and best[1] >= self.threshold else None

    def add(self, key: str, text: str) -> None:
        if key not in self.hashes:
            self.hashes[key] = self.minhash(text)
            self.lsh.insert(key, self.hashes[key])


def parse_input(text: str, columns: Sequence[str], seed: Row, task: TaskDefinition) -> Row:
    """The new input in the reply, in the seeds' columns; raises Rejected with the reason."""
    body = text.strip()
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise Rejected(NOT_JSON, f"no JSON object in {body[:80]!r}")
    try:
        value = json.loads(body[start:end + 1])
    except json.JSONDecodeError as err:
        raise Rejected(NOT_JSON, f"invalid JSON: {err.msg}") from None
    if not isinstance(value, dict):
        raise Rejected(NOT_JSON, f"a JSON {type(value).__name__}, not an object")
    missing = [c for c in columns if c not in value]
    if missing:
        raise Rejected(MISSING, f"no {', '.join(map(repr, missing))} (keys: {sorted(value)})")
    row = {c: value[c] for c in columns}
    for c in columns:
        if isinstance(seed[c], str) != isinstance(row[c], str) or isinstance(seed[c], list) != isinstance(row[c],
                                                                                                            list):
            raise Rejected(WRONG_TYPE, f"{c!r} is a {type(row[c]).__name__}; the seeds have a "
                                       f"{type(seed[c]).__name__}")
        if not flatten(row[c]).strip():
            raise Rejected(EMPTY, f"{c!r} is empty")
    try:
        task.teacher_messages(row)
    except (MissingColumn, KeyError, ValueError, TypeError) as err:
        raise Rejected(UNREADABLE, str(err)[:200]) from None
    return row


def opening(value: Any) -> Any:
    """A conversation's turns up to its last user turn: the input, without the reply that answers it."""
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        users = [i for i, t in enumerate(value) if str(t.get("role", t.get("from", ""))).lower() in ("user", "human")]
        return value[: users[-1] + 1] if users else value
    return value


def generation_messages(task_name: str, examples: Sequence[Row], columns: Sequence[str], number: int,
                        hint: str | None) -> list[dict[str, str]]:
    lines = "\n".join(json.dumps({c: opening(row[c]) for c in columns}, ensure_ascii=False) for row in examples)
    wanted = f"What the new inputs should be like: {hint}\n\n" if hint else ""
    return [
        {"role": "system", "content": f"You write new inputs for a {task_name} dataset. You never answer "
                                      "or label them."},
        {"role": "user", "content": (
            f"Example inputs from the dataset, one JSON object per line:\n{lines}\n\n{wanted}"
            f"Write new input number {number}: in the same style and format as the examples, but different "
            "from them in topic and wording. Do not include an answer or a label.\n"
            f"{REPLY_INSTRUCTION} {', '.join(json.dumps(c) for c in columns)}")},
    ]


def prompt_examples(seeds: Sequence[Row], per_prompt: int, seed: int, index: int) -> list[Row]:
    """The seeds shown in request `index`: drawn by the index, so a resumed request is the same prompt."""
    return random.Random(f"{seed}:{index}").sample(list(seeds), min(per_prompt, len(seeds)))


class OutcomeLog:
    """generated/log.jsonl: appended one complete line per request with one unbuffered write, so a killed pod
    loses only requests in flight; a torn last line is cut off on reopening."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        complete = data.rfind(b"\n") + 1
        self.existing = [Outcome.model_validate_json(line) for line in data[:complete].splitlines()
                         if line.strip()]
        self.handle = open(path, "ab", buffering=0)
        self.handle.truncate(complete)

    def put(self, outcome: Outcome) -> None:
        self.handle.write(outcome.model_dump_json(exclude_none=True).encode() + b"\n")

    def close(self) -> None:
        os.fsync(self.handle.fileno())
        self.handle.close()


@dataclass
class Tally:
    kept: int = 0
    rejected: int = 0
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def snapshot(self, reasons: Counter[str]) -> GenerationReport:
        return GenerationReport(generated=self.kept + self.rejected, kept=self.kept, rejected=self.rejected,
                                rejections=dict(reasons), tokens_in=self.tokens_in, tokens_out=self.tokens_out)


class Generator:
    def __init__(self, cfg: PipelineConfig, task: TaskDefinition, spec: GenerateSpec, seeds: list[Row],
                 known: list[Row], client: OpenAIChatClient) -> None:
        if not 1 <= len(seeds) <= MAX_SEED_ROWS:
            raise ValueError(f"dataset.generate.seeds has {len(seeds)} rows; it takes 1 to {MAX_SEED_ROWS} "
                             "(a handful of examples, shown a few at a time)")
        self.cfg, self.task, self.spec, self.seeds, self.client = cfg, task, spec, seeds, client
        self.columns = input_columns(task, seeds[0])
        for number, seed in enumerate(seeds):
            missing = [c for c in self.columns if c not in seed]
            if missing:
                raise ValueError(f"dataset.generate.seeds row {number} lacks {missing} (the first seed has them)")
        self.sampling = cfg.teacher.sampling.model_copy(update={"temperature": spec.temperature})
        self.dedup = NearDuplicates(spec.similarity_threshold)
        for i, seed in enumerate(seeds):
            self.dedup.add(f"seed:{i}", row_text(seed, self.columns))
        for i, row in enumerate(known):
            self.dedup.add(f"row:{i}", row_text(row, self.columns))
        self.tally = Tally()
        self.reasons: Counter[str] = Counter()
        self.kept: dict[int, Row] = {}
        self.unavailable = ""

    def examples(self, index: int) -> list[Row]:
        return prompt_examples(self.seeds, self.spec.seeds_per_prompt, self.cfg.seed, index)

    def count(self, outcome: Outcome) -> None:
        self.tally.tokens_in += outcome.tokens_in
        self.tally.tokens_out += outcome.tokens_out
        if outcome.status == "kept" and outcome.row is not None:
            self.tally.kept += 1
            self.kept[outcome.index] = outcome.row
            self.dedup.add(f"gen:{outcome.index}", row_text(outcome.row, self.columns))
        else:
            self.tally.rejected += 1
            self.reasons[outcome.reason or "rejected"] += 1

    def judge(self, index: int, text: str, finish: str) -> Outcome:
        if finish == "length":
            return Outcome(index=index, status="rejected", reason=TRUNCATED, detail="reached max_tokens", raw=text)
        try:
            row = parse_input(text, self.columns, self.seeds[0], self.task)
        except Rejected as err:
            return Outcome(index=index, status="rejected", reason=err.reason, detail=err.detail, raw=text[:2000])
        near = self.dedup.match(row_text(row, self.columns))
        if near is not None:
            key, similarity = near
            return Outcome(index=index, status="rejected", reason=DUPLICATE_OF[key.split(":")[0]],
                           detail=f"similarity {similarity:.2f} to {key}", row=row, raw=text[:2000])
        return Outcome(index=index, status="kept", row=row, raw=text[:2000])

    async def run(self, log_file: OutcomeLog) -> None:
        for outcome in log_file.existing:
            self.count(outcome)
        done = {o.index for o in log_file.existing}
        budget = self.spec.max_requests or 4 * self.spec.count
        indices = iter(i for i in range(budget) if i not in done)

        async def worker() -> None:
            for index in indices:
                if self.tally.kept >= self.spec.count or self.unavailable:
                    return
                messages = generation_messages(self.cfg.task.value, self.examples(index), self.columns, index + 1,
                                               self.spec.hint)
                try:
                    result = await self.client.chat(messages, self.sampling)
                except TeacherRejected as err:
                    outcome = Outcome(index=index, status="rejected", reason=REFUSED, detail=str(err)[:300])
                except TeacherUnavailable as err:
                    self.unavailable = str(err)
                    return
                else:
                    outcome = self.judge(index, result.texts[0] if result.texts else "",
                                         result.finish_reasons[0] if result.finish_reasons else "stop")
                    outcome.tokens_in, outcome.tokens_out = result.tokens_in, result.tokens_out
                self.tally.requests += 1
                if self.tally.kept >= self.spec.count:
                    return  # enough were kept while this one was in flight
                # Judged, logged and counted with no await between: no other worker's input slips in.
                log_file.put(outcome)
                self.count(outcome)

        # Requests still in flight when count is reached are not kept: no more of them than count.
        await asyncio.gather(*(worker() for _ in range(min(self.cfg.teacher.concurrency, self.spec.count))))

    def dataset(self) -> list[Row]:
        return [self.kept[i] for i in sorted(self.kept)][: self.spec.count]


def known_rows(cfg: PipelineConfig, base_dir_for_pvc: str | None) -> list[Row]:
    """The user's rows new inputs must not repeat: dataset.train and dataset.validation."""
    d = cfg.dataset
    rows = load_rows(d.train, "train", base_dir_for_pvc) if d.train else []
    if d.limit is not None:
        rows = rows[: d.limit]
    return rows + (load_rows(d.validation, "validation", base_dir_for_pvc) if d.validation else [])


async def run(cfg: PipelineConfig, task: TaskDefinition, base_dir_for_pvc: str | None = None,
              progress_interval_s: float = 5.0) -> ProgramResult:
    spec = cfg.dataset.generate
    if spec is None:
        raise ValueError("dataset.generate is not set")
    started = time.monotonic()
    layout = workspace_layout(cfg)
    seeds = load_rows(spec.seeds, "train", base_dir_for_pvc)
    client = teacher_client(cfg.teacher)
    generator = Generator(cfg, task, spec, seeds, known_rows(cfg, base_dir_for_pvc), client)
    log_file = OutcomeLog(layout.generated_dir / GENERATED_LOG_FILE)
    resumed = len(log_file.existing)
    reporter = LiveProgress(Stage.GENERATION.value, 0, lambda: generator.tally.snapshot(generator.reasons),
                            progress_interval_s)
    reporter.start()
    try:
        async with client:
            await generator.run(log_file)
    finally:
        log_file.close()
        await asyncio.to_thread(reporter.stop)
    report = generator.tally.snapshot(generator.reasons)
    report.stage, report.requests, report.resumed = PROGRAM, generator.tally.requests, resumed
    report.columns, report.wall_seconds = generator.columns, round(time.monotonic() - started, 3)
    if generator.tally.kept < spec.count:
        if generator.unavailable:
            report.error = f"the teacher is unreachable ({generator.unavailable[:300]}); a rerun resumes"
            return ExitCode.TEACHER_UNREACHABLE, report
        report.error = (f"only {generator.tally.kept} of {spec.count} inputs kept after "
                        f"{generator.tally.kept + generator.tally.rejected} requests "
                        f"(dataset.generate.maxRequests); rejected: {dict(generator.reasons)}")
        return ExitCode.TOO_FEW_INPUTS, report
    rows = generator.dataset()
    target = layout.generated_train
    temporary = target.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    os.replace(temporary, target)
    parse_records(str(target), target.read_bytes())  # what labeling will read must read back
    report.path = str(target.relative_to(layout.root))
    return ExitCode.OK, report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillery generate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}", help="pipeline.json path")
    parser.add_argument("--progress-interval", type=float, default=5.0)
    parser.add_argument("--pvc-base", help="where pvc:// claims are mounted (default: the pod's mount root)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def work() -> ProgramResult:
        cfg = PipelineConfig.load(args.config)
        task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
        return asyncio.run(run(cfg, task, args.pvc_base, args.progress_interval))

    return run_program(PROGRAM, work, (OSError, ValueError, MissingColumn),
                       lambda error: GenerationReport(stage=PROGRAM, error=error))


if __name__ == "__main__":
    sys.exit(main())
