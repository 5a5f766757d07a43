"""The `Distillation` spec: what a user asks for.

Everything the API server can check is expressed here as schema constraints or
CEL rules (see `x-kubernetes-validations`), so a wrong manifest is rejected by
`kubectl apply` itself with a message naming the field. pydantic checks the same
constraints and evaluates the same CEL rules (api/rules.py): each rule is written once.
"""

from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from distillery.api.base import ApiModel, cel

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
"""vLLM 0.33 reads what transformers 5 writes (`rope_parameters`, `TokenizersBackend`); images/vllm/serving.lock
pins the transformers it resolves, and tests/workloads/test_serving_contract.py loads the trainer's output with it."""
DEFAULT_LABELER_IMAGE = "ghcr.io/distillery-dev/labeler:0.1.0"
DEFAULT_TRAINER_IMAGE = "ghcr.io/distillery-dev/trainer:0.1.0"

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
DEFAULT_MAX_SEQ_LENGTH = 1024

GpuType = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")]


class Task(StrEnum):
    SUMMARIZATION = "summarization"
    CONVERSATION = "conversation"
    MATH = "math"
    NLI = "nli"
    MULTIPLE_CHOICE = "multiple-choice"
    CUSTOM = "custom"


OPEN_ENDED_TASKS = frozenset({Task.CONVERSATION, Task.SUMMARIZATION})
"""Tasks whose outputs a judge scores (they have a judge prompt) and that may carry a persona."""


class Persona(ApiModel):
    """A character the student is distilled into: the teacher labels in it, the student is trained with it
    as its system message and served with it as the default system message."""

    name: str = Field(min_length=1, max_length=128)
    """What the assistant calls itself, e.g. Ada."""
    traits: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=16)
    """Character traits, e.g. ["curious", "patient with beginners"]."""
    tone: str | None = Field(None, min_length=1, max_length=256)
    """How it speaks, e.g. "warm and concise"."""


class PromptSpec(ApiModel):
    """How the teacher is prompted (elaborate) and how the student is trained and served (short)."""

    chain_of_thought: bool = True
    """Ask the teacher to reason step by step before answering."""
    chain_of_density: bool = False
    """Summarization only: ask the teacher for iteratively denser summaries and keep the last one."""
    density_rounds: int = Field(3, ge=1, le=8)
    """Chain-of-density rounds (summarization with chainOfDensity only)."""
    max_summary_words: int = Field(80, ge=5, le=2000)
    """Summaries longer than this many words are rejected and retried."""
    system_template: str | None = Field(None, max_length=8192)
    """System prompt for the teacher (custom task; overrides the built-in prompt for other tasks)."""
    user_template: str | None = Field(None, max_length=16384)
    """Teacher user prompt, Python str.format style over the dataset columns, e.g. 'Classify: {text}'."""
    student_template: str | None = Field(None, max_length=16384)
    """Short prompt the student is trained and served with (custom task); defaults to userTemplate."""
    answer_pattern: str | None = Field(None, max_length=512)
    """Custom task: a regular expression whose first group extracts the answer from the teacher's output."""
    self_consistency: int = Field(1, ge=1, le=16)
    """Sample the teacher this many times per row and keep the majority answer."""
    persona: Persona | None = None
    """A system persona for open-ended tasks (conversation, summarization): the teacher labels in character,
    the student is trained and served with it; evaluation.judge scores how well replies keep to it."""


class SecretKeyRef(ApiModel):
    """A key in a Secret of the Distillation's namespace."""

    name: Name
    """Name of a Secret in the Distillation's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """Key inside the Secret."""


class Sampling(ApiModel):
    """Sampling parameters for every teacher request (OpenAI chat completions semantics)."""

    temperature: float = Field(0.2, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1, le=131072)
    """Upper bound on generated tokens per answer, reasoning included."""
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=4)


class TeacherEndpoint(ApiModel):
    """An existing OpenAI-compatible endpoint used as the teacher instead of serving one."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$", max_length=2048)
    """Base URL of the API, up to and including /v1."""
    model: str = Field(min_length=1, max_length=256)
    """Model name to send in each request."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the bearer token."""
    logprobs: bool = True
    """Whether the endpoint returns log-probabilities (`logprobs`, `top_logprobs`); false refuses
    student.loss kd, which needs them."""


