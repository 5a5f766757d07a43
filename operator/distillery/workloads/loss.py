"""The training loss on packed rows, computed from the decoder's last hidden state.

`model(...).logits` would hold fp32 logits for every position of the micro-batch: with a 150k vocabulary and
16k tokens that is 10 GB, nearly all of it for prompt tokens that carry no loss. Here the decoder's hidden
state is gathered at the answer positions only, and the vocabulary projection and cross-entropy run either
fused (Liger Kernel, on CUDA) or in checkpointed chunks, so no more than one chunk of logits ever exists.

Logit distillation (student.loss kd) adds, at each answer token with a teacher distribution over k tokens,
weight x (T^2 x KL - CE) to that token's cross-entropy, so the token's loss is (1 - weight) x CE + weight x T^2 x KL.
That correction runs in checkpointed chunks over those tokens alone, on CPU and CUDA alike: Liger's fused kernels
distil from a teacher's full logits, not from k log-probabilities, so the cross-entropy stays Liger's on CUDA and
the KD tokens' logits are computed a second time, one chunk at a time.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_LOGITS = 1 << 26
"""fp32 logits per chunk (256 MiB): large enough that the chunk matmuls keep an accelerator busy."""


class UnsupportedModel(ValueError):
    """The model transforms its logits in a way the loss computed from the hidden state would miss."""


def chunk_tokens(vocab_size: int) -> int:
    return max(1, CHUNK_LOGITS // vocab_size)


def _chunk_loss(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """Summed cross-entropy of `lm_head(hidden)` (tokens x hidden) against `targets`, `chunk` tokens at a time.

    Each chunk runs under non-reentrant activation checkpointing: its logits are freed as soon as its loss is
    known and recomputed, one chunk at a time, in the backward pass. That costs one extra chunk matmul, and
    keeps `lm_head` a module call rather than a read of its weight, so ZeRO-3 still gathers the weight and an
    adapter on lm_head still applies; a hand-written autograd Function would have to take the raw weight.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(_chunk_loss, lm_head, hidden[start:start + chunk], targets[start:start + chunk],
                                   use_reentrant=False)
    return total


def distillation_kl(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Per position, KL(p || q) over the teacher's k tokens: p is the teacher's top-k renormalised at
    `temperature` (softmax of logprob / T over the k), q the student's softmax of logits / T over its whole
    vocabulary, read at those k ids. -inf teacher log-probabilities (padding) get no weight."""
    teacher = torch.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    student = torch.log_softmax(logits.float() / temperature, dim=-1).gather(1, teacher_ids)
    # exp(-inf) is 0, but 0 x (-inf - q) is nan: padding's log-probability is replaced before the product.
    finite = torch.where(torch.isfinite(teacher), teacher, 0.0)
    return (teacher.exp() * (finite - student)).sum(-1)


def _chunk_kd_correction(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                         teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    logits = lm_head(hidden).float()
    kl = distillation_kl(logits, teacher_ids, teacher_logprobs, temperature)
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (temperature ** 2 * kl - ce).sum()


def chunked_kd_correction(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                          teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float,
                          chunk: int) -> torch.Tensor:
    """Summed T^2 x KL - CE over the KD positions `hidden`, `chunk` at a time (as chunked_cross_entropy)."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        total = total + checkpoint(_chunk_kd_correction, lm_head, hidden[start:end], targets[start:end],
                                   teacher_ids[start:end], teacher_logprobs[start:end], temperature,
                                   use_reentrant=False)
    return total


def answer_loss_sum(selected: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, chunk: int,
                    fused: Any = None, kd: tuple[float, float] | None = None, kd_rows: torch.Tensor | None = None,
                    kd_ids: torch.Tensor | None = None, kd_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """Summed loss of the answer positions `selected` (hidden states): cross-entropy, fused by `fused` (Liger)
    when given; with `kd` (weight, temperature) and KD positions, each of those contributes
    (1 - weight) x CE + weight x T^2 x KL instead."""
    total: torch.Tensor
    if fused is not None:
        total = fused(selected, lm_head.weight, targets, lm_head.bias, reduction="sum")
    else:
        total = chunked_cross_entropy(selected, lm_head, targets, chunk)
    if kd is not None and kd_rows is not None and kd_ids is not None and kd_logprobs is not None and kd_rows.numel():
        weight, temperature = kd
        total = total + weight * chunked_kd_correction(selected.index_select(0, kd_rows), lm_head,
                                                       targets.index_select(0, kd_rows), kd_ids, kd_logprobs,
                                                       temperature, chunk)
    return total


def _liger_loss() -> Any:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy  # type: ignore[import-untyped,import-not-found,unused-ignore]


class PackedCausalLMLoss(torch.nn.Module):
    """The student as DeepSpeed trains it: token-mean cross-entropy over the answer positions of packed rows.

    The student itself is the only submodule, so checkpoints and saved weights keep its parameter names under
    `model.`; the decoder and lm_head are looked up on each call rather than registered a second time.
    """

    def __init__(self, model: Any, fused: bool, kd: tuple[float, float] | None = None) -> None:
        """`kd`: (weight, temperature) of logit distillation, for batches that carry teacher distributions."""
        super().__init__()
        self.model = model
        self.kd = kd
        config = self._causal_lm().config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1):
            raise UnsupportedModel(f"{config.model_type} scales or caps its logits after lm_head; the trainer's "
                                   f"loss from the hidden state does not")
        # Liger reads lm_head's weight directly: only a plain Linear whose weight is whole on this device.
        plain_head = type(self._causal_lm().get_output_embeddings()) is torch.nn.Linear
        self.liger = _liger_loss() if fused and plain_head else None
        self.chunk = chunk_tokens(config.vocab_size)

    def _causal_lm(self) -> Any:
        # peft's wrapper injects the adapters into the base model's modules in place; the base model's
        # decoder therefore runs with them.
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, loss_positions: torch.Tensor,
                loss_targets: torch.Tensor, kd_rows: torch.Tensor | None = None, kd_ids: torch.Tensor | None = None,
                kd_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        causal_lm = self._causal_lm()
        # No attention_mask and no cache: only then does transformers derive the per-example block-diagonal
        # mask from position_ids (verified on 5.24, sdpa and eager; with a cache it attends across examples).
        hidden = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                         use_cache=False).last_hidden_state
        selected = hidden.flatten(0, 1).index_select(0, loss_positions)
        lm_head = causal_lm.get_output_embeddings()
        total = answer_loss_sum(selected, lm_head, loss_targets, self.chunk, self.liger, self.kd, kd_rows, kd_ids,
                                kd_logprobs)
        return total / max(1, loss_targets.numel())
