"""pydantic evaluates the spec's CEL rules themselves: the table in tests/validation_cases.py, which the API
server runs too (tests/cluster/test_validation.py), and how a rule's refusal reads."""

from typing import Any

import pytest
from pydantic import ConfigDict, ValidationError

from distillery.api.base import ApiModel, cel
from distillery.api.crd import spec_schema
from distillery.api.rules import PRESENCE, RULE_ERROR, VALUE, compile_rules, project, read_tree
from distillery.api.spec import DataSource, DistillationSpec, GenerateSpec
from tests.validation_cases import BASE, CASES, Case, pydantic_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pydantic_evaluates_the_rule_as_the_api_server_does(case: Case) -> None:
    if case.refused_at is None:
        DistillationSpec.model_validate(case.spec)
        return
    with pytest.raises(ValidationError) as refused:
        DistillationSpec.model_validate(case.spec)
    errors = [(pydantic_path(e["loc"]), e["msg"], e["type"]) for e in refused.value.errors()]
    assert errors == [(case.refused_at, case.rule, RULE_ERROR)], case.id


def _schema_rules(node: dict[str, Any]) -> list[str]:
    messages = [r["message"] for r in node.get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]
    for child in [*node.get("properties", {}).values(), *([node["items"]] if "items" in node else [])]:
        messages += _schema_rules(child)
    return messages


def test_every_rule_of_the_crd_has_a_refused_and_an_accepted_case() -> None:
    rules = set(_schema_rules(spec_schema()))
    assert len(rules) >= 25
    refused = {c.rule for c in CASES if c.refused_at is not None}
    accepted = {c.rule for c in CASES if c.refused_at is None}
    assert rules - refused == set(), "rules without a refused case"
    assert rules - accepted == set(), "rules without an accepted case"
    assert {c.rule for c in CASES} <= rules, "a case names a rule the CRD does not have"


def test_the_base_spec_of_the_table_is_valid() -> None:
    assert DistillationSpec.model_validate(BASE).teacher is not None


class _Pair(ApiModel):
    first: dict[str, int] | None = None
    second: int = 0
    model_config = ApiModel.model_config | ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.first.limit >= self.second", "second must not exceed first.limit", ".second"),
    ]})


def test_a_rule_that_cannot_be_evaluated_refuses_with_the_evaluation_error() -> None:
    """As the API server does: reading an absent member is an error, and an error is a refusal."""
    assert _Pair.model_validate({"first": {"limit": 2}, "second": 1}).second == 1
    with pytest.raises(ValidationError, match=r"second must not exceed first\.limit"):
        _Pair.model_validate({"first": {"limit": 2}, "second": 3})
    with pytest.raises(ValidationError) as refused:
        _Pair.model_validate({"second": 3})
    (error,) = refused.value.errors()
    assert error["loc"] == ("second",) and "evaluating rule: self.first.limit >= self.second" in error["msg"]


def test_a_transition_rule_in_a_model_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(ValueError, match="transition rule"):
        class _Fixed(ApiModel):
            value: int = 0
            model_config = ApiModel.model_config | ConfigDict(json_schema_extra={"x-kubernetes-validations": [
                cel("self == oldSelf", "value is immutable"),
            ]})


def test_rules_are_evaluated_on_what_they_read_only() -> None:
    """The spec's own rules never read spec.dataset, and a data source's read the presence of its rows only,
    so inline rows are never converted for the evaluator."""
    reads = DistillationSpec.__cel__.reads
    assert reads is not None and "dataset" not in reads
    assert reads["student"] == {"loss": {"type": VALUE}} and reads["teachers"] == VALUE
    assert reads["teacher"] == {"endpoint": {"logprobs": VALUE}}
    assert DataSource.__cel__.reads == {"uri": PRESENCE, "rows": PRESENCE}
    assert GenerateSpec.__cel__.reads == {"seeds": {"rows": VALUE}, "maxRequests": VALUE, "count": VALUE}
    assert project({"uri": "hf://a/b", "split": "train"}, {"uri": PRESENCE, "rows": PRESENCE}) == {"uri": True}


@pytest.mark.parametrize(("rule", "reads"), [
    ("self == 1", None),
    ("size(self) > 1", None),
    ("self.a.all(x, x.b) && has(self.c.d)", {"a": VALUE, "c": {"d": PRESENCE}}),
    ("has(self.c) && self.c.d.size() > 0", {"c": {"d": VALUE}}),
    ("has(self.c) || self.c", {"c": VALUE}),
    ("self.c.d || has(self.c.e) || self.c.d.f", {"c": {"d": VALUE, "e": PRESENCE}}),
])
def test_what_a_rule_reads(rule: str, reads: dict[str, Any] | None) -> None:
    assert read_tree(compile_rules("M", [cel(rule, "m")])) == reads
