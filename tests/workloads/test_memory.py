"""The token budget and the gradient-checkpointing decision: pure functions of shapes and memory sizes."""

from types import SimpleNamespace

import pytest

from distillery.workloads.memory import (
    GIB,
    activation_bytes,
    default_tokens_per_device,
    model_state_bytes,
    needs_gradient_checkpointing,
)
from distillery.workloads.trainer import row_capacity

# The shape tests/bench/bench_trainer.py measures on a GPU (0.74 B parameters).
BENCH = SimpleNamespace(hidden_size=2048, intermediate_size=4096, num_hidden_layers=16)
H100, L4 = 80 * GIB, 23 * GIB


@pytest.mark.parametrize(("memory", "expected"), [
    (int(139.8 * GIB), 16384), (int(79.1 * GIB), 16384), (int(39.4 * GIB), 8192), (int(44.4 * GIB), 8192),
    (int(22.5 * GIB), 4096), (15 * GIB, 2048), (None, 4 * 1024),
])
def test_the_default_budget_follows_device_memory(memory: int | None, expected: int) -> None:
    assert default_tokens_per_device(memory, max_seq_length=1024, batch_size=4) == expected


def test_the_default_budget_always_holds_a_full_length_example() -> None:
    assert default_tokens_per_device(int(22.5 * GIB), max_seq_length=8192, batch_size=4) == 8192


def test_activation_estimate_scales_with_tokens_and_checkpointing_keeps_layer_inputs() -> None:
    plain = activation_bytes(BENCH, 16384, 2, checkpointing=False)
    # 16 layers x 16384 tokens x (10 x 2048 + 4 x 4096) x 2 bytes
    assert plain == 16 * 16384 * (10 * 2048 + 4 * 4096) * 2
    assert activation_bytes(BENCH, 8192, 2, checkpointing=False) * 2 == plain
    checkpointed = activation_bytes(BENCH, 16384, 2, checkpointing=True)
    assert checkpointed == 16 * 16384 * 2048 * 2 + plain // 16
    assert checkpointed < plain / 5


def test_model_state_shards_with_the_zero_stage() -> None:
    n = 1_000_000
    assert model_state_bytes(n, n, 2, world_size=1, zero_stage=2) == n * (2 + 2 + 12)
    assert model_state_bytes(n, n, 2, world_size=4, zero_stage=0) == n * (2 + 2 + 12)
    assert model_state_bytes(n, n, 2, world_size=4, zero_stage=1) == n * (2 + 2 + 3)
    assert model_state_bytes(n, n, 2, world_size=4, zero_stage=2) == n * (2 + 0.5 + 3)
    assert model_state_bytes(n, n, 2, world_size=4, zero_stage=3) == n * (0.5 + 0.5 + 3)
    assert model_state_bytes(n, 0, 2, world_size=1, zero_stage=2) == 2 * n  # LoRA: frozen weights only


def test_checkpointing_switches_on_only_when_activations_would_not_fit() -> None:
    state = model_state_bytes(740_000_000, 740_000_000, 2, world_size=1, zero_stage=2)
    tokens_fit = activation_bytes(BENCH, 8192, 2, checkpointing=False)
    tokens_overflow = activation_bytes(BENCH, 65536, 2, checkpointing=False)
    assert not needs_gradient_checkpointing(tokens_fit, state, H100)
    assert needs_gradient_checkpointing(tokens_overflow, state, H100)
    assert needs_gradient_checkpointing(tokens_fit, state, L4)
    assert not needs_gradient_checkpointing(tokens_overflow, state, None)  # CPU


def test_rows_span_the_micro_batch_only_under_flash_attention() -> None:
    assert row_capacity("flash_attention_2", 1024, 16384) == 16384
    assert row_capacity("sdpa", 1024, 16384) == 1024
    assert row_capacity("eager", 1024, 16384) == 1024
