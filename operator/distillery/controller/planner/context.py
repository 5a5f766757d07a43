"""One pass's context: what it reads (spec, observed children, config, now) and what it writes (a copy of the
status, actions, Events), with the one transition through which every stage record changes."""

from datetime import datetime
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.api.status import (
    DistillationStatus,
    Progress,
    Stage,
    StageState,
    StageStatus,
    TeacherStats,
    format_time,
    seconds_between,
)
from distillery.controller.conditions import set_condition
from distillery.controller.observe import Observed
from distillery.controller.planner.actions import Action, Apply, Create, Delete, Event, Patch, Plan
from distillery.resources.common import APPLIED_HASH_ANNOTATION, Names, Owner, digest

DONE = {StageState.SUCCEEDED, StageState.SKIPPED, StageState.REMOVED}
ORDER = [Stage.TEACHER, Stage.GENERATION, Stage.LABELING, Stage.TRAINING, Stage.EVALUATION, Stage.SERVING]
NOT_STARTED = {StageState.PENDING, StageState.WAITING, StageState.REMOVED}
"""States a stage record may take without its start time being set: nothing of the stage has run yet, or
(removed) the teacher ends without ever having been recorded as started."""
CONDITION_ORDER = {"Ready": 0, "Succeeded": 1, "Failed": 2, "Reconciling": 3, "Stalled": 4, "Suspended": 5}


def hours_between(start: str | None, end: str | None) -> float:
    return max(0.0, (seconds_between(start, end) or 0.0) / 3600)


class Pass:
    """One reconcile pass; mutates a copy of the status and collects actions and events."""

    def __init__(self, owner: Owner, generation: int, spec: DistillationSpec, status: DistillationStatus,
                 observed: Observed, now: datetime, config: OperatorConfig) -> None:
        self.owner, self.spec, self.obs, self.config = owner, spec, observed, config
        self.names = Names(owner.name)
        self.generation = generation
        self.now = format_time(now)
        self.status = status.model_copy(deep=True)
        self.status.observed_generation = generation
        for stage in ORDER:
            self.status.stages.setdefault(stage.value, StageStatus())
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.teacher_released = False

    # reading ---------------------------------------------------------------
    def stage(self, stage: Stage) -> StageStatus:
        return self.status.stages[stage.value]

    def done(self, stage: Stage) -> bool:
        return self.stage(stage).state in DONE

    def failed_stage(self) -> Stage | None:
        return next((s for s in ORDER if self.stage(s).state == StageState.FAILED), None)

    def ready_for(self, stage: Stage) -> bool:
        """The teacher gates generation and labeling; after that each stage waits for all stages between it
        and generation."""
        if stage in (Stage.GENERATION, Stage.LABELING):
            return all(self.done(s) for s in ORDER[:ORDER.index(stage)])
        return all(self.done(s) for s in ORDER[1:ORDER.index(stage)])

    @property
    def kueue_managed(self) -> bool:
        """The stage Jobs carry Kueue's queue-name label: Kueue alone decides when they run."""
        return bool(self.spec.scheduling.queue_name)

    # stage records ---------------------------------------------------------
    def transition(self, stage: Stage, state: StageState | None = None, message: str | None = None, *,
                   ended: bool = False, gpus: int = 0, attempts: int | None = None,
                   failures: int | None = None) -> StageStatus:
        """The one place a stage record changes. `state` (with its message) when given; a start time on the
        first state in which the stage has run; `ended` stamps the completion time; `gpus` counts GPU-hours
        from the start until now; `attempts` and `failures` are training's restart counters (0 failures is
        recorded as none)."""
        record = self.stage(stage)
        if state is not None:
            if record.start_time is None and state not in NOT_STARTED:
                record.start_time = self.now
            record.state, record.message = state, message
        if ended:
            record.completion_time = self.now
        if gpus:
            record.gpu_hours = round(gpus * hours_between(record.start_time, self.now), 4)
        if attempts is not None:
            record.attempts = attempts
        if failures is not None:
            record.failures = failures or None
        return record

    def start(self, stage: Stage, state: StageState = StageState.RUNNING, message: str | None = None) -> None:
        self.transition(stage, state, message)

    def finish(self, stage: Stage, state: StageState, message: str | None = None, gpus: int = 0) -> None:
        """A stage ends once: a record already done or failed keeps its outcome."""
        if self.stage(stage).state in DONE | {StageState.FAILED}:
            return
        self.transition(stage, state, message, ended=True, gpus=gpus)
        if state == StageState.SUCCEEDED:
            self.event("StageSucceeded", f"Stage {stage.value} succeeded" + (f": {message}" if message else ""))
        elif state == StageState.FAILED:
            self.event("StageFailed", f"Stage {stage.value} failed: {message}", warning=True)

    # status beside the stage records ----------------------------------------
    def cond(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(self.status.conditions, type_, status, reason, message, self.now,
                                               self.generation)

    def progress(self) -> Progress:
        if self.status.progress is None:
            self.status.progress = Progress()
        return self.status.progress

    def teacher_stats(self) -> list[TeacherStats]:
        """status.teachers in spec.teachers order, created on first use."""
        members = self.spec.teachers or []
        known = {s.name: s for s in self.status.teachers or []}
        self.status.teachers = [known.get(t.name) or TeacherStats(name=t.name) for t in members]
        return self.status.teachers

    # actions and events ------------------------------------------------------
    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message[:1000]))

    def create(self, manifest: dict[str, Any]) -> None:
        self.actions.append(Create(manifest))

    def apply(self, manifest: dict[str, Any]) -> None:
        """A child whose fields may change after creation (replicas, images, operator-wide annotations, an
        upgraded builder): created when absent, server-side applied when what the builders want now differs
        from what was last applied. The hash of the last applied manifest rides on the child itself, so a
        restarted operator writes nothing for children that are already right."""
        applied_hash = digest(manifest)
        meta = manifest["metadata"]
        stamped = {**manifest, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                                    APPLIED_HASH_ANNOTATION: applied_hash}}}
        applied = self.obs.applied.get((manifest["kind"], meta["name"]))
        if applied is None:
            self.actions.append(Create(stamped))
        elif applied != applied_hash:
            self.actions.append(Apply(stamped))

    def delete(self, kind: str, name: str, propagation: str = "Background") -> None:
        self.actions.append(Delete(kind, name, propagation))

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.actions.append(Patch(kind, name, patch))

    def plan(self) -> Plan:
        self.status.conditions.sort(key=lambda c: (CONDITION_ORDER.get(c.type, 10), c.type))
        return Plan(actions=self.actions, status=self.status, events=self.events)
