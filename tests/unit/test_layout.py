"""The one-way layout, checked on every import in the package (lazy ones inside functions too).

api at the bottom; resources and workloads beside each other on api; controller on resources; devcluster
and the CLI on top, and nothing in the product imports devcluster. No module imports itself back.
Tests share helpers through helper modules, never by importing another test module or a conftest.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "distillery"
TESTS = Path(__file__).resolve().parents[1]
# layer -> the layers it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "api": {"api"},
    "resources": {"api", "resources"},
    "workloads": {"api", "workloads"},
    "controller": {"api", "resources", "controller"},
    "devcluster": {"api", "resources", "workloads", "controller", "devcluster", "cli"},
    "cli": {"api", "resources", "workloads", "controller", "cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every distillery module this file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("distillery")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distillery"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                # `from distillery.resources import jobs` imports a module; `from x.y import name` a name.
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                found.add(candidate if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_module_is_in_a_layer() -> None:
    strays = sorted(m for m in graph() if m != "distillery" and layer(m) not in ALLOWED)
    assert not strays, f"modules outside api/resources/workloads/controller/devcluster/cli: {strays}"


def test_imports_follow_the_one_way_layout() -> None:
    broken = [f"{m} imports {target}" for m, targets in graph().items() for target in sorted(targets)
              if layer(m) in ALLOWED and layer(target) not in ALLOWED[layer(m)]]
    assert not broken, "\n".join(broken)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if target in on_path:
                cycles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target], on_path | {target}, done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [start], {start}, done)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an upward import in a file is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from distillery.controller.kube import KubeClient\n")
    assert "distillery.controller.kube" in imports(bad)
    assert "controller" not in ALLOWED["workloads"]


WORKLOAD_PROGRAMS = {f"distillery.workloads.{name}" for name in
                     ("labeler", "generator", "trainer", "evaluator", "serve", "launch")}
"""What `distillery <command>` runs in a stage pod; what they share lives in library modules."""


def test_no_workload_imports_a_program() -> None:
    broken = [f"{m} imports {target}" for m, targets in graph().items() if layer(m) == "workloads"
              for target in sorted(targets & WORKLOAD_PROGRAMS) if target != m]
    assert not broken, "\n".join(broken)


def imported_from_tests(path: Path) -> set[str]:
    """The modules under tests/ this file imports (`from tests.workloads import tinymodel` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                 [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
                 if isinstance(node, ast.ImportFrom) and node.module else [])
        found |= {n for n in names if n.split(".")[0] == "tests"
                  and (TESTS.parent / Path(*n.split("."))).with_suffix(".py").exists()}
    return found


def is_test_module(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return leaf.startswith("test_") or leaf == "conftest"


def test_no_test_module_imports_another() -> None:
    """pytest collects test modules and conftests itself; importing one runs it a second way, and a helper kept in
    one is hidden from the modules that need it."""
    broken = [f"{path.relative_to(TESTS.parent)} imports {module}" for path in sorted(TESTS.rglob("*.py"))
              for module in sorted(imported_from_tests(path)) if is_test_module(module)]
    assert not broken, "\n".join(broken)


def test_the_rule_catches_a_test_module_import(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text("from tests.unit.test_planner import World\nfrom tests.workloads import conftest\n")
    assert {m for m in imported_from_tests(bad) if is_test_module(m)} == {
        "tests.unit.test_planner", "tests.workloads.conftest"}
