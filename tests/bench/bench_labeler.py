"""Labeler throughput against a teacher with fixed latency: vs the server's ceiling and vs distilabel.

    PYTHONPATH=operator ~/.cache/distillery/venv/bin/python tests/bench/bench_labeler.py

For each concurrency it measures, on the same NLI rows and the same teacher_server
(a separate process answering after --latency-ms):
  ceiling     a bare aiohttp load generator keeping `concurrency` requests in flight;
  labeler     `distillery label` (labeler.main) with teacher.concurrency = `concurrency`;
  distilabel  distilabel 1.5.3's TextGeneration with OpenAILLM, input_batch_size = `concurrency`,
              run by the separate venv at --distilabel-python on the first --distilabel-batches
              batches of the rows (its fixed start-up cost is measured once and shown apart).
Ceiling and labeler runs are interleaved --repeats times and the best of each is kept, since a
shared 2-core machine is noisy. Goals: labeler >= 90% of the ceiling and >= 1.5x distilabel.
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

import distillery
from distillery.api.pipeline import PipelineConfig
from distillery.api.spec import PromptSpec, Task
from distillery.workloads import labeler
from distillery.workloads.tasks import get_task

OPERATOR_DIR = str(Path(distillery.__file__).resolve().parents[1])
DISTILABEL_PYTHON = Path.home() / ".cache/distillery/venv-distilabel/bin/python"
SEP = "-" * 98

# Runs inside the distilabel venv: argv = base_url, rows.json, batch size, cache dir.
DISTILABEL_SCRIPT = r"""
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore")
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

url, rows_path, batch, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = json.load(open(rows_path))
with Pipeline(name="bench-labeler", cache_dir=cache) as pipeline:
    load = LoadDataFromDicts(data=rows, batch_size=batch)
    generate = TextGeneration(
        llm=OpenAILLM(model="teacher", base_url=url, api_key="unused",
                      generation_kwargs={"max_new_tokens": 1024, "temperature": 0.2}),
        input_batch_size=batch,
    )
    load >> generate
