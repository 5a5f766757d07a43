"""Shared pydantic configuration for the Kubernetes-facing models.

Field names are snake_case in Python and camelCase on the wire, as every
Kubernetes API is; the CRD schema is generated from these models, so the
docstrings and `Field(description=...)` texts are what `kubectl explain` shows.
A model's cross-field rules are CEL (`cel()` in its `x-kubernetes-validations`),
evaluated by the API server and, through `api/rules.py`, by pydantic.
"""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from distillery.api.rules import RuleSet


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    __cel__: ClassVar[RuleSet] = RuleSet((), {}, frozenset(), {})
    """The model's CEL rules (its `x-kubernetes-validations`), compiled."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        extra = cls.model_config.get("json_schema_extra")
        entries = extra.get("x-kubernetes-validations", []) if isinstance(extra, dict) else []
        if not isinstance(entries, list):
            raise TypeError(f"{cls.__name__}: x-kubernetes-validations must be a list")
        cls.__cel__ = RuleSet.of(cls, [e for e in entries if isinstance(e, dict)])

    @model_validator(mode="after")
    def _check_cel_rules(self) -> "ApiModel":
        if self.__cel__.rules:
            errors = self.__cel__.refusals(self)
            if errors:
                raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry
