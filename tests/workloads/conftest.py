"""Fixtures for the labeling workload: real NLI rows, a pipeline config writer, a live teacher server, the
progress ConfigMap's patches."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from distillery.api.pipeline import POD_NAMESPACE_ENV, PROGRESS_CONFIGMAP_ENV, PipelineConfig
from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.teacher_server import TaskAwareResponder, TeacherServer, lookup_from_rows
from distillery.workloads import progress
from distillery.workloads.tasks import TaskDefinition, get_task
from tests.workloads import tinymodel as tm
from tests.workloads.nli import NLI_ROWS
from tests.workloads.published import PublishedProgress

ConfigWriter = Callable[..., Path]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> PublishedProgress:
    """The progress ConfigMap as a stage pod sees it: what LiveProgress patches is recorded."""
    api = PublishedProgress()
    monkeypatch.setenv(PROGRESS_CONFIGMAP_ENV, "test-progress")
    monkeypatch.setenv(POD_NAMESPACE_ENV, "default")
    monkeypatch.setattr(progress, "_core_api", lambda: api)
    return api


@pytest.fixture
def nli_rows() -> list[dict[str, Any]]:
    return [dict(row) for row in NLI_ROWS]


@pytest.fixture
def nli_task() -> TaskDefinition:
    return get_task(Task.NLI, PromptSpec(), {})


@pytest_asyncio.fixture(loop_scope="function")
async def teacher(nli_task: TaskDefinition) -> AsyncIterator[TeacherServer]:
    """A live teacher answering the NLI rows with their gold labels (on the test's own loop)."""
    server = TeacherServer(TaskAwareResponder(lookup_from_rows(nli_task, NLI_ROWS)))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Writes a pipeline.json for the NLI rows (or `rows`) against `url`; teacher fields override."""

    def write(url: str, *, rows: list[dict[str, Any]] | None = None, shards: int = 1,
              prompt: dict[str, Any] | None = None, **teacher: Any) -> Path:
        cfg = PipelineConfig.model_validate({
            "name": "test", "namespace": "default", "task": "nli",
            "prompt": prompt or {},
            "teacher": {"base_url": url, "model": "teacher", "concurrency": 4, "max_attempts": 3,
                        "request_timeout_seconds": 5, "min_success_ratio": 0.5, **teacher},
            "dataset": {"train": {"rows": NLI_ROWS if rows is None else rows}, "validation_fraction": 0.25},
            "student": {"model": "student"},
            "workspace": {"root": str(tmp_path / "workspace")},
            "label_shards": shards,
        })
        path = tmp_path / "pipeline.json"
        path.write_text(cfg.to_json())
        return path

    return write


# Tiny-model fixtures shared by the trainer and evaluator tests.

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return tm.trained_workspace(tmp_path_factory.getbasetemp(), model_dir)