class ServerSecurityContext(ApiModel):
    """Who the vLLM server process runs as. The upstream vLLM image runs as root, so by default its pods pass
    Pod Security "baseline" but not "restricted"; to be admitted under "restricted", run it as a non-root user
    (runAsNonRoot, runAsUser) with an image, or a model cache volume, that such a user can write to."""

    run_as_non_root: bool | None = None
    run_as_user: int | None = Field(None, ge=0, le=2147483647)
    run_as_group: int | None = Field(None, ge=0, le=2147483647)
    fs_group: int | None = Field(None, ge=0, le=2147483647)
    """Group that owns the pod's volumes (the student server reads the workspace written by uid/gid 65532)."""


class TeacherSpec(ApiModel):
    """The teacher: a model served in-cluster (`model`) or an existing endpoint (`endpoint`)."""

    model: str | None = Field(None, min_length=1, max_length=512)
    """Model id or URI to serve with vLLM, e.g. meta-llama/Llama-3.3-70B-Instruct or pvc://models/llama."""
    image: str | None = Field(None, min_length=1, max_length=512)
    """Serving image (the upstream vLLM OpenAI-compatible server); default: the operator's vllmImage."""
    security_context: ServerSecurityContext | None = None
    """Overrides the operator's servingPodSecurityContext for the teacher pods (see ServerSecurityContext)."""
    gpu_type: GpuType = "H100"
    """GPU type from the operator's GPU catalogue (H100, A100, L4, ...)."""
    gpus: int = Field(1, ge=1, le=16)
    """GPUs per teacher replica."""
    tensor_parallel_size: int = Field(1, ge=1, le=16)
    """vLLM tensor parallelism; teacher.gpus must be a multiple of it."""
    replicas: int = Field(1, ge=1, le=16)
    """Teacher replicas; the labeling Job runs one shard per replica."""
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(default_factory=list, max_length=64)
    """Extra arguments for the vLLM server."""
    hub_token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a model-hub token for the teacher only (HF_TOKEN); spec.hubTokenSecretRef reaches
    every pod and is used when this is unset."""
    startup_seconds: int = Field(1800, ge=60, le=86400)
    """How long a teacher replica may take from container start to a healthy server (download, load,
    compile); the Deployment's progress deadline allows this plus time to place the pod and pull the image."""
    outage_budget_seconds: int = Field(1800, ge=0, le=86400)
    """How long labeling waits for an unreachable teacher (a restart, a rollout) before giving up on it."""
    endpoint: TeacherEndpoint | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    concurrency: int = Field(16, ge=1, le=1024)
    """Requests in flight to the teacher per labeling pod."""
    request_timeout_seconds: int = Field(300, ge=1, le=3600)
    """Per-request timeout; a timed-out request is retried."""
    max_attempts: int = Field(4, ge=1, le=20)
    """Attempts per row (transport errors and malformed answers) before the row is rejected."""
    min_success_ratio: float = Field(0.9, ge=0, le=1)
    """Labeling fails when fewer rows than this share get a valid answer."""
    keep_after_labeling: bool = False
    """Keep the teacher running after labeling (it serves as a baseline during evaluation)."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.model) != has(self.endpoint)",
                    "exactly one of teacher.model and teacher.endpoint must be set"),
                cel("self.gpus % self.tensorParallelSize == 0",
                    "teacher.gpus must be a multiple of teacher.tensorParallelSize", ".gpus"),
            ]
        }
    )


TeacherName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$")]
"""A DNS-1035 label: it becomes a pod label value and names the teacher in status and in the labels files."""
SINGLE_TEACHER_NAME = "teacher"
"""spec.teacher's name in DistillationSpec.teacher_list() and PipelineConfig.teacher_list(); never written to the
API server (only several teachers' names are)."""
CHECKABLE_TASKS = ("math", "nli", "multiple-choice")
"""Tasks whose answers compare as equal or not, so teachers can vote on them."""


class NamedTeacherSpec(TeacherSpec):
    """One of several teachers (spec.teachers): a teacher with a name, served in-cluster (its own Deployment,
    Service and GPUs) or an existing endpoint."""

    name: TeacherName
    """Unique among spec.teachers; shown in status and recorded with each teacher's answers."""


class StrategyMode(StrEnum):
    VOTE = "vote"
    JUDGE = "judge"
    ALL = "all"


class StrategyJudgeSpec(ApiModel):
    """The model that picks the best of the teachers' replies (teacherStrategy.mode judge)."""

    teacher: TeacherName | None = None
    """The name of one of spec.teachers."""
    endpoint: TeacherEndpoint | None = None
    """An existing OpenAI-compatible endpoint."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.teacher) != has(self.endpoint)",
                    "exactly one of teacherStrategy.judge.teacher and teacherStrategy.judge.endpoint must be set"),
            ]
        }
    )


class TeacherStrategy(ApiModel):
    """How the replies of several teachers become one label per row.

    vote: the answer most teachers gave wins and its rationale comes from the first teacher (in spec.teachers
    order) that gave it; a tie for the most votes rejects the row. Only for tasks with a checkable answer
    (math, nli, multiple-choice). judge: the judge reads every valid reply and picks the best (open-ended
    tasks). all: every valid reply becomes a training example."""

    mode: StrategyMode
    judge: StrategyJudgeSpec | None = None
    """Required with mode judge, refused otherwise."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("(self.mode == 'judge') == has(self.judge)",
                    "teacherStrategy.judge is required with mode judge and only valid with it", ".judge"),
            ]
        }
    )


