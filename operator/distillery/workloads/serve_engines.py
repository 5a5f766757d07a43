"""The two generation engines behind `distillery serve`: llama.cpp for a GGUF file, transformers otherwise.

Both take OpenAI chat messages and give true finish reasons, token counts and, when asked, the generated
tokens' log-probabilities with the k most likely alternatives (OpenAI's `logprobs.content` shape, which
`teacher_logprobs.TokenLogprobs.from_openai` reads). One generation runs at a time: on a CPU the cores are
the limit, and neither model object is safe to share between threads.

Why llama.cpp for the teacher: measured on this project's 2-core machine, Qwen2.5-Coder-0.5B-Instruct with
the math teacher prompt on GSM8K rows generated 24.6 tok/s from its Q4_K_M GGUF under llama.cpp (load 1.4 s)
against 6 tok/s batch 1 and 18 tok/s batch 13 for the same model in transformers (fp32, load 11-32 s).
Transformers stays for what llama.cpp cannot take: a LoRA adapter merged at load (the served student) and
models that have only safetensors.
"""

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from distillery.workloads.finetune_data import prompt_ids

GGUF_FILE = "model.gguf"
"""The GGUF beside a converted model (devcluster/models.py keeps it there) that the llama.cpp engine runs."""
LLAMA_CONTEXT = 4096
"""llama.cpp's context (prompt + reply) in tokens; its default, 512, is shorter than a chain-of-thought."""


class EngineError(ValueError):
    """A request this engine cannot serve (an answer of 400, with this message)."""


@dataclass
class Request:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    top_logprobs: int | None = None
    """None: no log-probabilities; 0 or more: the sampled token's, with that many alternatives."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = field(default=None)


class Engine(Protocol):
    backend: str

    def complete(self, request: Request) -> Completion: ...


def cut_at_stop(text: str, stop: Sequence[str], finish: str) -> tuple[str, str]:
    """The text before the first stop string, as OpenAI servers return it (finish reason "stop")."""
    hits = [text.index(marker) for marker in stop if marker and marker in text]
    return (text[: min(hits)], "stop") if hits else (text, finish)


class LlamaCppEngine:
    """A GGUF model under llama.cpp (llama-cpp-python): the file's own chat template, greedy or sampled."""

    backend = "llama.cpp"

    def __init__(self, gguf: Path, *, threads: int | None, logprobs: bool, chat_template: str | None) -> None:
        from llama_cpp import Llama

        # logits_all keeps every position's logits, which log-probabilities need (llama-cpp-python refuses
        # them otherwise); it costs a context-sized score buffer, so only a server that allows them pays it.
        # llama-cpp-python's default is half the CPUs; a server pod has its cores to itself. Typed Any: its
        # TypedDict messages and its stream-or-response union fit neither the plain dicts served here nor one call.
        self.llm: Any = Llama(model_path=str(gguf), n_ctx=LLAMA_CONTEXT,
                              n_threads=threads or len(os.sched_getaffinity(0)), logits_all=logprobs, verbose=False)
        self.logprobs = logprobs
        if chat_template is not None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            special = self.llm.detokenize
            self.llm.chat_handler = Jinja2ChatFormatter(
                chat_template, eos_token=special([self.llm.token_eos()], special=True).decode(),
                bos_token=special([self.llm.token_bos()], special=True).decode()).to_chat_handler()
        self.lock = threading.Lock()

    def complete(self, request: Request) -> Completion:
        if request.top_logprobs is not None and not self.logprobs:
            raise EngineError("this server was started without --max-logprobs, so it returns no logprobs")
        options: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                                   "top_p": request.top_p, "stop": list(request.stop) or None}
        if request.seed is not None:
            options["seed"] = request.seed
        if request.top_logprobs is not None:
            options |= {"logprobs": True, "top_logprobs": request.top_logprobs}
        with self.lock:
            try:
                out = self.llm.create_chat_completion(messages=request.messages, **options)
            except ValueError as err:  # a prompt longer than the context, say
                raise EngineError(str(err)) from err
        choice, usage = out["choices"][0], out["usage"]
        content = (choice.get("logprobs") or {}).get("content")
        return Completion(choice["message"]["content"] or "", choice["finish_reason"] or "stop",
                          usage["prompt_tokens"], usage["completion_tokens"],
                          [_finite(entry) for entry in content] if content is not None else None)


def _finite(entry: dict[str, Any]) -> dict[str, Any]:
    """Plain floats (llama-cpp-python gives numpy's, which JSON cannot write), and finite ones: JSON has no
    -inf, so a token of zero probability (after top-p) gets the most negative finite float."""
    def fix(value: float) -> float:
        value = float(value)
        return value if math.isfinite(value) else -3.4e38

    return {**entry, "logprob": fix(entry["logprob"]),
            "top_logprobs": [{**alt, "logprob": fix(alt["logprob"])} for alt in entry.get("top_logprobs", [])]}


class TransformersEngine:
    """A transformers causal LM (with a merged LoRA adapter for a served student), fp32 on CPU."""

    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lock = threading.Lock()

    def complete(self, request: Request) -> Completion:
        import torch

        ids = prompt_ids(self.tokenizer, request.messages)
        sample = request.temperature > 0
        options: dict[str, Any] = {"do_sample": sample, "max_new_tokens": request.max_tokens,
                                   "pad_token_id": self.tokenizer.pad_token_id,
                                   "eos_token_id": self.tokenizer.eos_token_id,
                                   "return_dict_in_generate": True,
                                   "output_scores": request.top_logprobs is not None}
        if sample:
            options |= {"temperature": request.temperature, "top_p": request.top_p}
        with self.lock, torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      **options)
        new = out.sequences[0, len(ids):].tolist()
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        text, finish = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), request.stop, finish)
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = [self._token_logprobs(token, scores[0], request.top_logprobs)
                        for token, scores in zip(new, out.scores, strict=True)]
        return Completion(text, finish, len(ids), len(new), logprobs)

    def _token_logprobs(self, token: int, scores: Any, k: int) -> dict[str, Any]:
        import torch

        # generate's scores are after temperature and top-p; a greedy request's are the model's own.
        logp = torch.log_softmax(scores.float(), dim=-1)
        top = torch.topk(logp, k) if k else None
        alternatives = [] if top is None else [
            self._entry(int(i), float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        return {**self._entry(token, float(logp[token])), "top_logprobs": alternatives}

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token])
        return {"token": text, "logprob": logprob if math.isfinite(logprob) else -3.4e38,
                "bytes": list(text.encode())}
