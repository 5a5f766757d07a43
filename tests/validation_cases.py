"""One table of cases for every CEL rule of the spec, accepted and refused.

Both evaluators of the rules run it: pydantic (tests/unit/test_validation_rules.py) and a real API server
(tests/cluster/test_validation.py), each expecting the same field path and message, so the Python evaluation and
the API server's cannot drift apart. tests/unit/test_validation_rules.py also checks that every rule of the CRD
has a refused case and an accepted one here.
"""

import copy
import re
from dataclasses import dataclass
from typing import Any

from distillery.api.spec import (
    JUDGE_TEACHER_NEEDS_ONE,
    KD_NEEDS_LOGPROBS,
    KD_NEEDS_ONE_TEACHER,
)

BASE: dict[str, Any] = {
    "task": "nli",
    "region": "westus3",
    "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpus": 8, "tensorParallelSize": 8},
    "dataset": {"train": {"rows": [{"premise": "A man plays a guitar.", "hypothesis": "A man makes music.",
                                    "label": "entailment"}]}},
    "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct"},
}
"""A valid spec every case changes."""

ENDPOINT = {"url": "https://api.example.com/v1", "model": "m"}
SEED = {"premise": "p", "hypothesis": "h"}
_DELETE = object()


def spec(**changes: Any) -> dict[str, Any]:
    """BASE with top-level fields replaced (or removed with _DELETE)."""
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is _DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def several(task: str = "nli", strategy: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """Two in-cluster teachers instead of spec.teacher."""
    teachers = [{"name": "llama", "model": "meta-llama/Llama-3.3-70B-Instruct"},
                {"name": "qwen", "model": "Qwen/Qwen2.5-72B-Instruct"}]
    return spec(**{"task": task, "teacher": _DELETE, "teachers": teachers,
                   "teacherStrategy": strategy or {"mode": "vote"}, **changes})


def kd(**loss: Any) -> dict[str, Any]:
    return {**BASE["student"], "loss": {"type": "kd", **loss}}


@dataclass(frozen=True)
class Case:
    id: str
    rule: str
    """The message of the rule the case exercises."""
    spec: dict[str, Any]
    refused_at: str | None = None
    """Where the API server and pydantic refuse it with the rule's message (spec.<path>); None: accepted."""


CHAIN_OF_DENSITY = "prompt.chainOfDensity is only valid for task summarization"
CUSTOM_TEMPLATE = "task custom needs prompt.userTemplate"
JUDGE_TASKS = "evaluation.judge is only valid for the open-ended tasks conversation and summarization"
PERSONA_TASKS = "prompt.persona is only valid for the open-ended tasks conversation and summarization"
GATE_ENABLED = "evaluation.gate needs evaluation.enabled"
GAP_BASELINES = "evaluation.gate.minGapClosed needs both teacher and base-student in evaluation.baselines"
ONE_OF_TEACHERS = "exactly one of teacher and teachers must be set"
STRATEGY_WITH_TEACHERS = "teacherStrategy is required with teachers and only valid with it"
UNIQUE_NAMES = "teachers[].name must be unique"
VOTE_TASKS = ("teacherStrategy.mode vote needs a task with a checkable answer (math, nli, multiple-choice); "
              "use judge or all")
JUDGE_NAMES_A_TEACHER = "teacherStrategy.judge.teacher must name one of teachers"
MODEL_OR_ENDPOINT = "exactly one of teacher.model and teacher.endpoint must be set"
GPUS_TP = "teacher.gpus must be a multiple of teacher.tensorParallelSize"
STRATEGY_JUDGE_ONE = "exactly one of teacherStrategy.judge.teacher and teacherStrategy.judge.endpoint must be set"
JUDGE_MODE = "teacherStrategy.judge is required with mode judge and only valid with it"
URI_OR_ROWS = "exactly one of uri and rows must be set"
SEED_ROWS = "dataset.generate.seeds.rows must hold 1 to 100 rows"
MAX_REQUESTS = "dataset.generate.maxRequests must be at least dataset.generate.count"
TRAIN_OR_GENERATE = "dataset.train is required unless dataset.generate is set"
TOKENS_PER_DEVICE = "student.tokensPerDevice must be at least student.maxSeqLength"
EVAL_JUDGE_ONE = "exactly one of evaluation.judge.teacher and evaluation.judge.endpoint must be set"
GATE_NEEDS_A_BOUND = "evaluation.gate needs minScore or minGapClosed"
MODEL_CACHE_ONE = "exactly one of modelCache.claimName and modelCache.ephemeral must be set"

CASES = [
    Case("chain of density for nli", CHAIN_OF_DENSITY, spec(prompt={"chainOfDensity": True}),
         "spec.prompt.chainOfDensity"),
    Case("chain of density for summarization", CHAIN_OF_DENSITY,
         spec(task="summarization", prompt={"chainOfDensity": True})),
    Case("custom task without a template", CUSTOM_TEMPLATE, spec(task="custom"), "spec.prompt.userTemplate"),
    Case("custom task with a template", CUSTOM_TEMPLATE,
         spec(task="custom", prompt={"userTemplate": "Classify: {text}"})),
    Case("kd from an endpoint without logprobs", KD_NEEDS_LOGPROBS,
         spec(teacher={"endpoint": {**ENDPOINT, "logprobs": False}}, student=kd()), "spec.student.loss.type"),
    Case("kd from an endpoint with logprobs", KD_NEEDS_LOGPROBS,
         spec(teacher={"endpoint": ENDPOINT}, student=kd(topLogprobs=20))),
    Case("kd from several teachers", KD_NEEDS_ONE_TEACHER, several(student=kd()), "spec.student.loss.type"),
    Case("kd from one served teacher", KD_NEEDS_ONE_TEACHER, spec(student=kd())),
    Case("evaluation judge for nli", JUDGE_TASKS, spec(evaluation={"judge": {"teacher": True}}),
         "spec.evaluation.judge"),
    Case("evaluation judge for conversation", JUDGE_TASKS,
         spec(task="conversation", evaluation={"judge": {"teacher": True}})),
    Case("evaluation judged by several teachers", JUDGE_TEACHER_NEEDS_ONE,
         several("conversation", {"mode": "all"}, evaluation={"judge": {"teacher": True}}),
         "spec.evaluation.judge.teacher"),
    Case("several teachers with an endpoint judging the evaluation", JUDGE_TEACHER_NEEDS_ONE,
         several("conversation", {"mode": "all"}, evaluation={"judge": {"endpoint": ENDPOINT}})),
    Case("persona for math", PERSONA_TASKS, spec(task="math", prompt={"persona": {"name": "Ada"}}),
         "spec.prompt.persona"),
    Case("persona for conversation", PERSONA_TASKS, spec(task="conversation", prompt={"persona": {"name": "Ada"}})),
    Case("gate with evaluation disabled", GATE_ENABLED, spec(evaluation={"enabled": False, "gate": {"minScore": 50}}),
         "spec.evaluation.gate"),
    Case("gate with evaluation enabled", GATE_ENABLED, spec(evaluation={"gate": {"minScore": 50}})),
    Case("gap gate without the teacher baseline", GAP_BASELINES,
         spec(evaluation={"baselines": ["base-student"], "gate": {"minGapClosed": 0.5}}),
         "spec.evaluation.gate.minGapClosed"),
    Case("gap gate with both baselines", GAP_BASELINES, spec(evaluation={"gate": {"minGapClosed": 0.5}})),
    Case("teacher and teachers", ONE_OF_TEACHERS, several(teacher={"model": "m"}), "spec.teacher"),
    Case("neither teacher nor teachers", ONE_OF_TEACHERS, spec(teacher=_DELETE), "spec.teacher"),
    Case("teachers only", ONE_OF_TEACHERS, several()),
    Case("teachers without a strategy", STRATEGY_WITH_TEACHERS, several(teacherStrategy=_DELETE),
         "spec.teacherStrategy"),
    Case("a strategy with one teacher", STRATEGY_WITH_TEACHERS, spec(teacherStrategy={"mode": "all"}),
         "spec.teacherStrategy"),
    Case("teachers with a strategy", STRATEGY_WITH_TEACHERS, several(strategy={"mode": "all"})),
    Case("duplicate teacher names", UNIQUE_NAMES,
         several(teachers=[{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]), "spec.teachers"),
    Case("distinct teacher names", UNIQUE_NAMES,
         several(teachers=[{"name": "a", "model": "m"}, {"name": "b", "model": "m"}, {"name": "c", "model": "m"}])),
    Case("vote on conversation", VOTE_TASKS, several("conversation"), "spec.teacherStrategy.mode"),
    Case("vote on multiple choice", VOTE_TASKS, several("multiple-choice")),
    Case("strategy judge naming no teacher", JUDGE_NAMES_A_TEACHER,
         several("conversation", {"mode": "judge", "judge": {"teacher": "gpt"}}), "spec.teacherStrategy.judge.teacher"),
    Case("strategy judge naming a teacher", JUDGE_NAMES_A_TEACHER,
         several("conversation", {"mode": "judge", "judge": {"teacher": "qwen"}})),
    Case("teacher with model and endpoint", MODEL_OR_ENDPOINT, spec(teacher={"model": "m", "endpoint": ENDPOINT}),
         "spec.teacher"),
    Case("teacher with neither model nor endpoint", MODEL_OR_ENDPOINT, spec(teacher={"gpus": 1}), "spec.teacher"),
    Case("second of several teachers with model and endpoint", MODEL_OR_ENDPOINT,
         several(teachers=[{"name": "a", "model": "m"}, {"name": "b", "model": "m", "endpoint": ENDPOINT}]),
         "spec.teachers[1]"),
    Case("teacher with an endpoint only", MODEL_OR_ENDPOINT, spec(teacher={"endpoint": ENDPOINT})),
    Case("gpus not a multiple of tensor parallelism", GPUS_TP,
         spec(teacher={"model": "m", "gpus": 4, "tensorParallelSize": 3}), "spec.teacher.gpus"),
    Case("gpus a multiple of tensor parallelism", GPUS_TP,
         spec(teacher={"model": "m", "gpus": 8, "tensorParallelSize": 4})),
    Case("strategy judge with a teacher and an endpoint", STRATEGY_JUDGE_ONE,
         several("conversation", {"mode": "judge", "judge": {"teacher": "qwen", "endpoint": ENDPOINT}}),
         "spec.teacherStrategy.judge"),
    Case("strategy judge with an endpoint", STRATEGY_JUDGE_ONE,
         several("conversation", {"mode": "judge", "judge": {"endpoint": ENDPOINT}})),
    Case("judge mode without a judge", JUDGE_MODE, several("conversation", {"mode": "judge"}),
         "spec.teacherStrategy.judge"),
    Case("a judge without judge mode", JUDGE_MODE,
         several("conversation", {"mode": "all", "judge": {"teacher": "qwen"}}), "spec.teacherStrategy.judge"),
    Case("judge mode with a judge", JUDGE_MODE,
         several("summarization", {"mode": "judge", "judge": {"endpoint": ENDPOINT}})),
    Case("train with uri and rows", URI_OR_ROWS,
         spec(dataset={"train": {"uri": "hf://org/set", "rows": [SEED]}}), "spec.dataset.train"),
    Case("validation with neither uri nor rows", URI_OR_ROWS,
         spec(dataset={**BASE["dataset"], "validation": {"split": "test"}}), "spec.dataset.validation"),
    Case("train and validation from uris", URI_OR_ROWS,
         spec(dataset={"train": {"uri": "hf://org/set"}, "validation": {"uri": "pvc://data/val.jsonl"}})),
    Case("generate without seed rows", SEED_ROWS, spec(dataset={"generate": {"seeds": {"rows": []}, "count": 5}}),
         "spec.dataset.generate.seeds.rows"),
    Case("generate with 101 seed rows", SEED_ROWS,
         spec(dataset={"generate": {"seeds": {"rows": [SEED] * 101}, "count": 5}}), "spec.dataset.generate.seeds.rows"),
    Case("generate with 100 seed rows", SEED_ROWS, spec(dataset={"generate": {"seeds": {"rows": [SEED] * 100},
                                                                              "count": 5}})),
    Case("generate maxRequests below count", MAX_REQUESTS,
         spec(dataset={"generate": {"seeds": {"rows": [SEED]}, "count": 10, "maxRequests": 9}}),
         "spec.dataset.generate.maxRequests"),
    Case("generate maxRequests equal to count", MAX_REQUESTS,
         spec(dataset={"generate": {"seeds": {"rows": [SEED]}, "count": 10, "maxRequests": 10}})),
    Case("dataset without train or generate", TRAIN_OR_GENERATE,
         spec(dataset={"validation": {"uri": "hf://org/set"}}), "spec.dataset.train"),
    Case("dataset with generate only", TRAIN_OR_GENERATE,
         spec(dataset={"generate": {"seeds": {"uri": "pvc://data/seeds.jsonl"}, "count": 5}})),
    Case("tokens per device below the default maxSeqLength", TOKENS_PER_DEVICE,
         spec(student={**BASE["student"], "tokensPerDevice": 512}), "spec.student.tokensPerDevice"),
    Case("tokens per device below maxSeqLength", TOKENS_PER_DEVICE,
         spec(student={**BASE["student"], "tokensPerDevice": 2048, "maxSeqLength": 4096}),
         "spec.student.tokensPerDevice"),
    Case("tokens per device equal to the default maxSeqLength", TOKENS_PER_DEVICE,
         spec(student={**BASE["student"], "tokensPerDevice": 1024})),
    Case("evaluation judge with neither teacher nor endpoint", EVAL_JUDGE_ONE,
         spec(task="conversation", evaluation={"judge": {"maxAttempts": 2}}), "spec.evaluation.judge"),
    Case("evaluation judge with teacher and endpoint", EVAL_JUDGE_ONE,
         spec(task="conversation", evaluation={"judge": {"teacher": True, "endpoint": ENDPOINT}}),
         "spec.evaluation.judge"),
    Case("evaluation judge with an endpoint", EVAL_JUDGE_ONE,
         spec(task="summarization", evaluation={"judge": {"teacher": False, "endpoint": ENDPOINT}})),
    Case("empty gate", GATE_NEEDS_A_BOUND, spec(evaluation={"gate": {}}), "spec.evaluation.gate"),
    Case("gate with a gap share only", GATE_NEEDS_A_BOUND, spec(evaluation={"gate": {"minGapClosed": 0.6}})),
    Case("model cache with neither claim nor ephemeral", MODEL_CACHE_ONE, spec(modelCache={}), "spec.modelCache"),
    Case("model cache with claim and ephemeral", MODEL_CACHE_ONE,
         spec(modelCache={"claimName": "hub", "ephemeral": {"storageClassName": "nvme", "size": "100Gi"}}),
         "spec.modelCache"),
    Case("model cache on an ephemeral volume", MODEL_CACHE_ONE,
         spec(modelCache={"ephemeral": {"storageClassName": "nvme", "size": "100Gi"}})),
]


def refusal_pattern(case: Case) -> re.Pattern[str]:
    """How the API server words the refusal: `<path>: Invalid value: ["<type>": ]<message>`."""
    assert case.refused_at is not None
    return re.compile(re.escape(case.refused_at) + r': Invalid value: ("[a-z]+": )?' + re.escape(case.rule))


def pydantic_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location in the API server's notation: spec.teachers[1].name."""
    return "spec" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
