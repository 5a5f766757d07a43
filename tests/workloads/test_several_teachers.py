"""Several teachers against real local teacher servers: vote (with ties), judge, all, and a restart that
asks only the teachers that had not answered."""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from distillery.api.pipeline import PipelineConfig
from distillery.api.reports import ExitCode, LabelingReport
from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.teacher_server import ResponderContext, TaskAwareResponder, TeacherServer, lookup_from_rows
from distillery.devcluster.tiny import build_tokenizer
from distillery.workloads import labeler
from distillery.workloads.finetune_data import build_finetune_set
from distillery.workloads.labels import LabelRecord, read_labels, read_records, replies_path
from distillery.workloads.strategy_judge import parse_verdict, strategy_judge_messages
from distillery.workloads.tasks import TaskDefinition, get_task
from distillery.workloads.teacher_votes import plurality
from tests.workloads.nli import NLI_ROWS
from tests.workloads.published import PublishedProgress

CONVERSATIONS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": f"How do I {what}?"}]}
    for what in ("boil an egg", "tie a bowline knot", "water a cactus", "fold a paper crane", "brew green tea",
                 "sharpen a pencil", "plant tulip bulbs", "clean a cast iron pan")
]


async def label(config: Path) -> int:
    return await asyncio.to_thread(labeler.main, ["--config", str(config), "--progress-interval", "0.1"])


def write_config(tmp_path: Path, teachers: dict[str, str], strategy: str, *, task: str = "nli",
                 rows: list[dict[str, Any]] | None = None, judge: str | None = None, **extra: Any) -> Path:
    clients = [{"name": name, "base_url": url, "model": "teacher", "concurrency": 4, "max_attempts": 2,
                "request_timeout_seconds": 5, "min_success_ratio": 0.3, **extra} for name, url in teachers.items()]
    cfg = PipelineConfig.model_validate({
        "name": "test", "namespace": "default", "task": task,
        "teacher": clients[0], "teachers": clients, "teacher_strategy": strategy,
        "strategy_judge": {"name": "judge", "base_url": judge, "model": "judge", "max_attempts": 2} if judge else None,
        "dataset": {"train": {"rows": NLI_ROWS if rows is None else rows}, "validation_fraction": 0.25},
        "student": {"model": "student"},
        "workspace": {"root": str(tmp_path / "workspace")},
    })
    path = tmp_path / "pipeline.json"
    path.write_text(cfg.to_json())
    return path


def records(config: Path) -> list[LabelRecord]:
    labels_dir = PipelineConfig.load(config).workspace.labels_dir
    return read_labels(labels_dir, "train") + read_labels(labels_dir, "validation")


def said(responder: TaskAwareResponder, task: TaskDefinition, row: dict[str, Any]) -> str:
    """What a teacher answers for a row, asked directly (the oracle the labeler's records are checked against)."""
    return task.parse(responder(ResponderContext(task.teacher_messages(row), 0, 0)), row).answer


@pytest.fixture
def nli() -> TaskDefinition:
    return get_task(Task.NLI, PromptSpec(), {})


@pytest_asyncio.fixture(loop_scope="function")
async def servers(nli: TaskDefinition) -> AsyncIterator[dict[str, TeacherServer]]:
    """Three NLI teachers: one right on every row, two wrong on different thirds of the rows."""
    lookup = lookup_from_rows(nli, NLI_ROWS)
    started = {"gold": TeacherServer(TaskAwareResponder(lookup)),
               "b": TeacherServer(TaskAwareResponder(lookup, wrong_share=0.4, wrong_salt="b")),
               "c": TeacherServer(TaskAwareResponder(lookup, wrong_share=0.4, wrong_salt="c"))}
    for server in started.values():
        await server.start()
    yield started
    for server in started.values():
        await server.stop()


def test_plurality_and_verdicts() -> None:
    assert plurality([("a", "7"), ("b", "7"), ("c", "8")]) == ("7", "")
    winner, why = plurality([("a", "7"), ("b", "8")])
    assert winner is None and "'7' from a" in why and "'8' from b" in why
    assert plurality([("a", "7"), ("b", "8"), ("c", "9"), ("d", "8")])[0] == "8"
    assert parse_verdict("Reply 2 is better.\nBest: 2", 3) == 1
    assert parse_verdict("**Best:** Reply 3", 3) == 2
    assert parse_verdict("Best: 4", 3) is None and parse_verdict("I like both.", 2) is None
    prompt = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi?"}]
    text = strategy_judge_messages(prompt, ["a", "b"])[-1]["content"]
    assert "hi?" in text and "be nice" not in text and "Reply 2:\nb" in text