class DataSource(ApiModel):
    """Rows from a URI (hf://, s3://, pvc://claim/path) or inline (small runs)."""

    uri: str | None = Field(None, pattern=r"^(hf|s3|pvc)://[^\s]+$", max_length=2048)
    rows: list[dict[str, Any]] | None = Field(None, max_length=2000)
    split: str | None = Field(None, max_length=64)
    """Split name for hf:// sources (default: train or validation)."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.uri) != has(self.rows)", "exactly one of uri and rows must be set"),
            ]
        }
    )


MAX_SEED_ROWS = 100
GENERATE_MAX_COUNT = 100_000
LABELS_FROM_PATTERN = r"^([a-z]([-a-z0-9]*[a-z0-9])?|pvc://[^\s/]+(/[^\s]*)?)$"


class GenerateSpec(ApiModel):
    """New task inputs written by the teacher from a handful of seed rows, then labelled like any other row."""

    seeds: DataSource
    """A handful of example rows in the dataset's columns (inline rows or a file): the teacher is shown some of
    them per request and writes a new input with the same input columns."""
    count: int = Field(ge=1, le=GENERATE_MAX_COUNT)
    """How many new inputs to keep, after malformed ones and near-duplicates are dropped."""
    hint: str | None = Field(None, max_length=4096)
    """What the new inputs should cover or look like, added to every generation prompt."""
    seeds_per_prompt: int = Field(3, ge=1, le=16)
    """Seed rows shown as examples in each generation request."""
    temperature: float = Field(1.0, ge=0, le=2)
    """Sampling temperature for generation (labeling keeps teacher.sampling); high enough to vary the inputs."""
    similarity_threshold: float = Field(0.7, gt=0, lt=1)
    """Estimated Jaccard similarity (character 5-grams) at or above which an input counts as a near-duplicate
    of a seed, a dataset row or an input kept before it, and is dropped."""
    max_requests: int | None = Field(None, ge=1, le=4 * GENERATE_MAX_COUNT)
    """Give up after this many generation requests (default: 4 x count); generation fails when fewer than
    count inputs were kept by then."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(f"!has(self.seeds.rows) || (size(self.seeds.rows) >= 1 && size(self.seeds.rows) <= "
                    f"{MAX_SEED_ROWS})", f"dataset.generate.seeds.rows must hold 1 to {MAX_SEED_ROWS} rows",
                    ".seeds.rows"),
                cel("!has(self.maxRequests) || self.maxRequests >= self.count",
                    "dataset.generate.maxRequests must be at least dataset.generate.count", ".maxRequests"),
            ]
        }
    )


class DatasetSpec(ApiModel):
    train: DataSource | None = None
    """The training rows. May be left out when dataset.generate writes them."""
    validation: DataSource | None = None
    """Held-out rows for evaluation; without it, validationFraction of train is held out."""
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    columns: dict[str, Annotated[str, Field(max_length=128)]] = Field(default_factory=dict, max_length=16)
    """Map from the task's field names (text, question, premise, hypothesis, choices, answer, messages,
    reference, summary, label) to the dataset's column names."""
    limit: int | None = Field(None, ge=1, le=100_000_000)
    """Use at most this many training rows."""
    generate: GenerateSpec | None = None
    """Have the teacher write new training inputs from seed rows (added to dataset.train's rows, if any); the
    generated set is kept at pvc://<name>-workspace/generated/train.jsonl. Without dataset.train or
    dataset.validation, validationFraction of the generated inputs is held out and scored against the
    teacher's answers."""
    labels_from: str | None = Field(None, max_length=2048, pattern=LABELS_FROM_PATTERN)
    """Reuse the accepted labels of another Distillation in this namespace (its name), or of a workspace
    copied to a claim (pvc://claim/path, the directory holding labels/): no teacher is started. Refused,
    with the parts that differ, unless the task, teacher, prompts and rows are the same as those labels'."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.train) || has(self.generate)",
                    "dataset.train is required unless dataset.generate is set", ".train"),
            ]
        }
    )


class LoraSpec(ApiModel):
    """LoRA adapter shape (method lora)."""

    rank: int = Field(16, ge=1, le=1024)
    """Rank r of the low-rank update; vLLM serves adapters up to rank 512."""
    alpha: int = Field(32, ge=1, le=4096)
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input during training."""
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=32
    )
    """Module names that get adapters (Llama/Qwen attention projections by default)."""


class TrainingMethod(StrEnum):
    LORA = "lora"
    FULL = "full"


class LossType(StrEnum):
    SFT = "sft"
    KD = "kd"


MAX_TOP_LOGPROBS = 20
"""The OpenAI API's bound on top_logprobs, and vLLM's default --max-logprobs."""


class LossSpec(ApiModel):
    """What the student learns from: the teacher's text (sft), or also its next-token distribution (kd)."""

    type: LossType = LossType.SFT
    """sft: cross-entropy on the teacher's answers. kd: the labeler also stores the teacher's top-k
    log-probabilities of every generated token, and each answer token whose teacher distribution lines up with
    the student's tokens is trained on (1 - weight) x cross-entropy + weight x temperature^2 x KL(teacher ||
    student) over those k tokens."""
    weight: float = Field(0.5, ge=0, le=1)
    """kd: the share of the KL term in the loss of an answer token."""
    temperature: float = Field(1.0, gt=0, le=10)
    """kd: the softmax temperature of both distributions; the KL term is scaled by its square."""
    top_logprobs: int = Field(5, ge=1, le=MAX_TOP_LOGPROBS)
    """kd: how many of the teacher's most likely tokens are stored at each generated token (k)."""


