"""The labeler against the real teacher server over HTTP: faults, sharding, self-consistency, resume."""

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import distillery
from distillery.api.pipeline import PipelineConfig
from distillery.api.reports import ExitCode, LabelingReport, progress_key
from distillery.api.spec import Sampling
from distillery.api.status import Stage
from distillery.devcluster.teacher_server import (
    FaultConfig,
    ResponderContext,
    TaskAwareResponder,
    TeacherServer,
    lookup_from_rows,
)
from distillery.workloads import labeler, teacher_outage
from distillery.workloads.datasets import split_rows
from distillery.workloads.labels import LabelRecord, read_labels, read_records, shard_path
from distillery.workloads.openai_client import (
    OpenAIChatClient,
    TeacherMisconfigured,
    TeacherUnavailable,
    parse_retry_after,
)
from distillery.workloads.progress import write_termination_message
from distillery.workloads.tasks import TaskDefinition
from tests.workloads.published import PublishedProgress

OPERATOR_DIR = str(Path(distillery.__file__).resolve().parents[1])
ConfigWriter = Callable[..., Path]


async def label(config: Path, *extra: str) -> int:
    """labeler.main on a thread: it runs its own event loop while the teacher serves on this one."""
    argv = ["--config", str(config), "--progress-interval", "0.1", *extra]
    return await asyncio.to_thread(labeler.main, argv)


def labels_dir(config: Path) -> Path:
    return PipelineConfig.load(config).workspace.labels_dir


def all_records(config: Path) -> list[LabelRecord]:
    return read_labels(labels_dir(config), "train") + read_labels(labels_dir(config), "validation")


def requests_per_row(server: TeacherServer, task: TaskDefinition, records: list[LabelRecord]) -> list[int]:
    return [server.requests_for(task.teacher_messages(r.row)) for r in records]


async def test_labels_both_splits_with_gold_answers(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(termination))
    config = write_config(teacher.url)

    assert await label(config) == 0

    train = read_labels(labels_dir(config), "train")
    validation = read_labels(labels_dir(config), "validation")
    assert (len(train), len(validation)) == (9, 3)
    for record in train + validation:
        assert record.status == "ok"
        assert record.answer == nli_task.reference(record.row)
        assert record.rationale.startswith("Let me reason")
        assert record.raw.endswith(f"Answer: {record.answer}")
        assert record.attempts == 1 and record.tokens_in > 0 and record.tokens_out > 0
    assert requests_per_row(teacher, nli_task, train + validation) == [1] * 12
    summary = json.loads(termination.read_text())
    assert summary["rows_ok"] == 12 and summary["rows_rejected"] == 0 and summary["rows_total"] == 12
    assert summary["tokens_out"] == sum(r.tokens_out for r in train + validation)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


def assert_labeling_reports(texts: list[str]) -> list[LabelingReport]:
    """What the operator reads: every key the labeler wrote is one LabelingReport knows, and dumps back as written."""
    reports = [LabelingReport.parse(text) for text in texts]
    for text, report in zip(texts, reports, strict=True):
        assert report is not None and report.dump() == json.loads(text), text
    return [r for r in reports if r is not None]


async def test_live_progress_and_summary_are_labeling_reports(
    teacher: TeacherServer, write_config: ConfigWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    published: PublishedProgress,
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(termination))
    config = write_config(teacher.url, shards=2)

    assert await label(config, "--shard-index", "1") == ExitCode.OK

    assert {key for key, _ in published.patches} == {progress_key(Stage.LABELING.value, 1)}
    *_, last = assert_labeling_reports([value for _, value in published.patches])
    # Shard 1 of 2: train rows 1, 3, 5, 7 and validation row 1.
    assert (last.rows_done, last.rows_ok, last.rows_total) == (5, 5, 5) and last.tokens_out > 0
    [summary] = assert_labeling_reports([termination.read_text()])
    assert (summary.stage, summary.shard, summary.shards, summary.rows_ok, summary.error) == ("label", 1, 2, 5, None)
    assert summary.teachers == {} and summary.tokens_out == last.tokens_out