async def test_vote_takes_the_majority_and_rejects_ties(servers: dict[str, TeacherServer], nli: TaskDefinition,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        published: PublishedProgress) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(termination))
    config = write_config(tmp_path, {name: s.url for name, s in servers.items()}, "vote")

    assert await label(config) == 0

    result = records(config)
    assert len(result) == len(NLI_ROWS)
    disagreed = 0
    for record in result:
        answers = {name: said(s.responder, nli, record.row) for name, s in servers.items()}  # type: ignore[arg-type]
        assert record.teachers is not None
        assert {name: vote.answer for name, vote in record.teachers.items()} == answers
        (top, votes), *rest = Counter(answers.values()).most_common()
        disagreed += len(set(answers.values())) > 1
        if rest and rest[0][1] == votes:
            assert record.status == "rejected" and "tied" in (record.reason or "")
            continue
        assert record.status == "ok" and record.answer == top
        assert record.teacher == next(name for name, answer in answers.items() if answer == top)
        assert {n for n, v in record.teachers.items() if v.agreed} == {n for n, a in answers.items() if a == top}
    assert disagreed, "the wrong teachers disagree on some rows"
    assert all(s.total_requests == len(NLI_ROWS) for s in servers.values())
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed) == json.loads(termination.read_text())
    # What the operator reads, live and at the end: every key is one LabelingReport knows, and dumps back as written.
    texts = [termination.read_text(), *(value for _, value in published.patches)]
    reports = [LabelingReport.parse(text) for text in texts]
    for text, report in zip(texts, reports, strict=True):
        assert report is not None and report.dump() == json.loads(text), text
    summary, live = reports[0], reports[-1]
    assert summary is not None and live is not None
    assert (summary.strategy, summary.rows_disagreed, live.rows_disagreed) == ("vote", disagreed, disagreed)
    assert live.teachers == summary.teachers and set(summary.teachers) == set(servers)
    for name in servers:
        agreed = sum(bool(r.teachers and r.teachers[name].agreed) for r in result)
        counts = summary.teachers[name]
        assert (counts.agreed, counts.answered) == (agreed, len(NLI_ROWS)) and counts.tokens_out > 0