started = time.monotonic()
distiset = pipeline.run(use_cache=False)
wall = time.monotonic() - started
out = distiset["default"]["train"]
ok = sum(1 for g in out["generation"] if g)
print("RESULT " + json.dumps({"rows": len(out), "ok": ok, "wall": wall}))
"""


def make_rows(count: int) -> list[dict[str, Any]]:
    subjects = ["A man", "Two children", "A woman", "A chef", "An old dog", "A cyclist", "Three friends"]
    actions = ["plays a guitar", "builds a sandcastle", "reads a book", "slices vegetables", "sleeps",
               "climbs a hill", "shares a pizza"]
    return [{"premise": f"{subjects[i % 7]} {actions[(i // 7) % 7]} in scene {i}.",
             "hypothesis": f"Someone is busy in scene {i}.", "label": i % 3} for i in range(count)]


@contextlib.contextmanager
def teacher_process(latency_ms: float) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "distillery.devcluster.teacher_server", "--port", "0",
         "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": OPERATOR_DIR},
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"teacher_server did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(10)


async def load_generator(url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """Requests per second of a bare client keeping `concurrency` requests in flight."""
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(f"{url}/chat/completions", json=body) as response:
                    await response.json()
                    response.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.monotonic() - started)


def run_labeler(url: str, work: Path, rows_file: Path, concurrency: int, count: int, run: int) -> float:
    cfg = PipelineConfig.model_validate({
        "name": "bench", "namespace": "default", "task": "nli",
        "teacher": {"base_url": url, "model": "teacher", "concurrency": concurrency,
                    "request_timeout_seconds": 60},
        "dataset": {"train": {"uri": f"pvc://data/{rows_file.name}"}, "validation_fraction": 0},
        "student": {"model": "student"},
        "workspace": {"root": str(work / f"workspace-{concurrency}-{run}")},
    })
    config = work / f"pipeline-{concurrency}.json"
    config.write_text(cfg.to_json())
    stdout = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(stdout):
        code = labeler.main(["--config", str(config), "--pvc-base", str(work)])
    wall = time.monotonic() - started
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    if code != 0 or summary["rows_ok"] != count:
        raise RuntimeError(f"labeler failed ({code}): {summary}")
    return count / wall


def run_distilabel(python: Path, url: str, work: Path, prompts: list[str], concurrency: int) -> float:
    """Seconds distilabel's pipeline.run() takes for `prompts`."""
    rows_file = work / f"distilabel-rows-{concurrency}.json"
    rows_file.write_text(json.dumps([{"instruction": p} for p in prompts]))
    result = subprocess.run(
        [str(python), "-c", DISTILABEL_SCRIPT, url, str(rows_file), str(concurrency),
         str(work / f"distilabel-cache-{concurrency}")],
        capture_output=True, text=True, timeout=300,
        # Its default INFO level logs every HTTP request through rich, which would slow it down.
        env={**os.environ, "PYTHONWARNINGS": "ignore", "DISTILABEL_LOG_LEVEL": "WARNING"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"exit {result.returncode}: {(result.stderr or result.stdout)[-800:]}")
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    if outcome["ok"] != len(prompts):
        raise RuntimeError(f"distilabel generated {outcome['ok']} of {len(prompts)} rows")
    return outcome["wall"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--batches", type=int, default=50,
                        help="rows per run = batches x concurrency (distilabel's batch = concurrency)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="ceiling and labeler runs per concurrency, interleaved; the best counts")
    parser.add_argument("--distilabel-python", type=Path, default=DISTILABEL_PYTHON)
    parser.add_argument("--distilabel-concurrency", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--distilabel-batches", type=int, default=20,
                        help="distilabel gets the first batches x concurrency rows: it is slow")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    task = get_task(Task.NLI, PromptSpec(), {})
    distilabel_ok = args.distilabel_python.exists()
    if not distilabel_ok:
        print(f"distilabel: not run, no interpreter at {args.distilabel_python} "
              "(python3.11 -m venv ~/.cache/distillery/venv-distilabel && "
              "~/.cache/distillery/venv-distilabel/bin/pip install 'distilabel[openai]==1.5.3' requests)")
    results = []
    startup: float | None = None
    with tempfile.TemporaryDirectory(prefix="bench-labeler-") as tmp, teacher_process(args.latency_ms) as url:
        work = Path(tmp)
        (work / "data").mkdir()
        for concurrency in args.concurrency:
            count = args.batches * concurrency
            rows = make_rows(count)
            rows_file = work / "data" / f"rows-{concurrency}.jsonl"
            rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
            bodies = [{"model": "teacher", "messages": task.teacher_messages(r), "temperature": 0.2,
                       "top_p": 1.0, "max_tokens": 1024} for r in rows]
            ceiling = ours = 0.0
            for run in range(args.repeats):
                ceiling = max(ceiling, asyncio.run(load_generator(url, bodies, concurrency)))
                ours = max(ours, run_labeler(url, work, rows_file, concurrency, count, run))
            theirs: tuple[int, float] | str = "not run"
            if distilabel_ok and concurrency in args.distilabel_concurrency:
                try:
                    if startup is None:
                        # One batch of 8 rows: its fixed cost (processes, queues), shown separately.
                        startup = run_distilabel(args.distilabel_python, url, work, ["Say hi."] * 8, 8)
                    subset = rows[: args.distilabel_batches * concurrency]
                    prompts = [task.teacher_messages(r)[-1]["content"] for r in subset]
                    theirs = (len(prompts), run_distilabel(args.distilabel_python, url, work, prompts,
                                                           concurrency))
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    theirs = "failed"
                    print(f"distilabel failed at concurrency {concurrency}: {err}")
            results.append((concurrency, count, ceiling, ours, theirs))
            print(f"concurrency {concurrency}: {count} rows done", flush=True)

    ideal = 1000 / args.latency_ms
    print(SEP)
    print(f"teacher latency {args.latency_ms:g} ms: ideal rows/s = concurrency x {ideal:g}")
    if startup is not None:
        print(f"distilabel fixed cost (one 8-row batch): {startup:.1f} s; 'steady' leaves it out")
    print(f"distilabel runs on the first {args.distilabel_batches} batches of rows")
    print(f"{'concurrency':>11} {'rows':>6} {'ceiling':>8} {'labeler':>8} {'of ceiling':>10} "
          f"{'distilabel':>10} {'steady':>7} {'labeler/distilabel':>18} {'vs steady':>9}   (rows/s)")
    for concurrency, count, ceiling, ours, distilabel in results:
        theirs = steady = versus = versus_steady = distilabel if isinstance(distilabel, str) else "-"
        if isinstance(distilabel, tuple):
            done, wall = distilabel
            theirs, versus = f"{done / wall:.0f}", f"{ours * wall / done:.2f}x"
            if startup is not None and wall > startup:
                steady = f"{done / (wall - startup):.0f}"
                versus_steady = f"{ours * (wall - startup) / done:.2f}x"
        print(f"{concurrency:>11} {count:>6} {ceiling:>8.0f} {ours:>8.0f} {ours / ceiling:>10.0%} "
              f"{theirs:>10} {steady:>7} {versus:>18} {versus_steady:>9}")
    print(SEP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
