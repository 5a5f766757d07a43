"""The pure planner: (spec, status, observed children, now) -> (actions, new status, events).

No I/O here. Every decision of the operator lives in this package so that each
transition can be unit-tested: stage order, waiting for GPU capacity, teacher
removal, failure, suspend and resume, and resuming a half-built pipeline after
an operator restart (status says what finished; children say what exists).

One pass runs the stage functions below in their order over one context (`context.Pass`), through which
every stage record changes; each stage function decides for itself whether its stage is due.
"""

from collections.abc import Callable
from datetime import datetime

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, Stage
from distillery.controller.observe import Observed
from distillery.controller.planner import jobs, lifecycle, reports, serving, stages, teachers, training
from distillery.controller.planner.actions import Action, Apply, Create, Delete, Event, Patch, Plan
from distillery.controller.planner.capacity import gpu_pool_fits, gpu_pool_fits_all
from distillery.controller.planner.context import Pass
from distillery.controller.planner.gate import gap_closed, gate_verdict, quality_gate
from distillery.controller.planner.training import MAX_TRAINING_ATTEMPTS
from distillery.resources.common import Owner

__all__ = ["MAX_TRAINING_ATTEMPTS", "Action", "Apply", "Create", "Delete", "Event", "Patch", "Plan", "gap_closed",
           "gate_verdict", "gpu_pool_fits", "gpu_pool_fits_all", "plan"]

Step = Callable[[Pass], None]


def _serving(ctx: Pass) -> None:
    if ctx.ready_for(Stage.SERVING) and quality_gate(ctx):
        serving.serving(ctx)


STAGES: list[Step] = [
    teachers.teacher_stage,
    jobs.resume_jobs,
    stages.generation,
    stages.labeling,
    teachers.release_after_labeling,
    training.training,
    stages.evaluation,
    _serving,
    reports.live_progress,
]
"""A pass in order: each stage after the stages it reads."""
SUSPEND: list[Step] = [jobs.suspend_jobs, teachers.suspend_teachers, serving.suspend_student]


def plan(owner: Owner, generation: int, spec: DistillationSpec, status: DistillationStatus, observed: Observed,
         now: datetime, config: OperatorConfig) -> Plan:
    ctx = Pass(owner, generation, spec, status, observed, now, config)
    lifecycle.shared_children(ctx)
    if ctx.failed_stage() is None:
        if spec.suspend:
            for step in SUSPEND:
                step(ctx)
            return lifecycle.suspended(ctx)
        for step in STAGES:
            step(ctx)
    failed = ctx.failed_stage()
    if failed is not None:
        teachers.release_teacher(ctx)
        return lifecycle.conclude_failed(ctx, failed)
    return lifecycle.conclude(ctx)
