"""The training stage: fine-tune the student on the teacher's labels with DeepSpeed ZeRO.

One process per accelerator (one per GPU; one on CPU). The torch distributed
environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, NODE_RANK)
comes from the operator or torchrun; without it the trainer is a single process.

Resume: every student.checkpointSteps optimizer steps, after the last step and on
SIGTERM, every rank writes its part of a checkpoint (model, optimizer, scheduler,
RNG) into `checkpoints/.tmp-step-N`, which rank 0 renames to `checkpoints/step-N`
once all are done; only the newest two are kept. A restart loads the newest one
and continues with the next optimizer step: the data order is a pure function of
(seed, epoch, step), so no finished step is redone and none is skipped.

stdout carries one JSON object per line (`event`: start, resume, step, checkpoint,
terminated); the last line is the final summary, also written as the termination message.

Exits (api.reports.ExitCode): CONFIG, a configuration error found before any GPU work (a model that does not
load, a checkpoint this run cannot resume, with student.loss kd a student whose vocabulary lacks the teacher's
tokens or no example whose teacher tokens line up); NO_DATA, no trainable example; TERMINATED, stopped by SIGTERM
after checkpointing.
"""

import argparse
import copy
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from distillery.api.pipeline import CONFIG_FILE, CONFIG_MOUNT_DIR, PipelineConfig, WorkspaceLayout
from distillery.api.reports import ExitCode, TrainingReport
from distillery.api.spec import LossType, StudentSpec, TrainingMethod
from distillery.api.status import Stage
from distillery.workloads.environment import workspace_layout
from distillery.workloads.finetune_data import Example, load_finetune_set, pack
from distillery.workloads.loss import PackedCausalLMLoss, UnsupportedModel
from distillery.workloads.memory import (
    activation_bytes,
    default_tokens_per_device,
    model_state_bytes,
    needs_gradient_checkpointing,
)
from distillery.workloads.models import ModelLoadError, load_model, load_tokenizer, prepare_model
from distillery.workloads.program import ProgramResult, run_program
from distillery.workloads.progress import LiveProgress, compact_json, write_json_atomic
from distillery.workloads.tasks.persona import persona_chat_template
from distillery.workloads.teacher_logprobs import StudentVocabulary, VocabularyMismatch

CHECKPOINTS_KEPT = 2
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "deepspeed"
WARMUP_FRACTION = 0.03
MIN_LR_FRACTION = 0.1

log = logging.getLogger("distillery.trainer")


class ResumeError(RuntimeError):
    """The newest checkpoint cannot be resumed by this run."""


# Distributed setup ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> "DistEnv":
        local_rank = int(environ.get("LOCAL_RANK", "0"))
        if "RANK" in environ:
            rank = int(environ["RANK"])
        else:
            # One process per pod (gpusPerNode 1): the node rank is the global rank.
            rank = int(environ.get("NODE_RANK", "0")) * int(environ.get("LOCAL_WORLD_SIZE", "1")) + local_rank
        return cls(rank, local_rank, int(environ.get("WORLD_SIZE", "1")))



