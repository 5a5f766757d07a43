"""The quality gate: evaluation.gate decides whether the trained student is served."""

from distillery.api.spec import GateSpec
from distillery.api.status import ModelScore, Stage, StageState
from distillery.controller.planner.context import Pass

QUALITY_GATE_FAILED = "QualityGateFailed"


def gap_closed(base: float, teacher: float, distilled: float) -> float | None:
    """The share of the base student's gap to the teacher that distillation closed; None when the teacher does
    not beat the base student (there is no gap to close)."""
    if teacher <= base:
        return None
    return (distilled - base) / (teacher - base)


def gate_verdict(gate: GateSpec, results: list[ModelScore]) -> tuple[bool, str]:
    """(passed, the numbers): evaluation.gate checked against the evaluation's main metric."""
    scores = {r.model: r for r in results}
    distilled = scores.get("distilled-student")
    if distilled is None:
        return False, "the evaluation reported no score for the distilled student"
    parts, passed = [], True
    if gate.min_score is not None:
        ok = distilled.score >= gate.min_score
        passed &= ok
        parts.append(f"distilled-student {distilled.metric} {distilled.score:.2f} is "
                     f"{'at least' if ok else 'below'} minScore {gate.min_score:g}")
    if gate.min_gap_closed is not None:
        ok, part = _gap_verdict(gate.min_gap_closed, distilled, scores.get("base-student"), scores.get("teacher"))
        passed &= ok
        parts.append(part)
    return passed, "; ".join(parts)


def _gap_verdict(min_gap_closed: float, distilled: ModelScore, base: ModelScore | None,
                 teacher: ModelScore | None) -> tuple[bool, str]:
    """evaluation.gate.minGapClosed: (met, the numbers)."""
    metric = distilled.metric
    if base is None or teacher is None:
        missing = " and ".join(m for m, r in (("base-student", base), ("teacher", teacher)) if r is None)
        return False, (f"minGapClosed needs the {missing} score, which the evaluation did not report "
                       "(a teacher is scored only on rows with gold answers)")
    share = gap_closed(base.score, teacher.score, distilled.score)
    if share is None:
        return False, (f"teacher {metric} {teacher.score:.2f} does not beat base-student {base.score:.2f}: "
                       f"there is no gap for minGapClosed {min_gap_closed:.0%} to measure")
    ok = share >= min_gap_closed
    return ok, (f"distilled-student {metric} {distilled.score:.2f} closes {share:.1%} of the gap from "
                f"base-student {base.score:.2f} to teacher {teacher.score:.2f}, "
                f"{'at least' if ok else 'below'} minGapClosed {min_gap_closed:.1%}")


def quality_gate(ctx: Pass) -> bool:
    """True when the student may be served: no evaluation.gate, or the evaluation met it. A student that
    misses it is not served; the Distillation fails with QualityGateFailed and the numbers, and the
    trained adapter stays in the workspace."""
    gate = ctx.spec.evaluation.gate
    if gate is None or ctx.stage(Stage.EVALUATION).state == StageState.SKIPPED:
        return True
    passed, message = gate_verdict(gate, ctx.status.results or [])
    record = ctx.stage(Stage.SERVING)
    if passed:
        if record.state == StageState.PENDING:
            ctx.event("QualityGatePassed", message)
        return True
    if record.state != StageState.FAILED:
        ctx.transition(Stage.SERVING, StageState.FAILED, f"quality gate failed: {message}", ended=True)
        ctx.event(QUALITY_GATE_FAILED, f"the student is not served: {message}; the trained adapter stays in "
                                       f"the workspace", warning=True)
    ctx.cond("StudentReady", False, QUALITY_GATE_FAILED, record.message or message)
    return False
