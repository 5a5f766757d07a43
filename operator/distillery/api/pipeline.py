"""The resolved pipeline configuration: the contract between the operator and the workloads.

The operator renders it from the spec into the `<name>-pipeline` ConfigMap (key
`pipeline.json`), mounted at `/etc/distillery/pipeline.json` in every stage pod.
The workloads read only this file and their environment, never the Distillation.
"""

import json
from pathlib import Path

from pydantic import Field

from distillery.api.base import ApiModel
from distillery.api.spec import (
    SINGLE_TEACHER_NAME,
    DatasetSpec,
    EvaluationSpec,
    PromptSpec,
    Sampling,
    StrategyMode,
    StudentSpec,
    Task,
)

CONFIG_MOUNT_DIR = "/etc/distillery"
CONFIG_FILE = "pipeline.json"
WORKSPACE_DIR = "/workspace"
# The environment a stage pod gets from its manifest (or from the local kubelet, which runs pods here).
TEACHER_API_KEY_ENV = "TEACHER_API_KEY"
PROGRESS_CONFIGMAP_ENV = "DISTILLERY_PROGRESS_CONFIGMAP"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
WORKSPACE_ENV = "DISTILLERY_WORKSPACE"
"""Overrides the workspace root (the local kubelet mounts volumes as directories)."""
PVC_BASE_ENV = "DISTILLERY_PVC_BASE"
"""Overrides where pod programs find `pvc://` claims (see `api.modelref`)."""
JOB_COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
TERMINATION_MESSAGE_ENV = "TERMINATION_MESSAGE_PATH"
JUDGE_API_KEY_ENV = "JUDGE_API_KEY"
"""A judge endpoint's bearer token: teacherStrategy.judge in the labeling pod, evaluation.judge in the
evaluation pod."""


def teacher_api_key_env(name: str) -> str:
    """The environment variable with the bearer token of the endpoint teacher `name` in spec.teachers."""
    return f"{TEACHER_API_KEY_ENV}_{name.upper().replace('-', '_')}"


LABELS_DIR = "labels"
LABELS_FINGERPRINT_FILE = "fingerprint.json"
"""Written beside finished labels: `labels_fingerprint` of the run that made them, and how many rows."""
GENERATED_DIR = "generated"
GENERATED_TRAIN_FILE = "train.jsonl"
GENERATED_LOG_FILE = "log.jsonl"
"""One line per generation request (kept or rejected, with the reason): what a restarted pod resumes from."""
FINGERPRINT_PARTS = ("task", "teacher", "prompt", "rows")
"""What reused labels must agree on (`spec.dataset.labelsFrom`)."""


class TeacherClientConfig(ApiModel):
    """How the labeler and evaluator reach the teacher."""

    base_url: str
    """OpenAI-compatible base URL including /v1."""
    model: str
    sampling: Sampling = Field(default_factory=Sampling)
    concurrency: int = 16
    request_timeout_seconds: float = 300
    max_attempts: int = 4
    min_success_ratio: float = 0.9
    outage_budget_seconds: float = 1800
    """How long the labeler waits out an unreachable teacher before leaving its rows for a rerun."""
    name: str | None = None
    """The teacher's name in spec.teachers (several teachers only)."""
    api_key_env: str | None = None
    """The environment variable holding this teacher's bearer token; unset: TEACHER_API_KEY."""


class JudgeClientConfig(ApiModel):
    """How the evaluator reaches the judge (evaluation.judge resolved to a URL and model name)."""

    base_url: str
    """OpenAI-compatible base URL including /v1."""
    model: str
    api_key_env: str = JUDGE_API_KEY_ENV
    """The environment variable holding its bearer token, if it has one."""
    max_attempts: int = 3
    concurrency: int = 8
    request_timeout_seconds: float = 300


class WorkspaceLayout(ApiModel):
    """Paths inside the workspace volume; every stage reads and writes only here."""

    root: str = WORKSPACE_DIR

    def path(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    @property
    def labels_dir(self) -> Path:
        return self.path(LABELS_DIR)

    @property
    def train_dir(self) -> Path:
        return self.path("train")

    @property
    def checkpoints_dir(self) -> Path:
        return self.path("train", "checkpoints")

    @property
    def adapter_dir(self) -> Path:
        return self.path("train", "adapter")

    @property
    def merged_dir(self) -> Path:
        return self.path("train", "merged")

    @property
    def eval_dir(self) -> Path:
        return self.path("eval")

    @property
    def generated_dir(self) -> Path:
        return self.path(GENERATED_DIR)

    @property
    def generated_train(self) -> Path:
        """The generated inputs as a dataset file (the user's columns, one JSON object a line)."""
        return self.path(GENERATED_DIR, GENERATED_TRAIN_FILE)

    @property
    def labels_fingerprint(self) -> Path:
        return self.path(LABELS_DIR, LABELS_FINGERPRINT_FILE)


class PipelineConfig(ApiModel):
    name: str
    namespace: str
    task: Task
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    teacher: TeacherClientConfig
    dataset: DatasetSpec
    student: StudentSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    workspace: WorkspaceLayout = Field(default_factory=WorkspaceLayout)
    judge: JudgeClientConfig | None = None
    """evaluation.judge resolved; None without a judge."""
    teachers: list[TeacherClientConfig] | None = None
    """spec.teachers in order, each asked for every row; `teacher` is then the first of them."""
    teacher_strategy: StrategyMode | None = None
    """How the teachers' replies combine (with `teachers`)."""
    strategy_judge: TeacherClientConfig | None = None
    """The judge of teacherStrategy.mode judge (the labeler's, not evaluation.judge)."""
    label_shards: int = Field(1, ge=1)
    """Completions of the labeling Indexed Job; pod i labels rows where row_index % shards == i."""
    seed: int = 1234
    labels_fingerprint: dict[str, str] = Field(default_factory=dict)
    """A digest per FINGERPRINT_PARTS of what the labels depend on; the labeler writes it beside finished
    labels, and a run that reuses them compares its own with it."""
    labels_from: str | None = None
    """pvc://claim/path of a workspace whose labels (and generated inputs) the labeling stage copies instead
    of asking the teacher, after checking their fingerprint and rows."""

    def teacher_list(self) -> list[TeacherClientConfig]:
        """Every teacher the labeler asks, each with a name: `teachers`, or `teacher` as a list of one (no
        teacher_strategy then: its reply is the label). pipeline.json keeps both fields as they are."""
        if self.teachers is not None:
            return list(self.teachers)
        return [self.teacher.model_copy(update={"name": self.teacher.name or SINGLE_TEACHER_NAME})]

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        return cls.model_validate_json(Path(path).read_text())