async def test_rate_limits_wait_for_retry_after(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["429"], retry_after_s=1.0)
    config = write_config(teacher.url, concurrency=12)

    started = time.monotonic()
    assert await label(config) == 0

    assert time.monotonic() - started >= 1.0
    records = all_records(config)
    assert all(r.status == "ok" for r in records) and len(records) == 12
    assert requests_per_row(teacher, nli_task, records) == [2] * 12
    assert teacher.outcomes["429"] == 12


async def test_server_errors_are_retried(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["500", "503"])
    config = write_config(teacher.url, concurrency=12, max_attempts=3)

    assert await label(config) == 0

    records = all_records(config)
    assert all(r.status == "ok" and r.attempts == 1 for r in records)
    assert requests_per_row(teacher, nli_task, records) == [3] * 12


async def test_slow_answers_time_out_and_are_retried(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["slow"], slow_s=5)
    config = write_config(teacher.url, concurrency=12, request_timeout_seconds=0.5)

    assert await label(config) == 0

    # Each row's first request hit the 5 s answer and was abandoned at the timeout; the retry answered.
    records = all_records(config)
    assert all(r.status == "ok" for r in records) and len(records) == 12
    assert requests_per_row(teacher, nli_task, records) == [2] * 12
    assert teacher.outcomes["slow"] == 12


