"""The Argo CD health check, run the way Argo CD runs it: Lua 5.1 (Argo CD embeds gopher-lua, a
5.1 implementation), only the safe standard libraries, the live object as the global `obj`, and
the script's returned table read as {status, message}. Cases come from health_test.yaml, which
is also what Argo CD's own test harness reads."""

from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

REPO = Path(__file__).resolve().parents[2]
CHECK_DIR = REPO / "argocd" / "resource_customizations" / "distillery.dev" / "Distillation"
CASES = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(lua: lua51.LuaRuntime, value: Any) -> Any:
    """JSON-shaped Python -> Lua tables, lists 1-based, as Argo CD converts the unstructured object."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def health(obj: dict[str, Any]) -> dict[str, Any]:
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    # Argo CD opens base, table, string and math only; a script relying on os or io would break there.
    lua.execute("os = nil; io = nil; require = nil; dofile = nil; loadfile = nil; package = nil; debug = nil")
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute((CHECK_DIR / "health.lua").read_text())
    return {key: result[key] for key in ("status", "message") if result[key] is not None}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_matches_health_test_yaml(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_testdata_file_is_a_case_and_every_status_is_argo_cds() -> None:
    listed = {c["inputPath"] for c in CASES}
    on_disk = {f"testdata/{p.name}" for p in (CHECK_DIR / "testdata").glob("*.yaml")}
    assert listed == on_disk
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert {c["healthStatus"]["status"] for c in CASES} <= ARGO_HEALTH


def test_succeeded_but_student_not_serving_is_progressing() -> None:
    obj = yaml.safe_load((CHECK_DIR / "testdata" / "healthy.yaml").read_text())
    for c in obj["status"]["conditions"]:
        if c["type"] == "Ready":
            c.update(status="False", reason="StudentNotServing", message="0/1 replicas available")
    assert health(obj) == {"status": "Progressing", "message": "StudentNotServing: 0/1 replicas available"}


def test_docs_snippet_is_the_same_script() -> None:
    doc = (REPO / "docs" / "argocd.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    argocd_cm = yaml.safe_load(block)
    assert argocd_cm["metadata"]["name"] == "argocd-cm"
    assert argocd_cm["data"]["resource.customizations.health.distillery.dev_Distillation"] == (
        CHECK_DIR / "health.lua").read_text()


def test_sample_applications_order_operator_before_distillations() -> None:
    apps = {a["metadata"]["name"]: a for a in yaml.safe_load_all(
        (REPO / "examples" / "argocd" / "application.yaml").read_text())}
    operator, runs = apps["distillery-operator"], apps["distillations"]
    waves = [int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for a in (operator, runs)]
    assert waves[0] < waves[1]
    assert operator["spec"]["source"]["path"] == "charts/distillery"
    assert (REPO / operator["spec"]["source"]["path"] / "Chart.yaml").exists()
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    run_options = set(runs["spec"]["syncPolicy"]["syncOptions"])
    assert {"ServerSideApply=true", "SkipDryRunOnMissingResource=true"} <= run_options
    assert (REPO / runs["spec"]["source"]["path"] / runs["spec"]["source"]["directory"]["include"]).exists()
