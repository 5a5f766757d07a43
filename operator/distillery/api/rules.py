"""CEL validation rules, written once and enforced twice.

A model's rules live in its `x-kubernetes-validations` (built with `base.cel()`): the CRD carries them to the API
server, which refuses a wrong manifest at `kubectl apply` naming the field, and `ApiModel` evaluates the same
rules when pydantic validates (the operator's parse of every Distillation, the pods' pipeline.json), refusing
with the same message at the same field path. The rules are evaluated on the model's wire form, defaults
applied, which is what the API server evaluates them on (it defaults before it validates).

Two kinds of rule stay the API server's alone, and are kept out of the models: transition rules (`oldSelf`:
pydantic sees one object, never its previous version; `crd.spec_schema` adds the immutability rules) and rules
on `metadata` (the models hold the spec and status only; `crd.NAME_RULES`).

The evaluator is `common-expression-language` (cel-rust): it supports what our rules use (has(), size(),
all/exists/exists_one, `in`, the ternary, string functions) with the same results as the API server's cel-go
on them (tests/validation_cases.py runs every rule both ways), and it evaluates a rule in microseconds, where
the pure-Python cel-python takes about a millisecond; the operator validates every spec on every pass.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    import cel as cel_lang

RULE_ERROR = "cel_rule"
"""The pydantic error type of a refused rule."""

_FIELD_PATH = re.compile(r"^(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Rule:
    """One compiled `x-kubernetes-validations` entry of a model."""

    rule: str
    message: str
    loc: tuple[str, ...]
    """The entry's fieldPath as a pydantic location (wire names), relative to the model; () when unset."""

    @cached_property
    def program(self) -> "cel_lang.Program":
        """Compiled on first use: importing the evaluator takes about half a second (its package loads its own
        CLI's libraries), which a process that never validates a spec (`distillery status`) does not pay."""
        import cel as cel_lang

        return cel_lang.compile(self.rule)


def compile_rules(model: str, entries: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    """The model's entries, checked when its class is created."""
    rules = []
    for entry in entries:
        rule, path = str(entry["rule"]), entry.get("fieldPath")
        if re.search(r"\boldSelf\b", rule):
            raise ValueError(f"{model}: transition rule {rule!r} is the API server's alone; add it in api/crd.py")
        if path is not None and not _FIELD_PATH.match(path):
            raise ValueError(f"{model}: fieldPath {path!r} must be a dotted path such as .a.b")
        if "messageExpression" in entry:
            raise ValueError(f"{model}: messageExpression is not evaluated in Python; use message")
        loc = tuple(path.split(".")[1:]) if path else ()
        rules.append(Rule(rule, str(entry["message"]), loc))
    return tuple(rules)


VALUE = "value"
PRESENCE = "presence"
ReadTree: TypeAlias = dict[str, "str | ReadTree"]
"""What of `self` rules read: a member's VALUE, its PRESENCE only (has()), or some of its members (a subtree)."""

_CHAIN = re.compile(r"\bself((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_tree(rules: Iterable[Rule]) -> ReadTree | None:
    """The members of `self` the rules read, or None when one reads `self` as a whole.

    Converting a value for the evaluator costs microseconds per string, so the rules get only what they read:
    a rule on a spec's teachers never converts its dataset, and `has(self.rows)` needs the rows' presence, not
    2,000 rows. The source is scanned for `self.a.b` chains (the last name of `self.a.all(...)` is a macro, and
    the chain ends there); a chain read only as `has(self.a.b)` needs presence only. A superset is harmless
    (a chain inside a string literal is merely converted too)."""
    tree: ReadTree = {}
    for rule in rules:
        for match in _CHAIN.finditer(rule.rule):
            names = _IDENT.findall(match.group(1))
            rest = rule.rule[match.end():].lstrip()
            if names and rest.startswith("("):
                names.pop()
            if not names:
                return None
            presence = (re.search(r"\bhas\(\s*$", rule.rule[:match.start()]) is not None
                        and rest.startswith(")"))
            _insert(tree, names, PRESENCE if presence else VALUE)
    return tree


def _insert(tree: ReadTree, names: list[str], kind: str) -> None:
    head, *rest = names
    current = tree.get(head)
    if current == VALUE:
        return
    if not rest:
        tree[head] = kind if current is None or kind == VALUE else current
        return
    if not isinstance(current, dict):
        current = tree[head] = {}
    _insert(current, rest, kind)


def project(wire: dict[str, Any], tree: ReadTree) -> dict[str, Any]:
    """`wire` cut to what the rules read; a member read for its presence only is present, as `True`."""
    out: dict[str, Any] = {}
    for key, node in tree.items():
        if key not in wire:
            continue
        value = wire[key]
        if node == PRESENCE:
            out[key] = True
        elif isinstance(node, dict) and isinstance(value, dict):
            out[key] = project(value, node)
        else:
            out[key] = value
    return out


def refusals(rules: Iterable[Rule], wire: dict[str, Any]) -> list[InitErrorDetails]:
    """One pydantic error per rule that does not hold for `self` = `wire`.

    A rule that cannot be evaluated (it reads a member that is absent) refuses, as the API server does, with
    the evaluation's error."""
    import cel as cel_lang

    context = cel_lang.Context({"self": wire})
    errors: list[InitErrorDetails] = []
    for rule in rules:
        try:
            holds = rule.program.execute(context) is True
            message = rule.message
        except Exception as e:  # the evaluator's errors: KeyError, TypeError, RuntimeError, ZeroDivisionError
            holds, message = False, f"{type(e).__name__}: {e} evaluating rule: {rule.rule}"
        if not holds:
            errors.append(InitErrorDetails(
                type=PydanticCustomError(RULE_ERROR, "{message}", {"message": message, "rule": rule.rule}),
                loc=rule.loc, input=_at(wire, rule.loc)))
    return errors


@dataclass(frozen=True)
class RuleSet:
    """A model's compiled rules and what of the model they read, made once with its class."""

    rules: tuple[Rule, ...]
    reads: ReadTree | None
    dumped: frozenset[str] | None
    """The Python names of the fields whose values the rules read (None: every field)."""
    present: dict[str, str]
    """Wire name to Python name of the fields whose presence only they read: not serialised, since a field is
    present on the wire exactly when it is not None."""

    @classmethod
    def of(cls, model: type[BaseModel], entries: Iterable[Mapping[str, Any]]) -> "RuleSet":
        rules = compile_rules(model.__name__, entries)
        reads = read_tree(rules)
        by_wire = {field.alias or name: name for name, field in model.model_fields.items()}
        if reads is None:
            return cls(rules, None, None, {})
        present = {m: by_wire[m] for m, node in reads.items() if node == PRESENCE and m in by_wire}
        dumped = frozenset(by_wire[m] for m in reads if m in by_wire and m not in present)
        return cls(rules, reads, dumped, present)

    def refusals(self, instance: BaseModel) -> list[InitErrorDetails]:
        """The rules evaluated on the instance's wire form (defaults applied, as the API server has it)."""
        wire = instance.model_dump(by_alias=True, exclude_none=True, mode="json",
                                   include=None if self.dumped is None else set(self.dumped))
        if self.reads is not None:
            wire = project(wire, self.reads)
            wire |= {m: True for m, name in self.present.items() if getattr(instance, name) is not None}
        return refusals(self.rules, wire)


def _at(wire: dict[str, Any], loc: tuple[str, ...]) -> Any:
    node: Any = wire
    for key in loc:
        if not isinstance(node, dict) or key not in node:
            return wire
        node = node[key]
    return node
