"""Trainer throughput: tokens/s (and MFU on a GPU with a known peak) for a short real training run.

    PYTHONPATH=operator python tests/bench/bench_trainer.py --hidden 1024 --layers 8 --steps 30

Self-contained and offline: it builds a random-init Llama of the given size, an offline
tokenizer and synthetic NLI label files of about --seq-len tokens per example, then runs
`distillery.workloads.trainer.main` (DeepSpeed, the ZeRO stage and method given; bf16 on
a GPU that supports it, fp32 on CPU) for --steps optimizer steps and prints one JSON
object. Steady-state numbers skip the first --warmup steps (allocation, kernel selection).
Micro-batches hold --tokens-per-device tokens (default --micro-batch x --seq-len), examples packed several
to a row; tokens/s counts real tokens, no padding. Peak memory: torch's peak GPU allocation, or on CPU the
process's peak resident set.

Model FLOPs per token: 6N (full) or 4N (LoRA: no weight gradients for frozen matrices),
N = parameters in matmuls (embedding lookup excluded, lm_head included), plus attention
(12 or 8) x layers x hidden x seq_len. MFU = achieved FLOP/s / (peak x processes).
"""

import argparse
import contextlib
import io
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from distillery.api.pipeline import PipelineConfig, TeacherClientConfig, WorkspaceLayout
from distillery.api.spec import DatasetSpec, DataSource, StudentSpec, Task
from distillery.devcluster.tiny import build_model, build_tokenizer
from distillery.workloads import trainer

# Dense bf16 peak TFLOP/s by device name fragment (no sparsity).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0}
WORDS = ("the", "a", "man", "woman", "child", "dog", "plays", "guitar", "in", "park", "quick", "brown", "fox",
         "jumps", "over", "lazy", "answer", "question", "is", "music", "step", "think", "first", "then")
LABELS = ("entailment", "neutral", "contradiction")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=32000, help="model vocabulary (lm_head width)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="sets the token budget to micro-batch x seq-len when --tokens-per-device is not given")
    parser.add_argument("--tokens-per-device", type=int, default=None, help="student.tokensPerDevice")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the steady-state numbers")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak")
    return parser.parse_args(argv)


def synthetic_rows(tokenizer: Any, count: int, seq_len: int, seed: int = 0) -> list[dict[str, str]]:
    """NLI rows whose prompt fills about 90% of seq_len, so every example keeps its answer."""
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(400))
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 400
    words = max(1, int(0.9 * seq_len / tokens_per_word) - 40)
    return [{"premise": " ".join(rng.choice(WORDS) for _ in range(words)), "hypothesis": "a man plays music.",
             "label": LABELS[i % 3]} for i in range(count)]


def write_labels(labels_dir: Path, rows: list[dict[str, str]]) -> None:
    labels_dir.mkdir(parents=True)
    with open(labels_dir / "train-shard-00000.jsonl", "w") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps({"split": "train", "row_id": i, "row": {**row, "row_id": i},
                                     "answer": row["label"], "rationale": "", "raw": f"Answer: {row['label']}",
                                     "attempts": 1, "tokens_in": 0, "tokens_out": 0, "status": "ok"}) + "\n")


def matmul_parameters(model: torch.nn.Module) -> int:
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def peak_tflops(override: float | None) -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return "cpu", override
    name = torch.cuda.get_device_name()
    if override is not None:
        return name, override
    return name, next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def peak_memory_gib() -> float:
    """Peak GPU memory allocated by torch, or on CPU the process's peak resident set."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, peak = peak_tflops(args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = Path(tmp)
        tokenizer = build_tokenizer()
        model = build_model(args.vocab_size, hidden=args.hidden, layers=args.layers, heads=args.heads,
                            max_positions=max(2048, args.seq_len), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, init_std=0.02)
        n_matmul = matmul_parameters(model)
        model.save_pretrained(root / "model")
        tokenizer.save_pretrained(root / "model")
        del model
        write_labels(root / "workspace" / "labels", synthetic_rows(tokenizer, args.rows, args.seq_len))
        cfg = PipelineConfig(
            name="bench", namespace="bench", task=Task.NLI,
            teacher=TeacherClientConfig(base_url="http://127.0.0.1:9/v1", model="teacher"),
            dataset=DatasetSpec(train=DataSource(rows=[{}])),
            student=StudentSpec(model=str(root / "model"), method=args.method, zero_stage=args.zero_stage,
                                batch_size=args.micro_batch, gradient_accumulation_steps=args.accumulation,
                                tokens_per_device=args.tokens_per_device or args.micro_batch * args.seq_len,
                                max_seq_length=args.seq_len, checkpoint_steps=1_000_000,
                                lora={"rank": args.lora_rank, "alpha": 2 * args.lora_rank, "dropout": 0.0}),
            workspace=WorkspaceLayout(root=str(root / "workspace")),
        )
        (root / "pipeline.json").write_text(cfg.to_json())
        captured = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stdout(captured):
            code = trainer.main(["--config", str(root / "pipeline.json"), "--max-steps", str(args.steps)])
        wall = time.monotonic() - started
        peak_memory = peak_memory_gib()
        if code != 0:
            print(captured.getvalue()[-4000:], file=sys.stderr)
            return code
        metrics = json.loads((root / "workspace" / "train" / "metrics.json").read_text())

    # The trainer's step events; DeepSpeed prints other lines to stdout as well.
    steps = [json.loads(line) for line in captured.getvalue().splitlines() if line.startswith('{"event":"step",')]
    steady = steps[args.warmup:] if len(steps) > args.warmup + 1 else steps
    steady_tokens = sum(s["tokens"] for s in steady[1:])
    steady_seconds = steady[-1]["seconds"] - steady[0]["seconds"]
    tokens_per_second = steady_tokens / steady_seconds if steady_seconds > 0 else None
    full = args.method == "full"
    flops_per_token = (6 if full else 4) * n_matmul + (12 if full else 8) * args.layers * args.hidden * args.seq_len
    mfu = None
    if peak and tokens_per_second:
        mfu = round(tokens_per_second * flops_per_token / (peak * 1e12 * metrics["world_size"]), 4)
    print(json.dumps({
        "device": device, "method": args.method, "zero_stage": args.zero_stage, "hidden": args.hidden,
        "layers": args.layers, "vocab_size": args.vocab_size, "matmul_parameters": n_matmul,
        "seq_len": args.seq_len, "micro_batch": args.micro_batch, "accumulation": args.accumulation,
        "tokens_per_device": metrics["tokens_per_device"], "gradient_checkpointing": metrics["gradient_checkpointing"],
        "steps": len(steps), "world_size": metrics["world_size"],
        "tokens_per_second": round(tokens_per_second, 1) if tokens_per_second else None,
        "tokens_per_second_all_steps": metrics["tokens_per_second"],
        "flops_per_token": flops_per_token, "peak_tflops": peak, "mfu": mfu, "peak_memory_gib": peak_memory,
        "first_loss": steps[0]["loss"], "final_loss": steps[-1]["loss"], "wall_seconds": round(wall, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