def init_distributed(cuda: bool) -> DistEnv:
    """Join the process group (gloo on CPU, nccl on GPU), making up a one-process world when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(name, value)
        # Port 0: the store of a group of one binds whatever port is free; no other rank needs to know it.
        os.environ.setdefault("MASTER_PORT", "0")
    dist = DistEnv.from_env(dict(os.environ))
    os.environ.setdefault("RANK", str(dist.rank))
    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    else:
        _skip_shm_build()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    return dist


def _skip_shm_build() -> None:
    """On CPU DeepSpeed compiles a shared-memory all-reduce op on first use (minutes, and a killed
    compile leaves a lock that hangs the next start). Use it only when installed prebuilt
    (DS_BUILD_SHM_COMM=1); gloo alone is correct."""
    import deepspeed.ops
    from deepspeed.git_version_info import installed_ops

    if not installed_ops.get("deepspeed_shm_comm", False):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def barrier() -> None:
    torch.distributed.barrier()


# DeepSpeed configuration and schedule -----------------------------------------------------------

def deepspeed_config(student: StudentSpec, world_size: int, bf16: bool, cuda: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": student.zero_stage, "contiguous_gradients": True,
                            "overlap_comm": cuda and world_size > 1}
    if student.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": student.batch_size,
        "gradient_accumulation_steps": student.gradient_accumulation_steps,
        "train_batch_size": student.batch_size * student.gradient_accumulation_steps * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # The optimizer is torch's AdamW, passed in: no op compilation, fused kernels on CUDA.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warmup over the first 3% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


@cache
def _epoch_order(examples: int, seed: int) -> tuple[int, ...]:
    order = list(range(examples))
    random.Random(seed).shuffle(order)
    return tuple(order)


@dataclass(frozen=True)
class DataPlan:
    """Which examples each micro-batch of each rank holds: a pure function of its index.

    Each epoch's shuffled examples are cut, in order, into runs of at most `token_budget` tokens (one
    micro-batch each), dealt to the ranks in turn. The epoch's first micro-batches repeat at its end so every
    rank gets as many; epochs then follow one another as one stream of micro-batches.
    """

    lengths: tuple[int, ...]
    """Tokens of each example."""
    token_budget: int
    accumulation: int
    world_size: int
    rank: int
    seed: int
    _epochs: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict, init=False, repr=False,
                                                            compare=False)

    def epoch_micro_batches(self, epoch: int) -> tuple[tuple[int, ...], ...]:
        """All ranks' micro-batches of `epoch`; rank r holds every world_size-th one from the r-th."""
        if epoch not in self._epochs:
            batches: list[tuple[int, ...]] = []
            current: list[int] = []
            used = 0
            for i in _epoch_order(len(self.lengths), self.seed + epoch):
                if current and used + self.lengths[i] > self.token_budget:
                    batches.append(tuple(current))
                    current, used = [], 0
                current.append(i)
                used += self.lengths[i]
            batches.append(tuple(current))
            batches += [batches[k % len(batches)] for k in range(-len(batches) % self.world_size)]
            self._epochs[epoch] = tuple(batches)
        return self._epochs[epoch]

    def micro_batches_in_epoch(self, epoch: int) -> int:
        """Per rank."""
        return len(self.epoch_micro_batches(epoch)) // self.world_size

    def steps_for_epochs(self, epochs: int) -> int:
        return max(1, sum(self.micro_batches_in_epoch(e) for e in range(epochs)) // self.accumulation)

    def micro_batch_indices(self, index: int) -> list[int]:
        epoch = 0
        while index >= (per_epoch := self.micro_batches_in_epoch(epoch)):
            index -= per_epoch
            epoch += 1
        return list(self.epoch_micro_batches(epoch)[index * self.world_size + self.rank])

    def step_micro_batches(self, step: int) -> list[list[int]]:
        """The micro-batches of optimizer step `step` (1-based)."""
        first = (step - 1) * self.accumulation
        return [self.micro_batch_indices(first + i) for i in range(self.accumulation)]


# Checkpoints ------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """`<dir>/step-NNNNNNNN` directories, each complete (made by rename), newest two kept."""

    def __init__(self, directory: Path, dist: DistEnv, frozen_excluded: bool) -> None:
        self.dir = directory
        self.dist = dist
        # LoRA: the frozen base weights come from the model itself, so a checkpoint holds the adapter.
        self.frozen_excluded = frozen_excluded

    def complete(self) -> list[Path]:
        found = [p for p in self.dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))

    def latest(self) -> Path | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def clean_partial(self) -> None:
        """Remove what a killed save left behind; call on rank 0 before anyone saves."""
        for partial in self.dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> Path:
        """Collective: every rank calls it with the same `step`."""
        name = f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp, final = self.dir / f".tmp-{name}", self.dir / name
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG, save_latest=False,
                               exclude_frozen_parameters=self.frozen_excluded)
        torch.save(_rng_state(), tmp / f"rng-rank{self.dist.rank:05d}.pt")
        barrier()
        if self.dist.is_main:
            (tmp / STATE_FILE).write_text(json.dumps(state))
            _fsync_tree(tmp)
            os.rename(tmp, final)
            for old in self.complete()[:-CHECKPOINTS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, engine: Any, path: Path) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((path / STATE_FILE).read_text())
        if state["world_size"] != self.dist.world_size:
            raise ResumeError(f"checkpoint {path} was written by {state['world_size']} processes, this run "
                               f"has {self.dist.world_size}; the data order and optimizer shards differ")
        loaded, _ = engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_module_strict=not self.frozen_excluded,
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise ResumeError(f"DeepSpeed could not load checkpoint {path}")
        _set_rng_state(torch.load(path / f"rng-rank{self.dist.rank:05d}.pt", weights_only=True))
        return state


# Outputs ----------------------------------------------------------------------------------------

