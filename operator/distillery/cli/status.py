"""`distillery status NAME [-n NAMESPACE] [--kubeconfig PATH] [--context NAME]`: one Distillation, readable.

`kubectl get` shows a line and `kubectl describe` shows raw conditions; this puts the stages,
progress, results and whatever needs attention on one screen. `render` is pure (object in,
text out) so the layout is tested without a cluster.
"""

import argparse
import asyncio
import sys
from typing import Any

from distillery.api.status import STAGE_CONDITION, ModelScore, Stage, parse_time, results_line, seconds_between
from distillery.controller.kube import (
    TRANSPORT_ERRORS,
    ApiError,
    CredentialsError,
    KubeClient,
    default_namespace,
    load_configuration,
)
from distillery.workloads.report import text_table

# Conditions that are good news when True; the others (Failed, Stalled, Reconciling, Suspended)
# are good news when False.
POSITIVE = {"Ready", "Succeeded", *STAGE_CONDITION.values()}
SETTLED_STAGE_STATES = {"Succeeded", "Removed", "Skipped"}
STAGE_OF_CONDITION = {condition: stage.value for stage, condition in STAGE_CONDITION.items()}
MESSAGE_WIDTH = 80


def _clip(text: str | None, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(start: str | None, end: str | None) -> str:
    elapsed = seconds_between(start, end)
    if elapsed is None:
        return "-"
    seconds = int(elapsed)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _time(value: str | None) -> str:
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else "-"


def _hours(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


def _stages(status: dict[str, Any]) -> list[str]:
    records = status.get("stages") or {}
    if not records:
        return []
    rows = []
    for stage in [s.value for s in Stage] + sorted(set(records) - {s.value for s in Stage}):
        record = records.get(stage)
        if record is None:
            continue
        rows.append([stage, record.get("state", "Pending"), _time(record.get("startTime")),
                     _duration(record.get("startTime"), record.get("completionTime")),
                     _hours(record.get("gpuHours")), _clip(record.get("message"))])
    return ["Stages:", *text_table(["STAGE", "STATE", "STARTED", "TOOK", "GPU-H", "MESSAGE"], rows)]


def _progress(progress: dict[str, Any] | None) -> list[str]:
    if not progress:
        return []
    lines = []
    if progress.get("inputsKept") is not None:
        line = (f"  generated  {_count(progress.get('inputsGenerated'))} inputs, {_count(progress['inputsKept'])} "
                f"kept, {_count(progress.get('inputsRejected'))} rejected")
        reasons = progress.get("inputRejections") or {}
        if reasons:
            line += " (" + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])) + ")"
        lines.append(line)
    if progress.get("rowsLabeled") is not None or progress.get("rowsTotal") is not None:
        line = f"  labelled   {_count(progress.get('rowsLabeled'))}/{_count(progress.get('rowsTotal'))} rows"
        if progress.get("rowsRejected"):
            line += f" ({_count(progress['rowsRejected'])} rejected)"
        lines.append(line)
    if progress.get("trainStep") is not None:
        line = f"  training   step {_count(progress['trainStep'])}/{_count(progress.get('trainSteps'))}"
        if progress.get("trainLoss") is not None:
            line += f", loss {progress['trainLoss']:.4g}"
        lines.append(line)
    if progress.get("teacherTokensIn") is not None or progress.get("teacherTokensOut") is not None:
        lines.append(f"  teacher    {_count(progress.get('teacherTokensIn'))} tokens in, "
                     f"{_count(progress.get('teacherTokensOut'))} out")
    return ["Progress:", *lines] if lines else []


def _results(results: list[dict[str, Any]] | None) -> list[str]:
    if not results:
        return []
    rows = [[r["model"], r.get("prompt", ""), r.get("metric", ""), f"{r['score']:.2f}", _count(r.get("rows"))]
            for r in results]
    headers = ["MODEL", "PROMPT", "METRIC", "SCORE", "ROWS"]
    # evaluation.judge's columns, only when it judged: the reference metric stays the first score.
    for key, header in (("judge", "JUDGE"), ("persona", "PERSONA"), ("unjudged", "UNJUDGED")):
        if any(r.get(key) is not None for r in results):
            headers.append(header)
            for row, r in zip(rows, results, strict=True):
                value = r.get(key)
                row.append("-" if value is None else _count(value) if key == "unjudged" else f"{value:.2f}")
    line = results_line([ModelScore.model_validate(r) for r in results])
    return ["Results:", *text_table(headers, rows), "  " + line]


def _needs_attention(condition: dict[str, Any], stages: dict[str, Any]) -> bool:
    status = condition.get("status")
    if status == "Unknown":
        return False
    ok = status == "True" if condition["type"] in POSITIVE else status == "False"
    if ok:
        return False
    # A finished stage's condition may be False by design (the teacher is removed after labeling).
    stage = STAGE_OF_CONDITION.get(condition["type"])
    return not (stage and (stages.get(stage) or {}).get("state") in SETTLED_STAGE_STATES)


