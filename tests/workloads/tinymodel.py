"""Helpers for the workload tests: a tiny model, NLI rows, teacher label files and a pipeline config.

Everything is made here, offline and deterministic; nothing is downloaded.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distillery.api.pipeline import PipelineConfig, TeacherClientConfig, WorkspaceLayout
from distillery.api.spec import DatasetSpec, DataSource, EvaluationSpec, StudentSpec, Task
from distillery.devcluster.tiny import save_tiny_model
from distillery.devcluster.tiny import synthetic_nli_rows as nli_rows
from distillery.workloads.finetune_data import FinetuneSet, load_finetune_set
from distillery.workloads.models import load_tokenizer
from distillery.workloads.tasks import get_task
from distillery.workloads.trainer import DataPlan, token_budget

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"
PYTHON = sys.executable
SERVING_AT = re.compile(r"^serving .* on (http://\S+)$", re.MULTILINE)
"""The line `distillery serve` prints once it listens, with its URL."""


_models: dict[tuple[Any, ...], Path] = {}


def tiny_model(root: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny model directory, built once per test session for each size."""
    key = (hidden, layers, seed)
    if key not in _models:
        _models[key] = save_tiny_model(root / f"tiny-{hidden}-{layers}-{seed}", hidden=hidden, layers=layers,
                                       seed=seed)
    return _models[key]


def label_record(split: str, row_id: int, row: dict[str, Any], answer: str | None) -> dict[str, Any]:
    """One line of a labels file, as the labeler writes it; `answer` None is a rejected row."""
    numbered = {**row, "row_id": row_id}
    if answer is None:
        return {"split": split, "row_id": row_id, "row": numbered, "answer": "", "rationale": "",
                "raw": "I cannot tell.", "attempts": 4, "tokens_in": 50, "tokens_out": 5,
                "status": "rejected", "reason": "no 'Answer:' line"}
    rationale = f"The hypothesis is about {row['hypothesis'].split(' ', 2)[-1].rstrip('.')}."
    return {"split": split, "row_id": row_id, "row": numbered, "answer": answer, "rationale": rationale,
            "raw": f"{rationale}\nAnswer: {answer}", "attempts": 1, "tokens_in": 50, "tokens_out": 20,
            "status": "ok"}


def write_labels(workspace: Path, split: str, rows: Sequence[dict[str, Any]], answers: Sequence[str | None],
                 shards: int = 2) -> None:
    """`<workspace>/labels/<split>-shard-<NNNNN>.jsonl`, rows dealt to shards by row_id % shards."""
    labels = workspace / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        lines = [json.dumps(label_record(split, i, row, answers[i]))
                 for i, row in enumerate(rows) if i % shards == shard]
        (labels / f"{split}-shard-{shard:05d}.jsonl").write_text("".join(f"{line}\n" for line in lines))


def pipeline_config(workspace: Path, model: str | Path, train_rows: list[dict[str, Any]],
                    validation_rows: list[dict[str, Any]], baselines: Sequence[str] = ("teacher", "base-student"),
                    **student: Any) -> PipelineConfig:
    return PipelineConfig(
        name="tiny", namespace="default", task=Task.NLI,
        teacher=TeacherClientConfig(base_url="http://127.0.0.1:9/v1", model="teacher"),
        dataset=DatasetSpec(train=DataSource(rows=train_rows), validation=DataSource(rows=validation_rows)),
        student=StudentSpec(model=str(model), **student),
        evaluation=EvaluationSpec(baselines=list(baselines)),
        workspace=WorkspaceLayout(root=str(workspace)),
        seed=7,
    )


def write_config(path: Path, cfg: PipelineConfig) -> Path:
    path.write_text(cfg.to_json())
    return path



def subprocess_env(termination_log: Path) -> dict[str, str]:
    """The environment for a `python -m distillery.cli` child: this checkout first on the path, no
    distributed variables inherited from a parent run, the termination message in a test file."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(OPERATOR_DIR), env.get("PYTHONPATH")) if p)
    env["DS_ACCELERATOR"] = "cpu"
    env["TERMINATION_MESSAGE_PATH"] = str(termination_log)
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a process's output lines (libraries print other lines too)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


# 23 accepted train rows packed into micro-batches of at most 4 x 128 tokens (the CPU default budget); a
# checkpoint every 10 steps.
TRAIN_ROWS, VALIDATION_ROWS = 24, 8
STUDENT = {
    "epochs": 8, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_steps": 10, "max_seq_length": 128,
    "zero_stage": 2, "merge_weights": True,
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
}


def training_plan(config_path: Path, world_size: int = 1, rank: int = 0) -> tuple[DataPlan, FinetuneSet]:
    """The data plan a CPU training run of this config follows, and its examples, built as the trainer does."""
    cfg = PipelineConfig.load(str(config_path))
    student = cfg.student
    task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
    data = load_finetune_set(cfg.workspace.labels_dir, task, load_tokenizer(student.model), student.max_seq_length,
                             student.include_rationale)
    plan = DataPlan(tuple(len(e.input_ids) for e in data.examples), token_budget(student, None),
                    student.gradient_accumulation_steps, world_size, rank, cfg.seed)
    return plan, data


def labeled_workspace(workspace: Path, model: str | Path, **student: Any) -> Path:
    """A workspace with teacher labels (one train row rejected; on validation one wrong answer and
    one rejected row) and its pipeline.json; returns the config path."""
    train, validation = nli_rows(TRAIN_ROWS), nli_rows(VALIDATION_ROWS, offset=100)
    write_labels(workspace, "train", train, [row["label"] for row in train[:-1]] + [None])
    answers: list[str | None] = [row["label"] for row in validation]
    answers[1] = "entailment" if answers[1] != "entailment" else "neutral"
    answers[2] = None
    write_labels(workspace, "validation", validation, answers)
    cfg = pipeline_config(workspace, model, train, validation, **{**STUDENT, **student})
    return write_config(workspace / "pipeline.json", cfg)


def distillery(args: Sequence[str], termination_log: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m distillery.cli ARGS` to completion, output captured."""
    return subprocess.run([PYTHON, "-m", "distillery.cli", *args], capture_output=True, text=True,
                          env=subprocess_env(termination_log), timeout=timeout, check=False)


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """GET (no body) or POST a JSON body to a server under test; (status, JSON reply), error replies included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextmanager
def serving(args: Sequence[str], root: Path) -> Iterator[str]:
    """`distillery serve ARGS` on a port of its own choosing (port 0; a line of its output names the URL),
    yielding that URL once /health answers; a server that exits first fails the test with its log. Stopped on the way
    out."""
    log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log", dir=root)[1])
    with open(log, "w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "distillery.cli", "serve", *args, "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(log.with_suffix(".termination-log")))
    try:
        url = None
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            if url is None:
                found = SERVING_AT.search(log.read_text(errors="replace"))
                url = found.group(1) if found else None
            if url is not None:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:  # not healthy yet (urllib's HTTPError is an OSError)
                    pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_trained: dict[Path, Path] = {}


def trained_workspace(root: Path, model_dir: Path) -> Path:
    """A workspace after one uninterrupted training run (ZeRO-2, LoRA, merged weights), made once
    per session: the trainer, evaluator and serve tests share it."""
    if root not in _trained:
        workspace = root / "trained"
        config = labeled_workspace(workspace, model_dir)
        result = distillery(["train", "--config", str(config)], workspace / "termination-log")
        assert result.returncode == 0, result.stderr[-4000:]
        (workspace / "train.stdout").write_text(result.stdout)
        _trained[root] = workspace
    return _trained[root]
