"""The planner's pass context: the one transition through which every stage record changes, and one teacher
as a list of one."""

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distillery.api.config import OperatorConfig
from distillery.api.spec import SINGLE_TEACHER_NAME, DistillationSpec, NamedTeacherSpec
from distillery.api.status import DistillationStatus, Stage, StageState, format_time
from distillery.controller.observe import Observed
from distillery.controller.planner.context import Pass
from distillery.resources.common import Owner
from distillery.resources.teacher import teacher_name

OWNER = Owner("demo", "team-a", "uid-1")
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
PLANNER = Path(__file__).parents[2] / "operator" / "distillery" / "controller" / "planner"
RECORD_FIELDS = {"state", "message", "start_time", "completion_time", "gpu_hours", "attempts", "failures"}


def spec(**overrides: object) -> DistillationSpec:
    raw: dict[str, object] = {
        "task": "nli", "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpus": 4, "tensorParallelSize": 4},
        "dataset": {"train": {"uri": "hf://nyu-mll/glue"}},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct"},
    }
    return DistillationSpec.model_validate({**raw, **overrides})


def a_pass(status: DistillationStatus | None = None, now: datetime = NOW) -> Pass:
    return Pass(OWNER, 1, spec(), status or DistillationStatus(), Observed(), now, OperatorConfig())


@pytest.mark.parametrize(("state", "starts"), [(StageState.RUNNING, True), (StageState.SUCCEEDED, True),
                                               (StageState.FAILED, True), (StageState.SKIPPED, True),
                                               (StageState.WAITING, False), (StageState.PENDING, False),
                                               (StageState.REMOVED, False)])
def test_a_stage_gets_its_start_time_in_the_first_state_in_which_it_ran(state: StageState, starts: bool) -> None:
    ctx = a_pass()
    record = ctx.transition(Stage.TRAINING, state, "why")
    assert (record.state, record.message) == (state, "why")
    assert record.start_time == (format_time(NOW) if starts else None)
    assert record.completion_time is None


def test_a_later_transition_keeps_the_start_time_and_counts_gpu_hours_from_it() -> None:
    earlier = a_pass()
    earlier.transition(Stage.TRAINING, StageState.RUNNING)
    later = a_pass(earlier.status, NOW + timedelta(hours=2))
    record = later.transition(Stage.TRAINING, StageState.SUCCEEDED, "done", ended=True, gpus=8)
    assert record.start_time == format_time(NOW)
    assert record.completion_time == format_time(NOW + timedelta(hours=2))
    assert record.gpu_hours == 16.0


def test_counters_change_without_touching_the_state() -> None:
    ctx = a_pass()
    ctx.transition(Stage.TRAINING, StageState.RUNNING, "running")
    record = ctx.transition(Stage.TRAINING, attempts=3, failures=2)
    assert (record.state, record.message, record.attempts, record.failures) == (StageState.RUNNING, "running", 3, 2)
    assert ctx.transition(Stage.TRAINING, failures=0).failures is None
    assert ctx.transition(Stage.TRAINING).attempts == 3


def test_a_finished_stage_keeps_its_outcome_and_is_announced_once() -> None:
    ctx = a_pass()
    ctx.finish(Stage.LABELING, StageState.FAILED, "broken")
    ctx.finish(Stage.LABELING, StageState.SUCCEEDED, "fine")
    assert (ctx.stage(Stage.LABELING).state, ctx.stage(Stage.LABELING).message) == (StageState.FAILED, "broken")
    assert [e.reason for e in ctx.events] == ["StageFailed"]


def test_the_transition_is_the_only_writer_of_stage_records() -> None:
    """No planner module but the context assigns a stage record's fields (status.gpu_hours and status.teachers'
    GPU-hours, written per teacher by subscript, are not stage records)."""
    writes = []
    for path in sorted(PLANNER.glob("*.py")):
        if path.name == "context.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            flat = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            writes += [f"{path.name}:{t.lineno} {t.attr}" for t in flat
                       if isinstance(t, ast.Attribute) and t.attr in RECORD_FIELDS
                       and not isinstance(t.value, ast.Subscript)
                       and not (isinstance(t.value, ast.Attribute) and t.value.attr == "status")]
    assert writes == []


def test_one_teacher_is_a_list_of_one_named_teacher() -> None:
    one = spec()
    [member] = one.teacher_list()
    assert isinstance(member, NamedTeacherSpec) and member.name == SINGLE_TEACHER_NAME
    assert one.teacher is not None and member.model_dump(exclude={"name"}) == one.teacher.model_dump()
    assert not one.several_teachers
    assert teacher_name(OWNER, one, 0) == "demo-teacher"
    several = spec(teacher=None, teachers=[{"name": "a", "model": "m-a"}, {"name": "b", "model": "m-b"}],
                   teacherStrategy={"mode": "vote"})
    assert several.several_teachers and [t.name for t in several.teacher_list()] == ["a", "b"]
    assert [teacher_name(OWNER, several, i) for i in range(2)] == ["demo-teacher-0", "demo-teacher-1"]
