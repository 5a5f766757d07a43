"""The CRD, generated from the pydantic models (the single source of the API).

`distillery crd` writes crds/distillery.dev_distillations.yaml; a test fails when
the committed file differs from what the models generate.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from distillery.api.base import cel
from distillery.api.spec import MUTABLE_SPEC_FIELDS, DistillationSpec
from distillery.api.status import DistillationStatus

GROUP = "distillery.dev"
VERSION = "v1alpha1"
KIND = "Distillation"
PLURAL = "distillations"
SINGULAR = "distillation"
SHORT_NAMES = ["dist"]
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = Path("crds") / f"{GROUP}_{PLURAL}.yaml"

_DROP_KEYS = {"title", "$defs", "additionalProperties"}

MAX_NAME_LENGTH = 53
"""Children take the name plus a suffix, and the tightest fit is a training pod's hostname,
`<name>-train-<index>` with up to 128 nodes (index 127): a DNS label of at most 63 characters. The teacher,
student and training Services are DNS-1035 labels too, so a name must start with a letter and has no dots."""
NAME_RULES = [
    cel(f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters: the operator names children "
        f"<name>-<suffix>, and a training pod's hostname <name>-train-<index> must fit in 63",
        None, "FieldValueInvalid"),
    cel("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' "
        "(no dots): the operator's Services are named after it", None, "FieldValueInvalid"),
]


def _models_by_name(model: type[BaseModel],
                    seen: dict[str, type[BaseModel]] | None = None) -> dict[str, type[BaseModel]]:
    seen = {} if seen is None else seen
    seen[model.__name__] = model
    for field in model.model_fields.values():
        for arg in _flatten_types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in seen:
                _models_by_name(arg, seen)
    return seen


def _flatten_types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out = [annotation]
    for a in args:
        out += _flatten_types(a)
    return out


def _field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Defaults keyed by wire name, including default factories (pydantic leaves those out of the schema)."""
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if field.default_factory is not None:
            value = field.get_default(call_default_factory=True, validated_data={})
            # An object default of {} lets the API server apply the nested defaults itself.
            defaults[alias] = {} if isinstance(value, BaseModel) else _jsonable(value)
        elif field.default is not None and not field.is_required():
            defaults[alias] = _jsonable(field.default)
    return defaults


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "value"):
        return value.value
    return value


class _Structural:
    """Turns pydantic's JSON schema into a Kubernetes structural schema (inlined, no anyOf/null, no titles)."""

    def __init__(self, root: type[BaseModel]) -> None:
        self.schema = root.model_json_schema(by_alias=True, mode="validation")
        self.defs = self.schema.get("$defs", {})
        self.models = _models_by_name(root)
        self.root = root

    def convert(self) -> dict[str, Any]:
        return self._node(self.schema, self.root.__name__)

    def _node(self, node: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            resolved = self._node(self.defs[name], name)
            extra = {k: v for k, v in node.items() if k != "$ref" and k not in _DROP_KEYS}
            return {**resolved, **extra}
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"unsupported union in schema: {node}")
            merged = {**self._node(options[0]), **{k: v for k, v in node.items() if k not in ("anyOf", *_DROP_KEYS)}}
            if merged.get("default", 0) is None:
                del merged["default"]
            return merged
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP_KEYS or key in ("properties", "items", "required"):
                continue
            if key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "default" and value is None:
                continue
            else:
                out[key] = value
        node_type = node.get("type")
        if node_type == "object" or "properties" in node:
            out["type"] = "object"
            if "properties" in node:
                defaults = _field_defaults(self.models[model_name]) if model_name in self.models else {}
                props = {}
                for prop, sub in node["properties"].items():
                    converted = self._node(sub)
                    if prop in defaults and "default" not in converted:
                        converted["default"] = defaults[prop]
                    props[prop] = converted
                out["properties"] = props
                if node.get("required"):
                    out["required"] = list(node["required"])
            else:
                additional = node.get("additionalProperties")
                if isinstance(additional, dict) and additional:
                    out["additionalProperties"] = self._node(additional)
                else:
                    out["x-kubernetes-preserve-unknown-fields"] = True
        if node_type == "array":
            out["items"] = self._node(node.get("items", {}))
        if not out.get("type") and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out


def spec_schema() -> dict[str, Any]:
    schema = _Structural(DistillationSpec).convert()
    for name, prop in schema["properties"].items():
        if name not in MUTABLE_SPEC_FIELDS:
            prop.setdefault("x-kubernetes-validations", []).append(
                cel("self == oldSelf", f"spec.{name} is immutable; only spec.suspend and spec.serving may change")
            )
    return schema


def status_schema() -> dict[str, Any]:
    schema = _Structural(DistillationStatus).convert()
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
    {"name": "Region", "type": "string", "jsonPath": ".spec.region"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressSummary"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "distillery"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Distillation runs LLM knowledge distillation end to end: a teacher "
                            "labels a dataset, a student is fine-tuned on the labels, evaluated against the "
                            "teacher and its base model, and served.",
                            "required": ["spec"],
                            "x-kubernetes-validations": NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    return "# Generated by `distillery crd` from operator/distillery/api; do not edit.\n" + yaml.safe_dump(
        crd(), sort_keys=False, width=120
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillery crd")
    parser.add_argument("--output", "-o", default=str(CRD_FILE), help="file to write, or - for stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0