async def test_malformed_answers_are_retried_then_rejected(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(malformed=1.0, only_matching="old dog",
                                 malformed_text="The two sentences seem unrelated to me, hard to say.")
    config = write_config(teacher.url, max_attempts=3)

    assert await label(config) == 0

    records = all_records(config)
    rejected = [r for r in records if r.status == "rejected"]
    assert [r.row["premise"] for r in rejected] == ["An old dog sleeps next to the fireplace."]
    assert rejected[0].reason == "no 'Answer:' line"
    assert rejected[0].attempts == 3 and rejected[0].answer == "" and "unrelated" in rejected[0].raw
    assert requests_per_row(teacher, nli_task, rejected) == [3]
    assert sum(r.status == "ok" for r in records) == 11


async def test_a_greedy_teacher_is_not_asked_the_same_question_again(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    """At temperature 0 a retry can only repeat the reply (and its cost): one attempt, then rejected."""
    teacher.faults = FaultConfig(malformed=1.0, only_matching="old dog",
                                 malformed_text="The two sentences seem unrelated to me, hard to say.")
    config = write_config(teacher.url, max_attempts=3, sampling=Sampling(temperature=0).model_dump())

    assert await label(config) == 0

    [rejected] = [r for r in all_records(config) if r.status == "rejected"]
    assert rejected.attempts == 1 and rejected.reason == "no 'Answer:' line"
    assert requests_per_row(teacher, nli_task, [rejected]) == [1]


async def test_a_malformed_first_answer_is_asked_again(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["malformed"], malformed_text="Answer: maybe not")
    config = write_config(teacher.url)

    assert await label(config) == 0

    records = all_records(config)
    assert all(r.status == "ok" and r.attempts == 2 for r in records)
    assert all(r.answer == nli_task.reference(r.row) for r in records)


async def test_too_few_valid_answers_fail_the_stage(
    teacher: TeacherServer, write_config: ConfigWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    teacher.faults = FaultConfig(malformed=1.0, malformed_text="")
    config = write_config(teacher.url, max_attempts=2, min_success_ratio=0.9)

    assert await label(config) == ExitCode.TOO_FEW_LABELS == 3

    records = all_records(config)
    assert len(records) == 12 and {r.reason for r in records} == {"empty output"}
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["rows_rejected"] == 12 and "minSuccessRatio" in summary["error"]


async def test_a_refused_request_rejects_the_row_without_retrying(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["400"], only_matching="chef")
    config = write_config(teacher.url)

    assert await label(config) == 0

    rejected = [r for r in all_records(config) if r.status == "rejected"]
    assert len(rejected) == 1 and rejected[0].reason.startswith("teacher refused: HTTP 400")
    assert requests_per_row(teacher, nli_task, rejected) == [1]


async def test_an_outage_past_its_budget_leaves_rows_for_a_rerun(
    teacher: TeacherServer, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(server_error=1.0)
    config = write_config(teacher.url, concurrency=12, max_attempts=2, outage_budget_seconds=0)

    assert await label(config) == ExitCode.TEACHER_UNREACHABLE == 4
    assert all_records(config) == []

    teacher.faults = FaultConfig()
    assert await label(config) == 0
    assert len(all_records(config)) == 12


async def test_a_wrong_api_key_stops_the_run_without_rejecting_rows(
    nli_task: TaskDefinition, nli_rows: list[dict[str, Any]], write_config: ConfigWriter, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(termination))
    responder = TaskAwareResponder(lookup_from_rows(nli_task, nli_rows))
    async with TeacherServer(responder, api_key="right") as server:
        config = write_config(server.url)
        monkeypatch.setenv("TEACHER_API_KEY", "wrong")
        assert await label(config) == ExitCode.TEACHER_UNREACHABLE
        # The run stops after 8 rows failed in a row (2 x concurrency), not after trying all 12.
        assert all_records(config) == [] and 8 <= server.outcomes["401"] < 12
        assert "HTTP 401" in json.loads(termination.read_text())["error"]

        monkeypatch.setenv("TEACHER_API_KEY", "right")
        assert await label(config) == 0
        assert len(all_records(config)) == 12


async def test_shards_take_disjoint_rows_by_row_id(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    config = write_config(teacher.url, shards=3)

    for index in range(3):
        assert await label(config, "--shard-index", str(index)) == 0

    for split, total in (("train", 9), ("validation", 3)):
        seen = []
        for index in range(3):
            records, _ = read_records(shard_path(labels_dir(config), split, index))
            assert all(r.row_id % 3 == index for r in records)
            seen += [r.row_id for r in records]
        assert sorted(seen) == list(range(total))
    assert requests_per_row(teacher, nli_task, all_records(config)) == [1] * 12


async def test_shard_index_must_be_below_the_shard_count(
    teacher: TeacherServer, write_config: ConfigWriter,
) -> None:
    assert await label(write_config(teacher.url, shards=2), "--shard-index", "2") == ExitCode.CONFIG


async def test_self_consistency_keeps_the_majority_answer(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    votes = ["neutral", "entailment", "entailment"]
    teacher.responder = lambda ctx: f"Sample {ctx.sample_index} reasons.\nAnswer: {votes[ctx.sample_index]}"
    config = write_config(teacher.url, prompt={"self_consistency": 3},
                          sampling=Sampling(temperature=0.8).model_dump())

    assert await label(config) == 0

    records = all_records(config)
    assert {(r.answer, r.rationale) for r in records} == {("entailment", "Sample 1 reasons.")}
    assert requests_per_row(teacher, nli_task, records) == [1] * 12


async def test_self_consistency_falls_back_to_separate_requests(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    votes = ["contradiction", "neutral", "neutral"]

    def responder(ctx: ResponderContext) -> str:
        return f"Request {ctx.request_index} reasons.\nAnswer: {votes[ctx.request_index]}"

    teacher.responder = responder
    teacher.faults = FaultConfig(support_n=False)
    config = write_config(teacher.url, prompt={"self_consistency": 3},
                          sampling=Sampling(temperature=0.8).model_dump())

    assert await label(config) == 0

    records = all_records(config)
    assert {r.answer for r in records} == {"neutral"}
    # The two top-up requests race, so either may be the first "neutral" vote.
    assert {r.rationale for r in records} <= {"Request 1 reasons.", "Request 2 reasons."}
    assert requests_per_row(teacher, nli_task, records) == [3] * 12


async def test_resume_skips_recorded_rows_and_drops_a_truncated_line(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    config = write_config(teacher.url)
    train, _ = split_rows(PipelineConfig.load(config))
    path = shard_path(labels_dir(config), "train", 0)
    path.parent.mkdir(parents=True)
    done = [LabelRecord(split="train", row_id=row["row_id"], row=row, answer="neutral", rationale="earlier",
                        raw="earlier\nAnswer: neutral", attempts=1, tokens_in=1, tokens_out=1, status="ok")
            for row in train[:4]]
    path.write_text("".join(r.model_dump_json() + "\n" for r in done) + '{"split": "train", "row_id": 4, "ro')

    assert await label(config) == 0

    assert [teacher.requests_for(nli_task.teacher_messages(row)) for row in train] == [0] * 4 + [1] * 5
    records, _ = read_records(path)
    assert [r.row_id for r in records[:4]] == [0, 1, 2, 3] and records[0].rationale == "earlier"
    assert sorted(r.row_id for r in records) == list(range(9))
    assert all(json.loads(line) for line in path.read_text().splitlines())


async def _spawn_labeler(config: Path, termination: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": OPERATOR_DIR, "TERMINATION_MESSAGE_PATH": str(termination)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "distillery.cli", "label", "--config", str(config),
        "--progress-interval", "0.2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )


async def _wait_for_lines(path: Path, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout_s} s")


def _many_rows(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` rows with distinct prompts."""
    return [{**row, "premise": f"{row['premise']} (scene {i})"}
            for i, row in enumerate(rows * (count // len(rows) + 1))][:count]


async def test_killed_labeler_resumes_without_asking_again(
    nli_task: TaskDefinition, nli_rows: list[dict[str, Any]], write_config: ConfigWriter, tmp_path: Path,
) -> None:
    rows = _many_rows(nli_rows, 40)
    faults = FaultConfig(latency_ms=100)
    async with TeacherServer(TaskAwareResponder(lookup_from_rows(nli_task, rows)), faults) as server:
        config = write_config(server.url, rows=rows, concurrency=2)
        train_file = shard_path(labels_dir(config), "train", 0)

        first = await _spawn_labeler(config, tmp_path / "first")
        await _wait_for_lines(train_file, 8)
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        finished, _ = read_records(train_file)
        resumed = len(finished) + len(read_records(shard_path(labels_dir(config), "validation", 0))[0])
        asked_before = {r.row_id: server.requests_for(nli_task.teacher_messages(r.row)) for r in finished}

        second = await _spawn_labeler(config, tmp_path / "second")
        stdout, _ = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 0, stdout

        assert len(finished) >= 8 and set(asked_before.values()) == {1}
        for record in finished:
            assert server.requests_for(nli_task.teacher_messages(record.row)) == 1, record.row_id
        train, validation = split_rows(PipelineConfig.load(config))
        for split, split_rows_ in (("train", train), ("validation", validation)):
            lines = shard_path(labels_dir(config), split, 0).read_text().splitlines()
            assert sorted(json.loads(line)["row_id"] for line in lines) == list(range(len(split_rows_)))
        # Only requests in flight at the kill were asked twice: at most `concurrency` of them.
        counts = [server.requests_for(nli_task.teacher_messages(row)) for row in train + validation]
        assert set(counts) <= {1, 2} and counts.count(2) <= 2
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert (summary["rows_resumed"], summary["rows_done"], summary["rows_ok"]) == (resumed, 40, 40)


async def test_sigterm_stops_cleanly_and_a_rerun_finishes(
    nli_task: TaskDefinition, nli_rows: list[dict[str, Any]], write_config: ConfigWriter, tmp_path: Path,
) -> None:
    rows = _many_rows(nli_rows, 30)
    async with TeacherServer(TaskAwareResponder(lookup_from_rows(nli_task, rows)),
                             FaultConfig(latency_ms=100)) as server:
        config = write_config(server.url, rows=rows, concurrency=2)
        train_file = shard_path(labels_dir(config), "train", 0)

        first = await _spawn_labeler(config, tmp_path / "first")
        await _wait_for_lines(train_file, 4)
        first.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(first.communicate(), 10)
        assert first.returncode == 128 + signal.SIGTERM
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert "SIGTERM" in summary["error"]
        assert summary == json.loads((tmp_path / "first").read_text())
        assert len(all_records(config)) == summary["rows_done"] > 0

        second = await _spawn_labeler(config, tmp_path / "second")
        await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 0
        assert len(all_records(config)) == 30


# The client on its own -------------------------------------------------------------------------


async def test_client_honours_n_and_counts_tokens(
    teacher: TeacherServer, nli_task: TaskDefinition, nli_rows: list[dict[str, Any]],
) -> None:
    async with OpenAIChatClient(teacher.url, "teacher") as client:
        result = await client.chat(nli_task.teacher_messages(nli_rows[0]), Sampling(), n=3)
    assert len(result.texts) == 3 and result.requests == 1 and client.requests_sent == 1
    assert result.tokens_in > 0 and result.tokens_out == 3 * len(result.texts[0].split())


async def test_client_gives_up_after_max_attempts(teacher: TeacherServer) -> None:
    teacher.faults = FaultConfig(server_error=1.0)
    async with OpenAIChatClient(teacher.url, "teacher", max_attempts=3, backoff_base_s=0.01) as client:
        with pytest.raises(TeacherUnavailable, match="3 attempts failed, last: HTTP 500"):
            await client.chat([{"role": "user", "content": "hi"}], Sampling())
    assert client.requests_sent == 3 == teacher.total_requests


async def test_client_honours_an_http_date_retry_after(teacher: TeacherServer) -> None:
    teacher.faults = FaultConfig(sequence=["429"], retry_after_s=2, retry_after_http_date=True)
    async with OpenAIChatClient(teacher.url, "teacher") as client:
        started = time.monotonic()
        await client.chat([{"role": "user", "content": "hi"}], Sampling())
    # An HTTP date has whole seconds, so "now + 2 s" waits between 1 and 2 seconds.
    assert time.monotonic() - started >= 1.0 and client.requests_sent == 2


async def test_client_sends_the_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with TeacherServer(api_key="s3cret") as server:
        monkeypatch.setenv("TEACHER_API_KEY", "s3cret")
        async with OpenAIChatClient(server.url, "teacher") as client:
            assert (await client.chat([{"role": "user", "content": "hi"}], Sampling())).texts
        monkeypatch.delenv("TEACHER_API_KEY")
        async with OpenAIChatClient(server.url, "teacher") as client:
            with pytest.raises(TeacherMisconfigured, match="HTTP 401"):
                await client.chat([{"role": "user", "content": "hi"}], Sampling())
        assert client.requests_sent == 1


async def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(formatdate(now + 5, usegmt=True), now=now) == pytest.approx(5, abs=1)
    assert parse_retry_after(formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_termination_message_is_skipped_where_it_cannot_be_written(tmp_path: Path) -> None:
    assert not write_termination_message(LabelingReport(rows_ok=1), str(tmp_path / "missing-dir" / "log"))
    assert write_termination_message(LabelingReport(rows_ok=1), str(tmp_path / "log"))
    assert (tmp_path / "log").read_text() == '{"rows_ok":1}'


async def test_teacher_server_cli_serves_and_takes_faults_at_run_time() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "distillery.devcluster.teacher_server", "--port", "0", "--latency-ms", "5",
        env={**os.environ, "PYTHONPATH": OPERATOR_DIR}, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(url.removesuffix("/v1") + "/health") as response:
                assert await response.text() == "ok"
            async with session.get(f"{url}/models") as response:
                assert (await response.json())["data"][0]["id"] == "teacher"
            async with session.post(url.removesuffix("/v1") + "/admin/faults",
                                    json={"sequence": ["503"]}) as response:
                assert (await response.json())["latency_ms"] == 5
            async with OpenAIChatClient(url, "teacher", backoff_base_s=0.01) as client:
                result = await client.chat([{"role": "user", "content": "Say hi."}], Sampling())
            assert result.requests == 2 and result.texts[0].endswith("Answer: yes")
            async with session.get(url.removesuffix("/v1") + "/admin/stats") as response:
                assert (await response.json())["outcomes"] == {"503": 1, "ok": 1}
    finally:
        process.terminate()
        assert await process.wait() == 0


async def test_a_teacher_restart_mid_labeling_is_waited_out_without_asking_labelled_rows_again(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter, monkeypatch: pytest.MonkeyPatch,
    published: PublishedProgress,
) -> None:
    """The teacher goes down after a few answers; the labeler waits (its live progress says so), the teacher
    comes back on the same port, and the run finishes with every row labelled and no labelled row asked twice."""
    test_loop = asyncio.get_running_loop()
    answered = 0
    stop_now, labeler_waiting = asyncio.Event(), asyncio.Event()
    restarted = threading.Event()
    gold = teacher.responder

    def responder(ctx: ResponderContext) -> str:
        nonlocal answered
        answered += 1
        if answered == 4:
            stop_now.set()
        return gold(ctx)

    async def wait_for_the_restart(_: float) -> None:
        # Runs on the labeler's loop: tell the test that the labeler is waiting, then wait for the teacher.
        test_loop.call_soon_threadsafe(labeler_waiting.set)
        await asyncio.to_thread(restarted.wait, 120)

    teacher.responder = responder
    monkeypatch.setattr(teacher_outage, "outage_sleep", wait_for_the_restart)
    config = write_config(teacher.url, concurrency=2, max_attempts=2)

    labeling = asyncio.ensure_future(label(config))
    await stop_now.wait()
    await teacher.stop()
    waiting = asyncio.ensure_future(labeler_waiting.wait())
    await asyncio.wait({labeling, waiting}, return_when=asyncio.FIRST_COMPLETED)
    assert not labeling.done(), f"the labeler gave up during the outage with exit {labeling.result()}"
    labelled_before = {(r.split, r.row_id) for r in all_records(config)}

    def outage_reported(patches: list[tuple[str, str]]) -> bool:
        return any("teacher_unreachable_since" in json.loads(value) for _, value in patches)

    assert await asyncio.to_thread(published.wait_for, outage_reported), "the live progress shows the outage"
    waiting_report = next(r for r in assert_labeling_reports([value for _, value in published.patches])
                          if r.teacher_unreachable_since is not None)
    assert waiting_report.teacher_unreachable_since <= time.time() and waiting_report.teacher_error
    await teacher.start()
    restarted.set()

    assert await labeling == 0
    final = assert_labeling_reports([published.patches[-1][1]])[0]
    assert final.teacher_unreachable_since is None and final.rows_done == 12, "the outage ended"
    records = all_records(config)
    assert len(records) == 12 and all(r.status == "ok" and r.attempts == 1 for r in records)
    assert 0 < len(labelled_before) < 12
    before = [r for r in records if (r.split, r.row_id) in labelled_before]
    assert requests_per_row(teacher, nli_task, before) == [1] * len(before)


async def test_answers_cut_off_at_max_tokens_are_retried_then_rejected(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["length", "length"], only_matching="chef")
    config = write_config(teacher.url, max_attempts=2)

    assert await label(config) == 0

    records = all_records(config)
    rejected = [r for r in records if r.status == "rejected"]
    assert [r.row["premise"] for r in rejected] == ["A chef slices vegetables in a busy restaurant kitchen."]
    # The cut-off text parses as a valid answer; only finish_reason says it is incomplete.
    assert rejected[0].reason == labeler.TRUNCATED and rejected[0].raw.endswith("Answer: entailment")
    assert rejected[0].attempts == 2 and requests_per_row(teacher, nli_task, rejected) == [2]
    assert sum(r.status == "ok" for r in records) == 11


async def test_a_cut_off_first_answer_is_asked_again(
    teacher: TeacherServer, nli_task: TaskDefinition, write_config: ConfigWriter,
) -> None:
    teacher.faults = FaultConfig(sequence=["length"])
    config = write_config(teacher.url)

    assert await label(config) == 0

    assert all(r.status == "ok" and r.attempts == 2 for r in all_records(config))
