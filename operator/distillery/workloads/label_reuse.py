"""dataset.labelsFrom: the labels of another workspace, copied instead of asking the teacher once they match.

Finished labels carry a fingerprint file (`labels/fingerprint.json`: `labels_fingerprint` of the run that made
them). A run that reuses them copies them only when that fingerprint says they were made from the same task,
teacher, prompts and rows, and every row of this run has a label there made for that very row.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from distillery.api.modelref import pvc_parts
from distillery.api.pipeline import (
    FINGERPRINT_PARTS,
    LABELS_DIR,
    LABELS_FINGERPRINT_FILE,
    PipelineConfig,
    WorkspaceLayout,
)
from distillery.api.reports import LabelingReport
from distillery.workloads.datasets import ROW_ID, split_rows
from distillery.workloads.environment import pvc_base
from distillery.workloads.labels import read_labels
from distillery.workloads.progress import write_json_atomic


class LabelsMismatch(Exception):
    """The source's labels cannot stand for this run's; the message says why."""


def write_fingerprint(cfg: PipelineConfig, reused_from: str | None = None) -> None:
    """What a run that reuses these labels checks; every shard writes the same."""
    found: dict[str, Any] = {"fingerprint": cfg.labels_fingerprint}
    if reused_from is not None:
        found["reused_from"] = reused_from
    write_json_atomic(cfg.workspace.labels_fingerprint, found)


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def copy_labels(cfg: PipelineConfig, base_dir_for_pvc: str | None = None) -> LabelingReport:
    """Copy the labels (and generated inputs) of the workspace at cfg.labels_from into this one, with their
    fingerprint; the copied rows' counts (no teacher was asked: no tokens). Raises LabelsMismatch, before
    copying any label, when they differ."""
    uri = cfg.labels_from or ""
    claim, rel = pvc_parts(uri) or ("", "")
    source = WorkspaceLayout(root=str(Path(base_dir_for_pvc or pvc_base(), claim, rel)))
    if not source.labels_fingerprint.is_file():
        raise LabelsMismatch(f"{uri} has no {LABELS_DIR}/{LABELS_FINGERPRINT_FILE}; its labeling has not finished "
                             "(or the path is not a workspace)")
    recorded = json.loads(source.labels_fingerprint.read_text()).get("fingerprint") or {}
    differ = [part for part in FINGERPRINT_PARTS if recorded.get(part) != cfg.labels_fingerprint.get(part)]
    if differ:
        raise LabelsMismatch(f"the labels in {uri} were made with a different {', '.join(differ)}")
    mine = cfg.workspace
    if source.generated_train.is_file():
        mine.generated_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.generated_train, mine.generated_train)
    train, validation = split_rows(cfg, base_dir_for_pvc)
    counts = LabelingReport(rows_done=0, rows_ok=0, rows_rejected=0, rows_total=len(train) + len(validation),
                            tokens_in=0, tokens_out=0)
    for split, rows in (("train", train), ("validation", validation)):
        labelled = {r.row_id: r for r in read_labels(source.labels_dir, split)}
        for row in rows:
            record = labelled.get(row[ROW_ID])
            if record is None or _canonical(record.row) != _canonical(row):
                what = "has no label" if record is None else "differs from the labelled row"
                raise LabelsMismatch(f"rows: {split} row {row[ROW_ID]} {what} in {uri}")
            counts.rows_done += 1
            counts.rows_ok += record.status == "ok"
            counts.rows_rejected += record.status == "rejected"
    mine.labels_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.labels_dir.glob("*.jsonl")):
        temporary = mine.labels_dir / f".{path.name}.tmp"
        shutil.copyfile(path, temporary)
        os.replace(temporary, mine.labels_dir / path.name)
    write_fingerprint(cfg, reused_from=uri)
    return counts
