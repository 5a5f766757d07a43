"""`distillery status NAME [-n NAMESPACE] [--kubeconfig PATH]`: one Distillation, readable.

`kubectl get` shows a line and `kubectl describe` shows raw conditions; this puts the stages,
progress, results and whatever needs attention on one screen. `render` is pure (object in,
text out) so the layout is tested without a cluster.
"""

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from distillery.api.status import STAGE_CONDITION, Stage, parse_time, seconds_between
from distillery.kube import SA_DIR, ApiError, Credentials, KubeClient

# Conditions that are good news when True; the others (Failed, Stalled, Reconciling, Suspended)
# are good news when False.
POSITIVE = {"Ready", "Succeeded", *STAGE_CONDITION.values()}
SETTLED_STAGE_STATES = {"Succeeded", "Removed", "Skipped"}
STAGE_OF_CONDITION = {condition: stage.value for stage, condition in STAGE_CONDITION.items()}
MESSAGE_WIDTH = 80


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return [indent + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]


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
    return ["Stages:", *_table(["STAGE", "STATE", "STARTED", "TOOK", "GPU-H", "MESSAGE"], rows)]


def _progress(progress: dict[str, Any] | None) -> list[str]:
    if not progress:
        return []
    lines = []
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


def results_line(results: list[dict[str, Any]]) -> str:
    """'teacher cot 69.98 / base-student cot 52.81 / distilled-student short 63.88'."""
    return " / ".join(f"{r['model']} {r['prompt']} {r['score']:.2f}" for r in results)


def _results(results: list[dict[str, Any]] | None) -> list[str]:
    if not results:
        return []
    rows = [[r["model"], r.get("prompt", ""), r.get("metric", ""), f"{r['score']:.2f}", _count(r.get("rows"))]
            for r in results]
    return ["Results:", *_table(["MODEL", "PROMPT", "METRIC", "SCORE", "ROWS"], rows), "  " + results_line(results)]


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


def render(obj: dict[str, Any]) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    teacher, student = spec.get("teacher") or {}, spec.get("student") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    phase = status.get("phase") or "Pending"
    if status.get("progressSummary"):
        phase += f" ({status['progressSummary']})"
    if observed is not None and generation is not None and observed < generation:
        phase += f" [operator has seen generation {observed} of {generation}]"

    if teacher.get("endpoint"):
        teacher_line = f"{teacher['endpoint'].get('model')} at {teacher['endpoint'].get('url')}"
    else:
        teacher_line = (f"{teacher.get('model')} on {teacher.get('gpus', 1)}x {teacher.get('gpuType', 'H100')}, "
                        f"tensor parallel {teacher.get('tensorParallelSize', 1)}")
        if teacher.get("replicas", 1) > 1:
            teacher_line += f", {teacher['replicas']} replicas"
    student_line = (f"{student.get('model')}, {student.get('method', 'lora')} on {student.get('nodes', 1)} node(s) "
                    f"x {student.get('gpusPerNode', 1)}x {student.get('gpuType', 'H100')}")
    header = [
        f"Distillation {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"  Phase:      {phase}",
        f"  Task:       {spec.get('task', '?')}",
        f"  Region:     {spec.get('region', '?')}",
        f"  Teacher:    {teacher_line}",
        f"  Student:    {student_line}",
    ]
    if status.get("gpuHours") is not None:
        header.append(f"  GPU-hours:  {_hours(status['gpuHours'])}")
    if status.get("studentEndpoint"):
        header.append(f"  Endpoint:   {status['studentEndpoint']}")
    if not status:
        header.append("  (no status yet: is the operator running?)")
    sections = [header, _stages(status), _progress(status.get("progress")), _results(status.get("results")),
                _conditions(status)]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def _default_namespace(credentials: Credentials, kubeconfig: Path | None) -> str:
    """Like kubectl: the pod's own namespace in-cluster, else the current context's, else 'default'."""
    if credentials.token_file and Path(credentials.token_file).parent == SA_DIR:
        return (SA_DIR / "namespace").read_text().strip()
    if kubeconfig is None:
        env = os.environ.get("KUBECONFIG")
        kubeconfig = Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"
    try:
        config = yaml.safe_load(kubeconfig.read_text()) or {}
    except OSError:
        return "default"
    context = next((c.get("context") or {} for c in config.get("contexts") or []
                    if c.get("name") == config.get("current-context")), {})
    return context.get("namespace") or "default"


async def _fetch(credentials: Credentials, name: str, namespace: str) -> dict[str, Any] | None:
    async with KubeClient(credentials, user_agent="distillery-status") as client:
        return await client.get("Distillation", name, namespace)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery status", description="Print a readable Distillation summary.")
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace, else 'default'")
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, then ~/.kube/config")
    args = parser.parse_args(argv)
    credentials = Credentials.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Credentials.from_environment()
    namespace = args.namespace or _default_namespace(credentials, args.kubeconfig)
    try:
        obj = asyncio.run(_fetch(credentials, args.name, namespace))
    except (ApiError, aiohttp.ClientError, OSError) as e:
        print(f"distillery status: {e}", file=sys.stderr)
        return 1
    if obj is None:
        print(f"distillery status: Distillation {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    print(render(obj), end="")
    return 0
