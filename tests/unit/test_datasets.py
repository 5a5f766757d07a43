"""Loading rows from every source kind, and the train/validation split every stage agrees on."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from distillery.api.pipeline import PipelineConfig
from distillery.api.spec import DataSource
from distillery.workloads import datasets
from distillery.workloads.datasets import DatasetError, load_rows, split_rows

ROWS = [{"text": f"row {i}", "label": i % 3} for i in range(20)]


def pvc(tmp_path: Path, rel: str) -> list[dict[str, Any]]:
    return load_rows(DataSource(uri=f"pvc://data/{rel}"), "train", str(tmp_path))


def test_inline_rows_are_copied() -> None:
    source = DataSource(rows=[{"text": "a"}])
    rows = load_rows(source, "train")
    rows[0]["text"] = "changed"
    assert source.rows == [{"text": "a"}]


def test_pvc_files_of_each_kind(tmp_path: Path) -> None:
    volume = tmp_path / "data"
    volume.mkdir()
    (volume / "rows.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (volume / "rows.json").write_text(json.dumps([{"text": "c"}]))
    (volume / "wrapped.json").write_text(json.dumps({"data": [{"text": "d"}]}))
    (volume / "rows.csv").write_text("text,label\ne,1\n\"f, quoted\",2\n")
    assert pvc(tmp_path, "rows.jsonl") == [{"text": "a"}, {"text": "b"}]
    assert pvc(tmp_path, "rows.json") == [{"text": "c"}]
    assert pvc(tmp_path, "wrapped.json") == [{"text": "d"}]
    assert pvc(tmp_path, "rows.csv") == [{"text": "e", "label": "1"}, {"text": "f, quoted", "label": "2"}]


def test_json_lines_may_hold_unicode_line_separators_inside_their_strings(tmp_path: Path) -> None:
    volume = tmp_path / "data"
    volume.mkdir()
    rows = [{"text": "one\u2028two"}, {"text": "three\x85four\x1cfive"}, {"text": "six"}]
    # json.dumps escapes them; another writer need not, and JSON allows them raw.
    (volume / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows))
    assert pvc(tmp_path, "rows.jsonl") == rows


def test_a_pvc_directory_reads_its_files_in_order(tmp_path: Path) -> None:
    shards = tmp_path / "data" / "train"
    (shards / "part-2").mkdir(parents=True)
    (shards / "part-1.jsonl").write_text('{"n": 1}\n')
    (shards / "part-2" / "rows.csv").write_text("n\n2\n")
    (shards / "README.md").write_text("ignored")
    assert pvc(tmp_path, "train") == [{"n": 1}, {"n": "2"}]


@pytest.mark.parametrize(("files", "rel", "message"), [
    ({}, "missing.jsonl", "does not exist (is the claim 'data' mounted"),
    ({"bad.jsonl": '{"ok": 1}\n{"broken": \n'}, "bad.jsonl", "bad.jsonl:2: invalid JSON line"),
    ({"list.json": '[1, 2]'}, "list.json", "row 0 is a int, not an object"),
    ({"rows.parquet": "x"}, "rows.parquet", "unsupported file type"),
    ({"empty/x.txt": ""}, "empty", "has no .jsonl, .json, .csv files"),
    ({}, "../../etc/passwd", "path escapes the volume"),
])
def test_pvc_errors_name_the_problem(tmp_path: Path, files: dict[str, str], rel: str, message: str) -> None:
    for name, text in files.items():
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        pvc(tmp_path, rel)


def test_hf_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match="needs the 'datasets' package"):
        load_rows(DataSource(uri="hf://nyu-mll/glue/mnli"), "train")


def test_hf_passes_name_config_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        return [{"premise": "p", "hypothesis": "h", "label": 0}]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    assert load_rows(DataSource(uri="hf://nyu-mll/glue/mnli", split="validation_matched"), "validation")
    assert load_rows(DataSource(uri="hf://openai/gsm8k"), "train")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched"), ("openai/gsm8k", None, "train")]
    with pytest.raises(DatasetError, match="expected hf://org/name"):
        load_rows(DataSource(uri="hf://gsm8k"), "train")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_s3_without_s3fs() -> None:
    with pytest.raises(DatasetError, match="s3fs"):
        load_rows(DataSource(uri="s3://bucket/rows.jsonl"), "train")


def test_object_store_reading_through_fsspec() -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/train/a.jsonl", b'{"n": 1}\n')
    fs.pipe("/bucket/train/b.json", b'[{"n": 2}]')
    # The s3:// path is fsspec's generic one; the in-memory filesystem exercises it without a network.
    assert datasets._load_s3("memory://bucket/train") == [{"n": 1}, {"n": 2}]
    assert datasets._load_s3("memory://bucket/train/b.json") == [{"n": 2}]
    with pytest.raises(DatasetError, match="does not exist"):
        datasets._load_s3("memory://bucket/nothing")


def config(**dataset: Any) -> PipelineConfig:
    evaluation = dataset.pop("evaluation", {})
    seed = dataset.pop("seed", 1234)
    return PipelineConfig.model_validate({
        "name": "t", "namespace": "default", "task": "nli", "seed": seed, "evaluation": evaluation,
        "teacher": {"base_url": "http://teacher/v1", "model": "m"},
        "dataset": {"train": {"rows": ROWS}, **dataset}, "student": {"model": "s"},
    })


def test_hold_out_is_deterministic_and_numbered() -> None:
    train, validation = split_rows(config(validation_fraction=0.25))
    assert (len(train), len(validation)) == (15, 5)
    assert [r["row_id"] for r in train] == list(range(15))
    assert [r["row_id"] for r in validation] == list(range(5))
    texts = {r["text"] for r in train}
    assert not texts & {r["text"] for r in validation} and len(texts | {r["text"] for r in validation}) == 20
    assert split_rows(config(validation_fraction=0.25)) == (train, validation)
    assert split_rows(config(validation_fraction=0.25, seed=7))[1] != validation
    # Held-out rows keep their file order.
    numbers = [int(r["text"].removeprefix("row ")) for r in validation]
    assert numbers == sorted(numbers)


def test_limit_applies_before_the_hold_out_and_max_rows_caps_validation() -> None:
    train, validation = split_rows(config(limit=10, validation_fraction=0.2))
    assert (len(train), len(validation)) == (8, 2)
    assert {r["text"] for r in train + validation} == {f"row {i}" for i in range(10)}
    train, validation = split_rows(config(validation_fraction=0.5, evaluation={"max_rows": 3}))
    assert (len(train), len(validation)) == (10, 3)


def test_explicit_validation_and_tiny_runs() -> None:
    train, validation = split_rows(config(validation={"rows": [{"text": "v"}]}, limit=4))
    assert [r["row_id"] for r in train] == [0, 1, 2, 3]
    assert validation == [{"text": "v", "row_id": 0}]
    tiny = config(limit=3, validation_fraction=0.1)
    assert [len(part) for part in split_rows(tiny)] == [2, 1]
    assert [len(part) for part in split_rows(config(validation_fraction=0))] == [20, 0]