class StudentSpec(ApiModel):
    model: str = Field(min_length=1, max_length=512)
    """Student model id or URI (hf://, pvc://), e.g. Qwen/Qwen2.5-1.5B-Instruct."""
    method: TrainingMethod = TrainingMethod.LORA
    lora: LoraSpec = Field(default_factory=LoraSpec)
    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    batch_size: int = Field(4, ge=1, le=4096)
    """Examples per micro-batch on CPU, where it sets the token budget (batchSize x maxSeqLength) when
    tokensPerDevice is unset."""
    tokens_per_device: int | None = Field(None, ge=256, le=1_048_576)
    """Tokens (prompt and answer, no padding) per micro-batch on each GPU: examples are packed several to a row
    up to this budget. At least maxSeqLength. Unset: from the GPU's memory, 16384 on 80-141 GB (H100, H200,
    A100 80GB), 8192 on 40-48 GB (A100 40GB, L40S), 4096 on 24 GB (L4, A10G)."""
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_seq_length: int = Field(DEFAULT_MAX_SEQ_LENGTH, ge=16, le=262144)
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage."""
    nodes: int = Field(1, ge=1, le=128)
    gpus_per_node: int = Field(1, ge=1, le=16)
    gpu_type: GpuType = "H100"
    include_rationale: bool = False
    """Train on the teacher's reasoning followed by the answer instead of the answer alone."""
    merge_weights: bool = False
    """Also write LoRA-merged full weights."""
    checkpoint_steps: int = Field(200, ge=1, le=1_000_000)
    termination_grace_seconds: int = Field(900, ge=30, le=7200)
    """Time a training pod gets after SIGTERM (suspend, node drain, preemption) to write its checkpoint."""
    image: str | None = Field(None, min_length=1, max_length=512)
    """Training and evaluation image; default: the operator's trainerImage."""
    loss: LossSpec = Field(default_factory=LossSpec)
    """sft (the default) or kd, logit distillation from the teacher's top-k log-probabilities."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("!has(self.tokensPerDevice) || self.tokensPerDevice >= "
                    f"(has(self.maxSeqLength) ? self.maxSeqLength : {DEFAULT_MAX_SEQ_LENGTH})",
                    "student.tokensPerDevice must be at least student.maxSeqLength", ".tokensPerDevice"),
            ]
        }
    }


class Baseline(StrEnum):
    TEACHER = "teacher"
    BASE_STUDENT = "base-student"


class EvaluationJudgeSpec(ApiModel):
    """A model that scores open-ended outputs (conversation, summarization) with the task's judge prompt, 0 to
    10 per reply, next to the reference metric: the teacher (kept running through evaluation when it is served
    in-cluster) or an OpenAI-compatible endpoint."""

    teacher: bool = False
    """The teacher judges (its endpoint, or the in-cluster teacher, which then stays up until evaluation ends)."""
    endpoint: TeacherEndpoint | None = None
    """Another OpenAI-compatible endpoint judges."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Requests per reply (transport errors and replies without a valid score); a reply still unscored after
    them counts as unjudged and is reported, not guessed."""
    concurrency: int = Field(8, ge=1, le=256)
    """Judge requests in flight."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("(has(self.teacher) && self.teacher) != has(self.endpoint)",
                    "exactly one of evaluation.judge.teacher and evaluation.judge.endpoint must be set"),
            ]
        }
    )


class GateSpec(ApiModel):
    """What the distilled student must reach, on the task's main metric, to be served."""

    min_score: float | None = Field(None, ge=0, le=100)
    """Lowest acceptable score of the distilled student (percent, the task's main metric)."""
    min_gap_closed: float | None = Field(None, ge=0, le=1)
    """Lowest acceptable share of the gap from the base student to the teacher that distillation closes:
    (distilled - base) / (teacher - base); e.g. 0.6. Needs both evaluation.baselines."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.minScore) || has(self.minGapClosed)",
                    "evaluation.gate needs minScore or minGapClosed"),
            ]
        }
    )


class EvaluationSpec(ApiModel):
    enabled: bool = True
    baselines: list[Baseline] = Field(
        default_factory=lambda: [Baseline.TEACHER, Baseline.BASE_STUDENT], max_length=2
    )
    max_rows: int | None = Field(None, ge=1, le=10_000_000)
    judge: EvaluationJudgeSpec | None = None
    """Score open-ended outputs with a judge model too (and persona adherence when prompt.persona is set)."""
    gate: GateSpec | None = None
    """A quality gate: a student that misses it is not served and the Distillation fails with
    QualityGateFailed; its adapter stays in the workspace."""


class ServingSpec(ApiModel):
    enabled: bool = True
    replicas: int = Field(1, ge=0, le=64)
    gpu_type: GpuType = "H100"
    gpus: int = Field(1, ge=0, le=16)
    """GPUs per student replica; 0 serves on CPU."""
    image: str | None = Field(None, min_length=1, max_length=512)
    """Serving image; default: the operator's vllmImage."""
    startup_seconds: int = Field(900, ge=60, le=86400)
    """How long a student replica may take from container start to a healthy server."""
    security_context: ServerSecurityContext | None = None
    """Overrides the operator's servingPodSecurityContext for the student pods (see ServerSecurityContext)."""


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=316)
    operator: str | None = Field(None, pattern=r"^(Exists|Equal)$")
    value: str | None = Field(None, max_length=63)
    effect: str | None = Field(None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = None


class SchedulingSpec(ApiModel):
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    priority_class_name: str | None = Field(None, max_length=253)
    queue_name: str | None = Field(None, max_length=253)
    """Kueue LocalQueue: sets kueue.x-k8s.io/queue-name on the Jobs, which Kueue admits."""
    pod_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, max_length=32)
    """Extra labels for every stage pod (cost attribution, policy selectors)."""
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict, max_length=32)
    """Extra annotations for every stage pod (sidecar injection, simulation delays on kwok)."""