def _replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory through a temporary sibling and swap it in, so readers see old or new."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _unwrapped(state_dict: dict[str, Any] | None) -> dict[str, Any] | None:
    """ZeRO-3's gathered weights carry the loss wrapper's `model.` prefix; save_pretrained wants the student's names."""
    if state_dict is None:
        return None
    return {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}


def save_outputs(engine: Any, tokenizer: Any, cfg: PipelineConfig, layout: WorkspaceLayout, dist: DistEnv,
                 dtype: torch.dtype) -> dict[str, str]:
    """Collective. The adapter (or the full model) in adapter_dir; merged weights when asked. Both carry the
    tokenizer, with prompt.persona as its chat template's default system message."""
    student = cfg.student
    if cfg.prompt.persona is not None:
        # The served student falls back to the persona it was trained with when a caller sends no system
        # message: vLLM renders prompts with this template (resources/vllm.py passes it as --chat-template).
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = persona_chat_template(tokenizer.chat_template, cfg.prompt.persona)
    # ZeRO-3 shards the weights over ranks; gather them (every rank must take part).
    state_dict = engine._zero3_consolidated_16bit_state_dict() if student.zero_stage == 3 else None
    outputs: dict[str, str] = {}
    if dist.is_main:
        def write_model(tmp: Path) -> None:
            engine.module.model.save_pretrained(tmp, state_dict=_unwrapped(state_dict))
            tokenizer.save_pretrained(tmp)

        _replace_dir(layout.adapter_dir, write_model)
        outputs["adapter" if student.method == TrainingMethod.LORA else "model"] = str(layout.adapter_dir)
        if student.method == TrainingMethod.LORA and student.merge_weights:
            # From the base on disk rather than the training copy: the same weights, and no
            # ZeRO state or GPU memory involved.
            merged = load_model(student.model, dtype=dtype, adapter=layout.adapter_dir, merge=True)

            def write_merged(tmp: Path) -> None:
                merged.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)

            _replace_dir(layout.merged_dir, write_merged)
            outputs["merged"] = str(layout.merged_dir)
    barrier()
    return outputs


# Training ---------------------------------------------------------------------------------------

class StopRequested:
    """Set by SIGTERM (pod deletion, suspend); training checkpoints at the next step and exits."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_: Any) -> None:
        self.requested = True


def emit(dist: DistEnv, event: str, **fields: Any) -> None:
    if dist.is_main:
        print(compact_json({"event": event, **fields}), flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillery train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}", help="pipeline.json")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="train exactly this many optimizer steps (the data repeats as needed)")
    return parser.parse_args(argv)


def token_budget(student: StudentSpec, device_memory: int | None) -> int:
    if student.tokens_per_device is not None:
        return student.tokens_per_device
    return default_tokens_per_device(device_memory, student.max_seq_length, student.batch_size)


def row_capacity(attn_implementation: str, max_seq_length: int, budget: int) -> int:
    """Tokens per packed row. flash-attention's varlen kernels take the whole micro-batch as one row (transformers
    reads packing from position_ids only at batch size 1) and cost what the examples' own lengths cost; sdpa and
    eager get a block-diagonal mask over each row and cost its width squared, so their rows stay at
    max_seq_length."""
    return budget if "flash" in attn_implementation else max_seq_length


def build_student(student: StudentSpec, dtype: torch.dtype, cuda: bool, budget: int, world_size: int,
                  device_memory: int | None) -> tuple[PackedCausalLMLoss, bool]:
    """(the student with its loss, whether gradient checkpointing is on)."""
    model = prepare_model(load_model(student.model, dtype=dtype), student)
    # A cache during training costs memory and, worse, stops transformers from separating packed examples.
    model.config.use_cache = False
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype_bytes = torch.finfo(dtype).bits // 8
    checkpointing = needs_gradient_checkpointing(
        activation_bytes(model.config, budget, dtype_bytes, checkpointing=False),
        model_state_bytes(parameters, trainable, dtype_bytes, world_size, student.zero_stage), device_memory)
    if checkpointing:
        # Non-reentrant: works with frozen embeddings (LoRA) without forcing their outputs to need gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # ZeRO-3 partitions lm_head's weight, which the fused kernel would read whole.
    kd = (student.loss.weight, student.loss.temperature) if student.loss.type == LossType.KD else None
    return PackedCausalLMLoss(model, fused=cuda and student.zero_stage < 3, kd=kd), checkpointing


@dataclass
class Run:
    """Where training stands; what a checkpoint's trainer_state.json holds, and this process's own counters."""

    total_steps: int
    world_size: int
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    """Real (non-padding) tokens trained on, all ranks, all runs."""
    earlier_seconds: float = 0.0
    run_tokens: int = 0
    run_start: float = field(default_factory=time.monotonic)

    def resume(self, state: dict[str, Any]) -> None:
        self.step, self.history = state["step"], state["loss"]
        self.tokens, self.earlier_seconds = state["tokens"], state["train_seconds"]

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total_steps, "world_size": self.world_size,
                "loss": self.history, "tokens": self.tokens,
                "train_seconds": self.earlier_seconds + time.monotonic() - self.run_start}


def optimizer_step(engine: Any, batches: list[list[Example]], pad_id: int, capacity: int) -> torch.Tensor:
    """One optimizer step over the micro-batches: (mean loss, real tokens, 0) on the device, so that the
    step costs a single host sync, in the caller's all-reduce."""
    stats = torch.zeros(3, dtype=torch.float32, device=engine.device)
    for examples in batches:
        batch = pack(examples, pad_id, capacity)
        stats[1] += sum(len(e.input_ids) for e in examples)
        loss = engine(**{k: v.to(engine.device) for k, v in batch.items()})
        engine.backward(loss)
        engine.step()
        stats[0] += loss.detach().float() / len(batches)
    return stats


