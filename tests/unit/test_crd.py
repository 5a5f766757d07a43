"""The committed CRD is exactly what the pydantic models generate, and it is a structural schema."""

from pathlib import Path

import yaml

from distillery.api.crd import CRD_FILE, crd, render

REPO = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / CRD_FILE).read_text()
    assert committed == render(), "crds/ drifted from operator/distillery/api: run `distillery crd`"


def _walk(schema: dict, path: str = "") -> list[str]:
    problems = []
    for key in ("anyOf", "oneOf", "allOf", "$ref", "title"):
        if key in schema:
            problems.append(f"{path}: {key}")
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for name, sub in (schema.get("properties") or {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _walk(schema["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_and_documented() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["task", "region", "dataset", "student"]
    assert "description" in spec["properties"]["region"]
    assert spec["properties"]["student"]["properties"]["lora"]["properties"]["rank"]["description"]


def test_everything_but_suspend_and_serving_is_immutable() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    immutable = {name for name, prop in spec.items()
                 if any(r["rule"] == "self == oldSelf" for r in prop.get("x-kubernetes-validations", []))}
    assert immutable == set(spec) - {"suspend", "serving"}


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_printer_columns() -> None:
    columns = [c["name"] for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Phase", "Task", "Region", "Progress", "Ready", "Age"]
    assert yaml.safe_load(render())["spec"]["names"]["shortNames"] == ["dist"]