class AccessMode(StrEnum):
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_ONLY_MANY = "ReadOnlyMany"


class EphemeralCache(ApiModel):
    """A volume created with each pod and deleted with it, on a (typically node-local NVMe) storage class."""

    storage_class_name: str = Field(min_length=1, max_length=253)
    size: Quantity


class ModelCacheSpec(ApiModel):
    """Where pods that read the model hub keep downloads (mounted at HF_HOME), instead of the node's OS disk."""

    claim_name: Name | None = None
    """An existing PersistentVolumeClaim in the namespace; ReadWriteMany when pods on several nodes share it."""
    ephemeral: EphemeralCache | None = None
    """A claim per pod on this storage class: survives container restarts, not pod deletion."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.claimName) != has(self.ephemeral)",
                    "exactly one of modelCache.claimName and modelCache.ephemeral must be set"),
            ]
        }
    )


class StorageSpec(ApiModel):
    size: Quantity = "50Gi"
    """Workspace volume size (labels, checkpoints, adapter, results)."""
    storage_class_name: str | None = Field(None, max_length=253)
    access_modes: list[AccessMode] | None = Field(None, min_length=1, max_length=4)
    """Workspace access modes. By default ReadWriteMany when several pods of a stage mount it (labeling shards,
    training nodes, serving replicas), else ReadWriteOnce; ReadWriteMany needs a file-share class
    (AKS azurefile-csi, EKS efs-sc, GKE Filestore)."""


KD_NEEDS_LOGPROBS = ("student.loss.type kd needs the teacher's log-probabilities, and "
                     "teacher.endpoint.logprobs says the endpoint does not return them")
# Defaults are applied before CEL runs, so student.loss.type and endpoint.logprobs are always set; the has()
# guards keep the rule valid when spec.teacher is absent.
JUDGE_TEACHER_NEEDS_ONE = ("evaluation.judge.teacher needs a single teacher (spec.teacher); with spec.teachers, "
                           "name a judge with evaluation.judge.endpoint")
KD_NEEDS_ONE_TEACHER = ("student.loss.type kd needs a single teacher (spec.teacher): the top-k log-probabilities of "
                        "several teachers, each over its own top k, do not make one distribution to learn")
KD_NEEDS_LOGPROBS_RULE = ("self.student.loss.type != 'kd' || !has(self.teacher) || !has(self.teacher.endpoint) "
                          "|| self.teacher.endpoint.logprobs")


class DistillationSpec(ApiModel):
    """A distillation run: teacher labels the dataset, the student is fine-tuned, evaluated and served."""

    task: Task
    region: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Cloud region whose GPU node pools run every GPU stage (topology.kubernetes.io/region)."""
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    teacher: TeacherSpec | None = None
    """The teacher; exactly one of teacher and teachers is set."""
    teachers: list[NamedTeacherSpec] | None = Field(None, min_length=2, max_length=4)
    """Several teachers (2 to 4), each asked for every row; teacherStrategy says how their replies combine."""
    teacher_strategy: TeacherStrategy | None = None
    """Required with teachers: vote, judge or all."""
    dataset: DatasetSpec
    student: StudentSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    hub_token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a model-hub token, exported as HF_TOKEN to every pod that reads the hub
    (teacher, labeling, training, evaluation, student); needed for gated models and datasets."""
    model_cache: ModelCacheSpec | None = None
    """Hub download cache shared by the teacher, training, evaluation and student pods."""
    suspend: bool = False
    """Pause: running stage pods are removed, progress in the workspace is kept, and resume continues."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.task == 'summarization' || !self.prompt.chainOfDensity",
                    "prompt.chainOfDensity is only valid for task summarization", ".prompt.chainOfDensity"),
                cel("self.task != 'custom' || has(self.prompt.userTemplate)",
                    "task custom needs prompt.userTemplate", ".prompt.userTemplate"),
                cel(KD_NEEDS_LOGPROBS_RULE, KD_NEEDS_LOGPROBS, ".student.loss.type"),
                cel("self.student.loss.type != 'kd' || !has(self.teachers)", KD_NEEDS_ONE_TEACHER,
                    ".student.loss.type"),
                cel("!has(self.evaluation.judge) || self.task in ['conversation', 'summarization']",
                    "evaluation.judge is only valid for the open-ended tasks conversation and summarization",
                    ".evaluation.judge"),
                cel("!has(self.evaluation.judge) || !self.evaluation.judge.teacher || has(self.teacher)",
                    JUDGE_TEACHER_NEEDS_ONE, ".evaluation.judge.teacher"),
                cel("!has(self.prompt.persona) || self.task in ['conversation', 'summarization']",
                    "prompt.persona is only valid for the open-ended tasks conversation and summarization",
                    ".prompt.persona"),
                cel("!has(self.evaluation.gate) || self.evaluation.enabled",
                    "evaluation.gate needs evaluation.enabled", ".evaluation.gate"),
                cel("!has(self.evaluation.gate) || !has(self.evaluation.gate.minGapClosed) || "
                    "('teacher' in self.evaluation.baselines && 'base-student' in self.evaluation.baselines)",
                    "evaluation.gate.minGapClosed needs both teacher and base-student in evaluation.baselines",
                    ".evaluation.gate.minGapClosed"),
                cel("has(self.teacher) != has(self.teachers)", "exactly one of teacher and teachers must be set",
                    ".teacher"),
                cel("has(self.teachers) == has(self.teacherStrategy)",
                    "teacherStrategy is required with teachers and only valid with it", ".teacherStrategy"),
                cel("!has(self.teachers) || self.teachers.all(a, self.teachers.exists_one(b, b.name == a.name))",
                    "teachers[].name must be unique", ".teachers"),
                cel("!has(self.teacherStrategy) || self.teacherStrategy.mode != 'vote' || self.task in "
                    f"{list(CHECKABLE_TASKS)}",
                    f"teacherStrategy.mode vote needs a task with a checkable answer ({', '.join(CHECKABLE_TASKS)}); "
                    "use judge or all", ".teacherStrategy.mode"),
                cel("!has(self.teacherStrategy) || !has(self.teacherStrategy.judge) || "
                    "!has(self.teacherStrategy.judge.teacher) || (has(self.teachers) && "
                    "self.teachers.exists(t, t.name == self.teacherStrategy.judge.teacher))",
                    "teacherStrategy.judge.teacher must name one of teachers", ".teacherStrategy.judge.teacher"),
            ]
        }
    )

    @property
    def primary_teacher(self) -> TeacherSpec:
        """spec.teacher, or the first of spec.teachers: the teacher of the features that use one (sampling
        budgets, the evaluation's CoT length)."""
        if self.teacher is not None:
            return self.teacher
        assert self.teachers, "the validator requires teacher or teachers"
        return self.teachers[0]

    @property
    def several_teachers(self) -> bool:
        """spec.teachers is set: the teachers' names then reach their children's names and labels,
        pipeline.json and status.teachers; a single teacher's children and pipeline.json carry none."""
        return self.teachers is not None

    def teacher_list(self) -> list[NamedTeacherSpec]:
        """Every teacher with its name, in order: spec.teachers, or spec.teacher as a list of one teacher
        named SINGLE_TEACHER_NAME, so that one teacher and several take one path through the operator."""
        if self.teachers is not None:
            return list(self.teachers)
        assert self.teacher is not None, "the validator requires teacher or teachers"
        # spec.teacher is validated already, and the planner asks for this list many times a pass: validating it
        # again would run every teacher rule again.
        return [NamedTeacherSpec.model_construct(name=SINGLE_TEACHER_NAME, **dict(self.teacher))]


MUTABLE_SPEC_FIELDS = frozenset({"suspend", "serving"})
"""Everything else is fixed at creation: a change mid-run would mix two experiments in one status."""
