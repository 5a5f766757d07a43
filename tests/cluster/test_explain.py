"""What users see from the command line: `kubectl explain` shows the pydantic models' docs (the CRD
is generated from them), and `distillery status` reads a live Distillation."""

import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from distillery.api.spec import DistillationSpec
from distillery.cli.status import main as status_main
from tests.cluster.distillations import distillation
from tests.cluster.kube import Kube

pytestmark = pytest.mark.cluster


def _flat(text: str) -> str:
    return " ".join(text.split())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through Optional and list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _described(model: type[BaseModel], wire_name: str) -> tuple[str, type[BaseModel] | None]:
    """(description, nested model) of a field as the CRD generator sees it."""
    field = next(f for name, f in model.model_fields.items() if (f.alias or name) == wire_name)
    nested = _model_in(field.annotation)
    description = field.description or (nested.model_json_schema().get("description") if nested else None)
    return description or "", nested


@pytest.mark.parametrize("path", [
    "spec.teacher",
    "spec.teacher.endpoint.apiKeySecretRef",
    "spec.student.lora",
    "spec.student.lora.rank",
    "spec.student.zeroStage",
    "spec.dataset.train",
    "spec.scheduling.tolerations",
])
def test_kubectl_explain_shows_the_models_descriptions(kube: Kube, crd: None, path: str) -> None:
    out = kube.run("explain", f"distillation.{path}").stdout
    flat = _flat(out)
    model: type[BaseModel] | None = DistillationSpec
    description = ""
    for part in path.split(".")[1:]:
        assert model is not None, f"{path}: {part} is below a scalar"
        description, model = _described(model, part)
    assert f"FIELD: {path.rsplit('.', 1)[-1]} <" in out
    if description:
        assert _flat(description) in flat, f"{path}: {description!r} not in\n{out}"
    if model is None:
        return
    # An object: every field of its model is listed with its own description.
    for name, field in model.model_fields.items():
        wire = field.alias or name
        assert f"  {wire}\t<" in out, f"{path}: field {wire} missing from\n{out}"
        child, _ = _described(model, wire)
        if child:
            assert _flat(child) in flat, f"{path}.{wire}: {child!r} not shown"


def test_status_command_reads_a_live_distillation(kube: Kube, namespace: str, crd: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    kube.apply(distillation("shown", region="northpole"), namespace=namespace)
    argv = ["shown", "-n", namespace, "--kubeconfig", str(kube.kubeconfig)]
    assert status_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Distillation {namespace}/shown\n")
    assert "Task:       nli" in out and "Region:     northpole" in out
    assert status_main(["missing", "-n", namespace, "--kubeconfig", str(kube.kubeconfig)]) == 1
    assert "not found" in capsys.readouterr().err