def step_loop(engine: Any, plan: DataPlan, examples: list[Example], run: Run, checkpoints: Checkpoints,
              stop: StopRequested, dist: DistEnv, pad_id: int, capacity: int, checkpoint_steps: int) -> bool:
    """Train until run.total_steps; False when a stop was requested (after checkpointing)."""
    # Rank 0 reports for the group, from a thread: the step loop never waits on the API server.
    progress = TrainingReport(rank=dist.rank, step=run.step, total_steps=run.total_steps,
                              loss=run.history[-1]["loss"] if run.history else None)
    live = LiveProgress(Stage.TRAINING.value, dist.rank, progress.model_copy)
    if dist.is_main:
        live.start()
    engine.train()
    try:
        while run.step < run.total_steps:
            run.step += 1
            lr = engine.get_lr()[0]
            batches = [[examples[i] for i in indices] for indices in plan.step_micro_batches(run.step)]
            stats = optimizer_step(engine, batches, pad_id, capacity)
            stats[2] = float(stop.requested)
            # Loss, token count and any rank's stop request, summed over ranks in one all-reduce.
            torch.distributed.all_reduce(stats)
            mean_loss, step_tokens, stopping = stats.tolist()
            mean_loss = round(mean_loss / dist.world_size, 6)
            run.run_tokens += int(step_tokens)
            run.tokens += int(step_tokens)
            run.history.append({"step": run.step, "loss": mean_loss, "lr": lr})
            emit(dist, "step", step=run.step, loss=mean_loss, lr=lr, tokens=int(step_tokens),
                 seconds=round(time.monotonic() - run.run_start, 4))
            progress.step, progress.loss = run.step, mean_loss
            if run.step % checkpoint_steps == 0 or run.step == run.total_steps or stopping:
                path = checkpoints.save(engine, run.step, run.state())
                emit(dist, "checkpoint", step=run.step, path=str(path))
            if stopping:
                emit(dist, "terminated", step=run.step)
                return False
    finally:
        live.stop()
    return True


