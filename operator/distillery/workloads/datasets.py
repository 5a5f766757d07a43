"""Dataset rows for the workloads: inline, pvc://claim/path, hf://org/name[/config], s3://bucket/key.

`split_rows` is the single place that decides which rows are train and which are
validation, and numbers them: every stage calls it on the same config and gets
the same rows with the same `row_id`, which is what labels and resume key on.
"""

import csv
import io
import json
import random
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from distillery.api.modelref import pvc_parts
from distillery.api.pipeline import PipelineConfig
from distillery.api.spec import DataSource
from distillery.workloads.environment import pvc_base, workspace_layout

SUFFIXES = (".jsonl", ".json", ".csv")
ROW_ID = "row_id"

Row = dict[str, Any]


class DatasetError(ValueError):
    """A data source that cannot be read; the message names the source."""


def parse_records(name: str, data: bytes) -> list[Row]:
    """Rows of one file, by its suffix: JSON Lines, a JSON list (or {"data": [...]}), or CSV with a header."""
    text = data.decode("utf-8-sig")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".jsonl":
        rows = []
        # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+0085 and other separators that
        # JSON strings may hold unescaped (text scraped from the web does), and would cut such a record in two.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{name}:{number}: invalid JSON line: {err.msg}") from None
    elif suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{name}: invalid JSON: {err.msg} at line {err.lineno}") from None
        # Hugging Face exports and many hand-made files wrap the list in an object.
        found = value.get("data", value.get("rows")) if isinstance(value, dict) else value
        if not isinstance(found, list):
            raise DatasetError(f"{name}: expected a JSON list of objects (or {{\"data\": [...]}})")
        rows = found
    elif suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise DatasetError(f"{name}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DatasetError(f"{name}: row {bad} is a {type(rows[bad]).__name__}, not an object")
    return rows


def _read_files(files: Iterable[tuple[str, bytes]]) -> list[Row]:
    rows: list[Row] = []
    for name, data in files:
        rows.extend(parse_records(name, data))
    return rows


def _load_pvc(uri: str, base_dir: str) -> list[Row]:
    claim, rel = pvc_parts(uri) or ("", "")
    root = Path(base_dir, claim)
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"{uri}: path escapes the volume")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DatasetError(f"{uri}: directory {path} has no {', '.join(SUFFIXES)} files")
    elif path.is_file():
        files = [path]
    else:
        raise DatasetError(f"{uri}: {path} does not exist (is the claim {claim!r} mounted at {root}?)")
    return _read_files((str(p), p.read_bytes()) for p in files)


def _load_hf(uri: str, split: str) -> list[Row]:
    try:
        import datasets  # imported here: only hf:// needs it, and it is heavy
    except ImportError:
        raise DatasetError(f"{uri}: reading hf:// datasets needs the 'datasets' package, which is not "
                           "installed in this image") from None
    parts = uri.removeprefix("hf://").strip("/").split("/")
    if len(parts) not in (2, 3):
        raise DatasetError(f"{uri}: expected hf://org/name or hf://org/name/config")
    config = parts[2] if len(parts) == 3 else None
    try:
        dataset = datasets.load_dataset("/".join(parts[:2]), config, split=split)
    except Exception as err:  # the library raises many unrelated types for "not found" and "offline"
        raise DatasetError(f"{uri} (split {split!r}): {err}") from err
    return [dict(row) for row in dataset]


def _load_s3(uri: str) -> list[Row]:
    try:
        import fsspec  # imported here: only s3:// needs it
    except ImportError:
        raise DatasetError(f"{uri}: reading s3:// needs the 'fsspec' and 's3fs' packages, which are not "
                           "installed in this image") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError:
        raise DatasetError(f"{uri}: reading s3:// needs the 's3fs' package, which is not installed "
                           "in this image") from None
    if fs.isdir(path):
        names = sorted(p for p in fs.find(path) if PurePosixPath(p).suffix.lower() in SUFFIXES)
        if not names:
            raise DatasetError(f"{uri}: no {', '.join(SUFFIXES)} files under it")
    elif fs.isfile(path):
        names = [path]
    else:
        raise DatasetError(f"{uri} does not exist")
    return _read_files((name, fs.cat_file(name)) for name in names)


def load_rows(source: DataSource, split: str, base_dir_for_pvc: str | None = None) -> list[Row]:
    """The rows of a source, in file order. `split` names the hf:// split unless source.split does."""
    if source.rows is not None:
        return [dict(row) for row in source.rows]
    uri = source.uri or ""
    scheme = uri.partition("://")[0]
    if scheme == "pvc":
        return _load_pvc(uri, base_dir_for_pvc or pvc_base())
    if scheme == "hf":
        return _load_hf(uri, source.split or split)
    if scheme == "s3":
        return _load_s3(uri)
    raise DatasetError(f"unsupported data source {uri!r}")


def _numbered(rows: list[Row]) -> list[Row]:
    return [{**row, ROW_ID: i} for i, row in enumerate(rows)]


def generated_rows(cfg: PipelineConfig) -> list[Row]:
    """The inputs the generation stage wrote (dataset.generate), after the user's training rows."""
    path = workspace_layout(cfg).generated_train
    if not path.is_file():
        raise DatasetError(f"{path}: the generated inputs are missing; the generation stage writes them before "
                           "labeling")
    return parse_records(str(path), path.read_bytes())


def split_rows(cfg: PipelineConfig, base_dir_for_pvc: str | None = None) -> tuple[list[Row], list[Row]]:
    """(train, validation), each row carrying its `row_id`: its index in that split.

    Generated inputs (dataset.generate) follow the user's training rows. dataset.limit caps the training
    source before any hold-out, so a small run over a large
    dataset labels at most `limit` rows; evaluation.maxRows caps validation, since rows the
    evaluator will not read are not worth a teacher call.
    """
    spec = cfg.dataset
    train = load_rows(spec.train, "train", base_dir_for_pvc) if spec.train else []
    if spec.limit is not None:
        train = train[: spec.limit]
    if spec.generate is not None:
        train += generated_rows(cfg)
    if spec.validation is not None:
        validation = load_rows(spec.validation, "validation", base_dir_for_pvc)
    else:
        held = round(len(train) * spec.validation_fraction)
        if spec.validation_fraction > 0 and len(train) > 1:
            held = max(held, 1)  # a tiny run still gets a row to evaluate on
        picked = set(random.Random(cfg.seed).sample(range(len(train)), held))
        validation = [row for i, row in enumerate(train) if i in picked]
        train = [row for i, row in enumerate(train) if i not in picked]
    if cfg.evaluation.max_rows is not None:
        validation = validation[: cfg.evaluation.max_rows]
    return _numbered(train), _numbered(validation)
