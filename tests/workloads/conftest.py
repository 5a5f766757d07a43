"""Fixtures for the labeling workload: real NLI rows, a pipeline config writer, a live teacher server, the
progress ConfigMap's patches."""

import threading
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

NLI_ROWS: list[dict[str, Any]] = [
    {"premise": "A man in a blue shirt is playing an acoustic guitar on a street corner.",
     "hypothesis": "A person is making music outdoors.", "label": 0},
    {"premise": "Two children are building a sandcastle on the beach.",
     "hypothesis": "The children are sitting in a classroom.", "label": 2},
    {"premise": "A woman is reading a book on a crowded train.",
     "hypothesis": "The woman is going to work.", "label": 1},
    {"premise": "A chef slices vegetables in a busy restaurant kitchen.",
     "hypothesis": "Someone is preparing food.", "label": 0},
    {"premise": "An old dog sleeps next to the fireplace.",
     "hypothesis": "The dog is running through a field.", "label": 2},
    {"premise": "A cyclist in a yellow jersey climbs a steep mountain road.",
     "hypothesis": "The cyclist is in a race.", "label": 1},
    {"premise": "Three friends share a pizza at a small table.",
     "hypothesis": "People are eating.", "label": 0},
    {"premise": "A girl in a red coat waits at a snowy bus stop.",
     "hypothesis": "It is a hot summer afternoon.", "label": 2},
    {"premise": "A man repairs the engine of an old truck.",
     "hypothesis": "The truck belongs to the man.", "label": 1},
    {"premise": "A crowd watches fireworks over the river.",
     "hypothesis": "People are looking at the sky.", "label": 0},
    {"premise": "A toddler is splashing in a puddle wearing rain boots.",
     "hypothesis": "The toddler is asleep in bed.", "label": 2},
    {"premise": "A violinist performs on a stage under bright lights.",
     "hypothesis": "The violinist is famous.", "label": 1},
]

ConfigWriter = Callable[..., Path]


class PublishedProgress:
    """Stands for the API server under LiveProgress: records each key and value it patches into the progress
    ConfigMap, in order."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def patch_namespaced_config_map(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        with self.changed:
            self.patches.extend(body["data"].items())
            self.changed.notify_all()

    def wait_for(self, found: Callable[[list[tuple[str, str]]], bool], timeout_s: float = 60) -> bool:
        """Whether the patches came to satisfy `found` (called from a thread: the labeler's runs on another)."""
        with self.changed:
            return self.changed.wait_for(lambda: found(self.patches), timeout_s)


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