def _conditions(status: dict[str, Any]) -> list[str]:
    stages = status.get("stages") or {}
    # A failure sets Ready, Succeeded, Failed and Stalled with one reason and message: print it once.
    grouped: dict[tuple[str, str], list[str]] = {}
    for c in status.get("conditions") or []:
        if _needs_attention(c, stages):
            key = (c.get("reason") or "", " ".join((c.get("message") or "").split()))
            grouped.setdefault(key, []).append(f"{c['type']}={c['status']}")
    lines = [f"  {', '.join(types)}  {reason}" + (f": {message}" if message else "")
             for (reason, message), types in grouped.items()]
    return ["Conditions not OK:", *lines] if lines else []


def _teacher_line(teacher: dict[str, Any]) -> str:
    if teacher.get("endpoint"):
        return f"{teacher['endpoint'].get('model')} at {teacher['endpoint'].get('url')}"
    line = (f"{teacher.get('model')} on {teacher.get('gpus', 1)}x {teacher.get('gpuType', 'H100')}, "
            f"tensor parallel {teacher.get('tensorParallelSize', 1)}")
    if teacher.get("replicas", 1) > 1:
        line += f", {teacher['replicas']} replicas"
    return line


def _several_teachers_lines(spec: dict[str, Any]) -> list[str]:
    strategy = spec.get("teacherStrategy") or {}
    mode = strategy.get("mode", "?")
    judge = strategy.get("judge") or {}
    if judge.get("teacher"):
        mode += f" by {judge['teacher']}"
    elif judge.get("endpoint"):
        mode += f" by {judge['endpoint'].get('model')} at {judge['endpoint'].get('url')}"
    return [f"  Teachers:   {len(spec['teachers'])}, strategy {mode}",
            *(f"    {t.get('name')}: {_teacher_line(t)}" for t in spec["teachers"])]


def _teachers(status: dict[str, Any]) -> list[str]:
    """Several teachers: how often each one's answer became the label, and what it cost."""
    teachers = status.get("teachers")
    if not teachers:
        return []
    rows = [[t.get("name", "?"), _count(t.get("rowsAnswered")), _count(t.get("rowsAgreed")),
             f"{100 * t['agreementRate']:.1f}%" if t.get("agreementRate") is not None else "-",
             _count(t.get("tokensIn")), _count(t.get("tokensOut")), _hours(t.get("gpuHours"))] for t in teachers]
    lines = ["Teachers:", *text_table(["TEACHER", "ANSWERED", "AGREED", "AGREEMENT", "TOKENS IN", "TOKENS OUT",
                                       "GPU-HOURS"], rows)]
    disagreed = (status.get("progress") or {}).get("rowsDisagreed")
    if disagreed is not None:
        lines.append(f"  rows where the teachers disagreed: {_count(disagreed)}")
    return lines


def render(obj: dict[str, Any]) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    teacher, student = spec.get("teacher") or {}, spec.get("student") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    phase = status.get("phase") or "Pending"
    if status.get("progressSummary"):
        phase += f" ({status['progressSummary']})"
    if observed is not None and generation is not None and observed < generation:
        phase += f" [operator has seen generation {observed} of {generation}]"

    teacher_line = _teacher_line(teacher)
    student_line = (f"{student.get('model')}, {student.get('method', 'lora')} on {student.get('nodes', 1)} node(s) "
                    f"x {student.get('gpusPerNode', 1)}x {student.get('gpuType', 'H100')}")
    header = [
        f"Distillation {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"  Phase:      {phase}",
        f"  Task:       {spec.get('task', '?')}",
        f"  Region:     {spec.get('region', '?')}",
        *([f"  Teacher:    {teacher_line}"] if not spec.get("teachers") else _several_teachers_lines(spec)),
        f"  Student:    {student_line}",
    ]
    if status.get("gpuHours") is not None:
        header.append(f"  GPU-hours:  {_hours(status['gpuHours'])}")
    if status.get("studentEndpoint"):
        header.append(f"  Endpoint:   {status['studentEndpoint']}")
    if not status:
        header.append("  (no status yet: is the operator running?)")
    sections = [header, _stages(status), _progress(status.get("progress")), _teachers(status),
                _results(status.get("results")), _conditions(status)]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


async def _fetch(client: KubeClient, name: str, namespace: str) -> dict[str, Any] | None:
    async with client:
        return await client.get("Distillation", name, namespace)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery status", description="Print a readable Distillation summary.")
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace, else 'default'")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, then ~/.kube/config")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    args = parser.parse_args(argv)
    try:
        configuration = load_configuration(args.kubeconfig, args.context)
        namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
        client = KubeClient(configuration, user_agent="distillery-status")
        obj = asyncio.run(_fetch(client, args.name, namespace))
    except (CredentialsError, ApiError, *TRANSPORT_ERRORS) as e:
        print(f"distillery status: {e}", file=sys.stderr)
        return 1
    if obj is None:
        print(f"distillery status: Distillation {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    print(render(obj), end="")
    return 0
