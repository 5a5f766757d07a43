"""A tiny random-init causal LM and an offline tokenizer, for tests and local demos.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on a few strings,
so any text still encodes (every byte is in the alphabet), and the model is a
small Llama built from a config. The same seed and corpus give the same files.
"""

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen-style students use; generation stops on <|im_end|> (the tokenizer's eos).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Wider than Llama's 0.02: a tiny random model otherwise has near-uniform output (logits well
# under 1), and attention-only LoRA cannot grow the frozen lm_head to make any answer likely.
INIT_STD = 0.2

DEFAULT_CORPUS = (
    "Question: what is 2 + 3? Answer: 5",
    "Premise: a man plays guitar. Hypothesis: a person makes music. Answer: entailment",
    "Summarize the text in one sentence. The quick brown fox jumps over the lazy dog.",
    "Choose the correct option: (A) red (B) blue (C) green (D) yellow. The answer is B.",
    "Let's think step by step. First add the numbers, then divide by two. The answer is 42.",
    "You are a helpful assistant. Reply with the final answer only.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) , . ? ! : ;",
)


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> "PreTrainedTokenizerFast":
    """A byte-level BPE `PreTrainedTokenizerFast` with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=IM_END, bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
                max_positions: int = 2048, pad_token_id: int = 0, eos_token_id: int | None = None,
                init_std: float = INIT_STD) -> "LlamaForCausalLM":
    """A random-init `LlamaForCausalLM`; weights depend only on the arguments."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, do_sample=False
    )
    return model


def save_tiny_model(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
                    corpus: Sequence[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> Path:
    """Write a tiny model and its tokenizer to `out_dir` (loadable with `from_pretrained`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus, vocab_size)
    model = build_model(
        len(tokenizer), hidden=hidden, layers=layers, heads=heads, seed=seed,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random-init causal LM and tokenizer.")
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = save_tiny_model(args.out_dir, hidden=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed)
    print(json.dumps({"model": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


SUBJECTS = ("a man", "a woman", "the child", "a dog", "the teacher", "a girl", "the farmer", "a boy")
OBJECTS = ("guitar", "football", "chess", "piano", "cards", "tennis")
# The label follows from the hypothesis' predicate, so a tiny model can learn it in a few steps.
HYPOTHESES = (("plays {obj}", "entailment"), ("is asleep", "contradiction"), ("is famous", "neutral"))


def synthetic_nli_rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    """Deterministic premise/hypothesis/label rows for tests and the local demo."""
    rows = []
    for i in range(offset, offset + count):
        subject, obj = SUBJECTS[i % len(SUBJECTS)], OBJECTS[(i // 3) % len(OBJECTS)]
        hypothesis, label = HYPOTHESES[i % len(HYPOTHESES)]
        rows.append({"premise": f"{subject} plays {obj} in the park.",
                     "hypothesis": f"{subject} {hypothesis.format(obj=obj)}.", "label": label})
    return rows
