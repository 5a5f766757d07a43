"""Memory headroom on one 80 GB GPU, from the trainer's own estimate (workloads/memory.py): the largest
student of each shape that fits with LoRA and with full fine-tuning, by token budget.

    PYTHONPATH=operator python tests/bench/bench_memory.py

These are the estimates the trainer uses to decide on gradient checkpointing, not measurements: on a GPU,
`bench_trainer.py` prints the measured peak (`peak_memory_gib`) to check them against. ZeRO-3 with CPU
offload keeps weights, gradients and optimizer state in host memory; the GPU then holds the activations and
the weights of the layers being gathered (two at a time), which is what the last column estimates.
"""

import argparse
import json
from types import SimpleNamespace

from distillery.workloads.memory import GIB, HEADROOM, activation_bytes, model_state_bytes

# Public configs of the shapes the issue names (hidden, layers, intermediate, vocab, heads, kv heads).
SHAPES = {
    "Qwen2.5-1.5B": (1536, 28, 8960, 151936, 12, 2),
    "Qwen2.5-7B": (3584, 28, 18944, 152064, 28, 4),
    "Llama-3.1-8B": (4096, 32, 14336, 128256, 32, 8),
}
BF16 = 2


def parameters(hidden: int, layers: int, intermediate: int, vocab: int, heads: int, kv_heads: int) -> int:
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * intermediate
    return layers * (attention + mlp) + 2 * vocab * hidden


def lora_parameters(hidden: int, layers: int, heads: int, kv_heads: int, rank: int) -> int:
    """Rank-r adapters on q, k, v and o (the spec's default target modules)."""
    kv = kv_heads * (hidden // heads)
    return layers * rank * ((hidden + hidden) * 2 + (hidden + kv) * 2)


def estimate(shape: tuple[int, ...], tokens: int, method: str, rank: int = 16) -> dict[str, float]:
    hidden, layers, intermediate, vocab, heads, kv_heads = shape
    config = SimpleNamespace(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate)
    total = parameters(*shape)
    trainable = lora_parameters(hidden, layers, heads, kv_heads, rank) if method == "lora" else total
    state = model_state_bytes(total, trainable, BF16, world_size=1, zero_stage=2)
    plain = activation_bytes(config, tokens, BF16, checkpointing=False)
    checkpointed = activation_bytes(config, tokens, BF16, checkpointing=True)
    layer_weights = (total - 2 * vocab * hidden) // layers * BF16
    offloaded = checkpointed + 2 * layer_weights + vocab * hidden * BF16
    return {"parameters_b": round(total / 1e9, 2), "model_state_gib": round(state / GIB, 1),
            "activations_gib": round(plain / GIB, 1), "checkpointed_activations_gib": round(checkpointed / GIB, 1),
            "fits_without_checkpointing": state + plain <= HEADROOM * 80 * GIB,
            "fits_with_checkpointing": state + checkpointed <= HEADROOM * 80 * GIB,
            "zero3_cpu_offload_gpu_gib": round(offloaded / GIB, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096, help="token budget per device")
    args = parser.parse_args()
    for name, shape in SHAPES.items():
        for method in ("lora", "full"):
            print(json.dumps({"shape": name, "method": method, "tokens": args.tokens,
                              **estimate(shape, args.tokens, method)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
