"""How many tokens a training micro-batch holds, and whether its activations need checkpointing.

Pure functions of the model's shape and the accelerator's memory, so the choice is the same on every rank and
on every restart.
"""

from typing import Any

GIB = 1 << 30
HEADROOM = 0.8
"""Share of device memory the estimate may fill: the rest is for the allocator's fragmentation, DeepSpeed's
communication buffers and the loss chunk."""
ADAM_BYTES_PER_PARAMETER = 12
"""fp32 master weight and two fp32 moments, as DeepSpeed keeps them for every trainable parameter."""


def default_tokens_per_device(device_memory: int | None, max_seq_length: int, batch_size: int) -> int:
    """The token budget when student.tokensPerDevice is unset, by the accelerator's memory: 16384 on 70 GiB
    or more (H100, H200, A100 80GB), 8192 from 36 GiB (A100 40GB, L40S), 4096 from 20 GiB (L4, A10G), else
    2048; on CPU (`device_memory` None) batch_size full-length examples, as before packing. Never below
    max_seq_length, so any example fits into one micro-batch."""
    if device_memory is None:
        budget = max_seq_length * batch_size
    elif device_memory >= 70 * GIB:
        budget = 16384
    elif device_memory >= 36 * GIB:
        budget = 8192
    elif device_memory >= 20 * GIB:
        budget = 4096
    else:
        budget = 2048
    return max(budget, max_seq_length)


def activation_bytes(config: Any, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Activations autograd keeps for one micro-batch of a Llama-shaped decoder, attention fused (no score
    matrix kept). Per layer and token: the inputs of the two norms, of q/k/v, the rotated q and k, the attention
    output and o_proj's input, the residual (about 10 x hidden), and the gated MLP's gate, up, activation and
    product (4 x intermediate). With checkpointing, only each layer's input stays, plus one layer's full set
    while it is recomputed."""
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    per_layer = tokens * (10 * hidden + 4 * intermediate) * dtype_bytes
    if checkpointing:
        return layers * tokens * hidden * dtype_bytes + per_layer
    return layers * per_layer


def model_state_bytes(parameters: int, trainable: int, dtype_bytes: int, world_size: int, zero_stage: int) -> int:
    """Weights, gradients and AdamW state on one device: ZeRO stage 1 shards the optimizer state over ranks,
    stage 2 the gradients too, stage 3 the weights as well."""
    def shard(size: int, from_stage: int) -> int:
        return size // world_size if zero_stage >= from_stage else size

    return (shard(parameters * dtype_bytes, 3) + shard(trainable * dtype_bytes, 2)
            + shard(trainable * ADAM_BYTES_PER_PARAMETER, 1))


def needs_gradient_checkpointing(activations: int, model_state: int, device_memory: int | None) -> bool:
    """Checkpoint when the plain activations would not fit beside the model state. Never on CPU: host memory
    is not what the estimate models, and recomputation would only slow the run."""
    return device_memory is not None and activations + model_state > HEADROOM * device_memory