async def test_a_two_teacher_tie_is_rejected_with_both_answers(servers: dict[str, TeacherServer],
                                                              nli: TaskDefinition, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gold": servers["gold"].url, "b": servers["b"].url}, "vote")

    assert await label(config) == 0

    result = records(config)
    ties = [r for r in result if r.status == "rejected"]
    assert ties and len(ties) < len(result)
    for record in ties:
        gold, wrong = nli.reference(record.row), said(servers["b"].responder, nli, record.row)  # type: ignore[arg-type]
        assert gold != wrong
        assert f"'{gold}' from gold" in (record.reason or "") and f"'{wrong}' from b" in (record.reason or "")
    for record in result:
        if record.status == "ok":
            assert record.answer == nli.reference(record.row)
            assert record.teachers and all(v.agreed for v in record.teachers.values())


async def test_judge_picks_the_more_detailed_reply(tmp_path: Path) -> None:
    task = get_task(Task.CONVERSATION, PromptSpec(), {})
    plain, detailed, judge = (TeacherServer(TaskAwareResponder()),
                              TeacherServer(TaskAwareResponder(reply_suffix="Step by step: first, then, last.")),
                              TeacherServer(TaskAwareResponder()))
    for server in (plain, detailed, judge):
        await server.start()
    try:
        config = write_config(tmp_path, {"plain": plain.url, "detailed": detailed.url}, "judge",
                              task="conversation", rows=CONVERSATIONS, judge=judge.url)
        assert await label(config) == 0
    finally:
        for server in (plain, detailed, judge):
            await server.stop()

    result = records(config)
    assert len(result) == len(CONVERSATIONS)
    for record in result:
        assert record.status == "ok" and record.teacher == "detailed"
        assert record.answer.endswith("Step by step: first, then, last.")
        assert record.teachers is not None
        assert record.teachers["detailed"].agreed and not record.teachers["plain"].agreed
        assert task.teacher_messages(record.row)
    assert judge.total_requests == len(CONVERSATIONS)
    summary = read_records(replies_path(PipelineConfig.load(config).workspace.labels_dir, "train", 0))[0]
    assert {r.teacher for r in summary} == {"plain", "detailed"}


async def test_all_keeps_every_valid_reply_as_a_training_example(servers: dict[str, TeacherServer],
                                                                 nli: TaskDefinition, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gold": servers["gold"].url, "b": servers["b"].url}, "all")

    assert await label(config) == 0

    train = read_labels(PipelineConfig.load(config).workspace.labels_dir, "train")
    for record in train:
        assert record.status == "ok" and record.teacher == "gold" and record.alternatives
        assert [a.teacher for a in record.alternatives] == ["b"]
        assert record.alternatives[0].answer == said(servers["b"].responder, nli, record.row)  # type: ignore[arg-type]
    data = build_finetune_set(train, nli, build_tokenizer(), 256, include_rationale=False)
    assert len(data.examples) == 2 * len(train)


async def test_a_restarted_pod_asks_only_the_teachers_that_had_not_answered(
    servers: dict[str, TeacherServer], nli: TaskDefinition, tmp_path: Path,
) -> None:
    down = servers["b"]
    port = down.port
    await down.stop()  # b refuses connections: its rows stay unlabeled, gold's replies are kept
    config = write_config(tmp_path, {"gold": servers["gold"].url, "b": f"http://127.0.0.1:{port}/v1"}, "vote",
                          outage_budget_seconds=0)

    assert await label(config) == ExitCode.TEACHER_UNREACHABLE

    labels_dir = PipelineConfig.load(config).workspace.labels_dir
    assert records(config) == []
    kept = read_records(replies_path(labels_dir, "train", 0))[0] + read_records(
        replies_path(labels_dir, "validation", 0))[0]
    # The rows in flight when b's outage budget ran out have gold's reply; the rest were not asked.
    assert {r.teacher for r in kept} == {"gold"} and 0 < len(kept) < len(NLI_ROWS)
    asked_gold = servers["gold"].total_requests

    back = TeacherServer(down.responder, port=port)
    await back.start()
    try:
        assert await label(config) == 0
    finally:
        await back.stop()

    assert servers["gold"].total_requests - asked_gold == len(NLI_ROWS) - len(kept), \
        "gold's replies were read back, not asked again"
    assert back.total_requests == len(NLI_ROWS)
    result = records(config)
    assert len(result) == len(NLI_ROWS)
    assert all(r.teachers is not None and set(r.teachers) == {"gold", "b"} for r in result)


async def test_several_teachers_labels_can_be_reused(servers: dict[str, TeacherServer], tmp_path: Path) -> None:
    """dataset.labelsFrom naming a several-teacher Distillation: its finished labels carry the fingerprint that
    the copying pod checks, so they are copied, not refused for a missing labels/fingerprint.json."""
    config = write_config(tmp_path, {name: s.url for name, s in servers.items()}, "vote")
    fingerprint = {"task": "nli", "teacher": "gold-b-c-vote", "prompt": "default", "rows": "nli-rows"}
    source = PipelineConfig.load(config).model_copy(update={"labels_fingerprint": fingerprint})
    config.write_text(source.to_json())
    assert await label(config) == 0
    asked = sum(s.total_requests for s in servers.values())

    claim = tmp_path / "pvc" / "claim"
    claim.mkdir(parents=True)
    (claim / "workspace").symlink_to(source.workspace.root)
    reusing = source.model_copy(update={"workspace": source.workspace.model_copy(update={"root": str(tmp_path / "b")}),
                                        "labels_from": "pvc://claim/workspace"})
    code, summary = labeler.reuse_labels(reusing, str(tmp_path / "pvc"))

    assert code == ExitCode.OK, summary
    for split in ("train", "validation"):
        assert read_labels(reusing.workspace.labels_dir, split) == read_labels(source.workspace.labels_dir, split)
    assert summary.rows_done == len(NLI_ROWS) == summary.rows_ok + summary.rows_rejected
    assert json.loads(reusing.workspace.labels_fingerprint.read_text())["fingerprint"] == fingerprint
    assert sum(s.total_requests for s in servers.values()) == asked  # copied, no teacher asked