def train(cfg: PipelineConfig, layout: WorkspaceLayout, max_steps: int | None) -> ProgramResult:
    """(exit code, summary). Every rank runs it."""
    wall_start = time.monotonic()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    student = cfg.student

    from distillery.workloads.tasks import get_task

    # Data first: a wrong model or empty labels fail fast, before any process group exists.
    tokenizer = load_tokenizer(student.model)
    task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
    # student.loss kd: a student that lacks the teacher's tokens fails here (VocabularyMismatch), before any GPU work.
    vocabulary = StudentVocabulary(tokenizer) if student.loss.type == LossType.KD else None
    data = load_finetune_set(layout.labels_dir, task, tokenizer, student.max_seq_length,
                             student.include_rationale, vocabulary)
    if not data.examples:
        return ExitCode.NO_DATA, TrainingReport(error=f"no trainable examples in {layout.labels_dir}",
                                                **data.summary())
    if vocabulary is not None and not data.kd_examples:
        return ExitCode.CONFIG, TrainingReport(error=(
            f"student.loss kd: no example has the teacher's log-probabilities lined up with its answer tokens "
            f"({data.kd_missing} labels stored without log-probabilities, {data.kd_unaligned} whose trained text is "
            f"not a run of whole teacher tokens that the student tokenizes the same way; the answer alone usually "
            f"starts inside a teacher token, student.includeRationale trains on the whole reply)"),
            **data.summary())

    dist = init_distributed(cuda)
    stop = StopRequested()
    device_memory = torch.cuda.get_device_properties(dist.local_rank).total_memory if cuda else None
    budget = token_budget(student, device_memory)
    # The same seed everywhere for the adapter's initial weights; per rank below, for dropout.
    torch.manual_seed(cfg.seed)
    plan = DataPlan(tuple(len(e.input_ids) for e in data.examples), budget, student.gradient_accumulation_steps,
                    dist.world_size, dist.rank, cfg.seed)
    run = Run(max_steps or plan.steps_for_epochs(student.epochs), dist.world_size)

    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    model, checkpointing = build_student(student, dtype, cuda, budget, dist.world_size, device_memory)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=student.learning_rate, weight_decay=0.0, fused=cuda)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, run.total_steps)),
        config=deepspeed_config(student, dist.world_size, bf16, cuda),
    )
    torch.manual_seed(cfg.seed + dist.rank)
    random.seed(cfg.seed + dist.rank)

    checkpoints = Checkpoints(layout.checkpoints_dir, dist, student.method == TrainingMethod.LORA)
    if dist.is_main:
        layout.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clean_partial()
    barrier()
    start_step = 0
    latest = checkpoints.latest()
    if latest is not None:
        run.resume(checkpoints.load(engine, latest))
        start_step = run.step
        emit(dist, "resume", step=start_step, checkpoint=str(latest))
    attention = model.model.config._attn_implementation
    emit(dist, "start", total_steps=run.total_steps, world_size=dist.world_size, start_step=start_step,
         trainable_parameters=sum(p.numel() for p in trainable), tokens_per_device=budget, attention=attention,
         gradient_checkpointing=checkpointing, **data.summary())

    run.run_start = time.monotonic()
    capacity = row_capacity(attention, student.max_seq_length, budget)
    if not step_loop(engine, plan, data.examples, run, checkpoints, stop, dist, tokenizer.pad_token_id, capacity,
                     student.checkpoint_steps):
        return ExitCode.TERMINATED, TrainingReport(rank=dist.rank, terminated=True, step=run.step,
                                                   total_steps=run.total_steps)

    run_seconds = time.monotonic() - run.run_start
    train_seconds = run.earlier_seconds + run_seconds
    outputs = save_outputs(engine, tokenizer, cfg, layout, dist, dtype)
    report = TrainingReport(
        rank=dist.rank,
        steps=run.total_steps,
        resumed_from_step=start_step,
        final_loss=run.history[-1]["loss"] if run.history else None,
        tokens_per_second=round(run.tokens / train_seconds, 2) if train_seconds > 0 else None,
        train_seconds=round(train_seconds, 3),
        wall_time_seconds=round(time.monotonic() - wall_start, 3),
        world_size=dist.world_size,
        **data.summary(),
        **outputs,
    )
    if dist.is_main:
        write_json_atomic(layout.train_dir / "metrics.json", {
            **report.dump(), "total_steps": run.total_steps, "tokens": run.tokens,
            "run_tokens_per_second": round(run.run_tokens / run_seconds, 2) if run_seconds > 0 else None,
            "method": str(student.method), "zero_stage": student.zero_stage, "tokens_per_device": budget,
            "gradient_checkpointing": checkpointing, "loss": run.history,
        })
    return ExitCode.OK, report


def _leave_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> ProgramResult:
        try:
            cfg = PipelineConfig.load(args.config)
        except (OSError, ValueError) as err:
            # Only here are OSError and ValueError a configuration error; while training they are a crash.
            return ExitCode.CONFIG, TrainingReport(error=f"cannot read {args.config}: {err}"[:1000])
        return train(cfg, workspace_layout(cfg), args.max_steps)

    # The environment is read after the work: init_distributed fills it in for a one-process world.
    return run_program("train", work, (ModelLoadError, ResumeError, UnsupportedModel, VocabularyMismatch),
                       lambda error: TrainingReport(error=error), cleanup=_leave_process_group,
                       reports=lambda: int(os.environ.get("LOCAL_RANK", "0")) == 0,
                       prints=lambda: int(os.environ.get("RANK", "0")) == 0)
