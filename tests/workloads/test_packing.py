"""Packed training batches and the chunked loss against the plain, one-example-at-a-time computation.

Tolerance: fp32 on CPU, atol 1e-5 (rtol 1e-4) on the loss and on every parameter's gradient; the packed and
unpacked runs differ only in summation order.
"""

import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from distillery.api.spec import StudentSpec
from distillery.devcluster.tiny import build_model
from distillery.workloads.finetune_data import IGNORE_INDEX, Example, pack
from distillery.workloads.loss import PackedCausalLMLoss, chunked_cross_entropy
from distillery.workloads.models import prepare_model

VOCAB, PAD = 97, 0
ATOL, RTOL = 1e-5, 1e-4

pytestmark = pytest.mark.workload


def make_examples(count: int, seed: int = 1) -> list[Example]:
    """Prompt (no loss) then answer (loss), of assorted lengths."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        prompt, answer = rng.randint(3, 30), rng.randint(1, 12)
        ids = [rng.randrange(1, VOCAB) for _ in range(prompt + answer)]
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def tiny_student(attn: str, method: str = "full") -> Any:
    model = build_model(VOCAB, hidden=32, layers=2, heads=4, seed=3, pad_token_id=PAD)
    model.config._attn_implementation = attn
    student = StudentSpec(model="unused", method=method,
                          lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model = prepare_model(model, student)
    if method == "lora":
        torch.manual_seed(5)
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter matter to the gradients
                param.data.normal_(std=0.1)
    return model


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def unpacked_loss(model: Any, examples: list[Example]) -> torch.Tensor:
    """Each example alone through the model's own forward and loss, token-mean over the whole batch."""
    total, count = torch.zeros(()), 0
    for example in examples:
        out = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels]))
        answer_tokens = sum(label != IGNORE_INDEX for label in example.labels[1:])
        total = total + out.loss * answer_tokens
        count += answer_tokens
    return total / count


@pytest.mark.parametrize(("attn", "method"), [("sdpa", "full"), ("eager", "full"), ("sdpa", "lora")])
def test_a_packed_batch_matches_the_examples_run_one_by_one(attn: str, method: str) -> None:
    examples = make_examples(9)
    model = tiny_student(attn, method)
    reference = unpacked_loss(model, examples)
    reference.backward()
    expected = gradients(model)
    model.zero_grad()

    batch = pack(examples, PAD, row_capacity=64)
    assert batch["input_ids"].shape[0] < len(examples)  # several examples share a row
    loss = PackedCausalLMLoss(model, fused=False)(**batch)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=ATOL, rel=RTOL)
    got = gradients(model)
    assert got.keys() == expected.keys() and expected
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=ATOL, rtol=RTOL, msg=name)


def test_gradient_checkpointing_changes_nothing() -> None:
    examples = make_examples(6, seed=2)
    batch = pack(examples, PAD, row_capacity=64)
    results = []
    for checkpointing in (False, True):
        model = tiny_student("sdpa")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss = PackedCausalLMLoss(model, fused=False)(**batch)
        loss.backward()
        results.append((loss.item(), gradients(model)))
    assert results[1][0] == pytest.approx(results[0][0], abs=ATOL)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=ATOL, rtol=RTOL, msg=name)


def test_chunked_cross_entropy_equals_the_plain_loss_and_gradients() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))

    plain = F.cross_entropy(head(hidden), targets, reduction="sum")
    plain.backward()
    expected = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None

    chunked = chunked_cross_entropy(hidden, head, targets, chunk=5)  # 4 full chunks and a partial one
    chunked.backward()
    assert chunked.item() == pytest.approx(plain.item(), abs=ATOL, rel=RTOL)
    for got, want in zip([hidden.grad, head.weight.grad, head.bias.grad], expected, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_the_loss_never_builds_logits_for_the_whole_batch() -> None:
    model = tiny_student("sdpa")
    batch = pack(make_examples(8, seed=4), PAD, row_capacity=64)
    widths = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[0]))
    loss_model = PackedCausalLMLoss(model, fused=False)
    loss_model.chunk = 7
    loss_model(**batch).backward()
    handle.remove()
    answer_tokens = batch["loss_targets"].numel()
    # Forward once per chunk and again in the backward pass; answer positions only, never a whole row.
    assert sum(widths) == 2 * answer_tokens and max(widths) == 7
    assert answer_tokens < batch["input_ids"].numel() / 2
