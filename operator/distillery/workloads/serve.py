"""Serving: vLLM container arguments for the cluster, and a small CPU server for local use and tests.

`teacher_vllm_args` and `student_vllm_args` are pure: the operator's manifest builders
call them (this module imports neither torch nor transformers at import time).
`main` runs an OpenAI-compatible HTTP server (`/v1/chat/completions`, `/v1/models`,
`/health`) on CPU with transformers, for a tiny model or a small student.
"""

import argparse
import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

from distillery.workloads.datasets import DEFAULT_PVC_BASE

VLLM_PORT = 8000
MAX_NEW_TOKENS = 1024
"""Upper bound for one completion on the CPU server; it is for small models and short replies."""


# Model references -------------------------------------------------------------------------------

def pvc_claim(ref: str) -> str | None:
    """The claim of a `pvc://claim/path` reference, else None. The manifest mounts that claim
    at `<pvc_base>/<claim>` (as datasets are mounted) for `resolve_model_ref` to find the model."""
    if not ref.startswith("pvc://"):
        return None
    return ref.removeprefix("pvc://").partition("/")[0]


def resolve_model_ref(ref: str, pvc_base: str = DEFAULT_PVC_BASE) -> str:
    """What `from_pretrained` and vLLM take for a model reference.

    pvc://claim/path -> <pvc_base>/claim/path; hf://org/name -> org/name (a hub id);
    anything else (a local path or a hub id) as is.
    """
    if ref.startswith("pvc://"):
        claim, _, rel = ref.removeprefix("pvc://").partition("/")
        return str(PurePosixPath(pvc_base, claim, rel))
    if ref.startswith("hf://"):
        return ref.removeprefix("hf://").strip("/")
    return ref


def is_local_ref(ref: str) -> bool:
    """True when `ref` names files on disk rather than a hub id."""
    return ref.startswith(("pvc://", "/", "./", "../", "~"))


# vLLM container arguments -----------------------------------------------------------------------

def teacher_vllm_args(*, model: str, served_model_name: str, tensor_parallel_size: int = 1,
                      extra_args: Sequence[str] = (), port: int = VLLM_PORT,
                      pvc_base: str = DEFAULT_PVC_BASE) -> dict[str, Any]:
    """Arguments and environment for the `vllm/vllm-openai` image serving a teacher.

    `model` is a spec reference (hub id, hf://, pvc://). `extra_args` come last so a user's
    flag overrides ours (vLLM's argparse keeps the last value). A hub token, if any, is the
    manifest's to add as a secretKeyRef env (HF_TOKEN); it is not a plain value.
    Returns {"args": [...], "env": [{"name", "value"}, ...]}.
    """
    args = [
        "--model", resolve_model_ref(model, pvc_base),
        "--served-model-name", served_model_name,
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--host", "0.0.0.0",
        "--port", str(port),
        *extra_args,
    ]
    return {"args": args, "env": _vllm_env(model)}


def student_vllm_args(*, base_model: str, served_model_name: str, adapter_path: str | None = None,
                      merged_path: str | None = None, lora_rank: int = 16, gpus: int = 1,
                      extra_args: Sequence[str] = (), port: int = VLLM_PORT,
                      pvc_base: str = DEFAULT_PVC_BASE) -> dict[str, Any]:
    """Arguments and environment for the `vllm/vllm-openai` image serving the distilled student.

    With `merged_path` (student.mergeWeights, or a full fine-tune's model directory) vLLM serves
    that directory under `served_model_name`. Otherwise it serves `base_model` with the LoRA
    adapter at `adapter_path` registered as `served_model_name`; requests must name it to get
    the adapter. `lora_rank` must be at least the adapter's rank (vLLM's --max-lora-rank).
    `gpus` is the tensor-parallel size. Returns {"args": [...], "env": [...]}.
    """
    if (adapter_path is None) == (merged_path is None):
        raise ValueError("exactly one of adapter_path and merged_path must be given")
    tp = ["--tensor-parallel-size", str(max(gpus, 1))]
    common = ["--host", "0.0.0.0", "--port", str(port)]
    if merged_path is not None:
        args = ["--model", merged_path, "--served-model-name", served_model_name, *tp, *common]
    else:
        args = [
            "--model", resolve_model_ref(base_model, pvc_base),
            "--enable-lora",
            "--lora-modules", f"{served_model_name}={adapter_path}",
            "--max-lora-rank", str(_vllm_lora_rank(lora_rank)),
            *tp, *common,
        ]
    return {"args": [*args, *extra_args], "env": _vllm_env(merged_path or base_model)}


def _vllm_lora_rank(rank: int) -> int:
    """vLLM accepts only these --max-lora-rank values; take the smallest that fits."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512); merge the weights")


def _vllm_env(model: str) -> list[dict[str, str]]:
    if is_local_ref(model):
        # Weights are on a volume: never let a missing file turn into a hub download.
        return [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    return []


# CPU server -------------------------------------------------------------------------------------

class ChatModel:
    """A transformers causal LM behind a lock: one generation at a time, off the event loop."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                 top_p: float, stop: Sequence[str]) -> dict[str, Any]:
        import torch

        from distillery.workloads.finetune_data import prompt_ids

        ids = prompt_ids(self.tokenizer, messages)
        sample = temperature > 0
        options: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_tokens,
                                   "pad_token_id": self.tokenizer.pad_token_id,
                                   "eos_token_id": self.tokenizer.eos_token_id}
        if sample:
            options |= {"temperature": temperature, "top_p": top_p}
        with self.lock, torch.inference_mode():
            output = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                         dtype=torch.long), **options)
        new = output[0, len(ids):].tolist()
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for marker in stop:
            if marker in text:
                text, finish = text[: text.index(marker)], "stop"
        return {"text": text, "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(new)}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


def build_app(chat: ChatModel) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": chat.name, "object": "model", "created": 0, "owned_by": "distillery"}]})

    async def completions(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return _error(400, "messages must be a non-empty list of {role, content}")
        if body.get("model", chat.name) != chat.name:
            return _error(404, f"model {body['model']!r} does not exist; this server has {chat.name!r}")
        if body.get("stream"):
            return _error(400, "streaming is not supported by this server")
        if body.get("n", 1) != 1:
            return _error(400, "only n=1 is supported by this server")
        stop = body.get("stop") or []
        try:
            result = await asyncio.to_thread(
                chat.complete,
                [{"role": str(m.get("role", "user")), "content": m["content"]} for m in messages],
                min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 256), MAX_NEW_TOKENS),
                float(body.get("temperature", 0.0)),
                float(body.get("top_p", 1.0)),
                [stop] if isinstance(stop, str) else list(stop),
            )
        except (TypeError, ValueError) as err:
            return _error(400, str(err))
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "finish_reason": result["finish_reason"]}],
            "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                      "total_tokens": result["prompt_tokens"] + result["completion_tokens"]},
        })

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillery serve",
                                     description="Serve a model on CPU behind an OpenAI-compatible API.")
    parser.add_argument("--model", required=True, help="model directory, pvc:// reference or hub id")
    parser.add_argument("--adapter", help="LoRA adapter directory, merged into the model at load")
    parser.add_argument("--port", type=int, default=VLLM_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", help="name clients send as `model` (default: --model)")
    args = parser.parse_args(argv)

    from distillery.workloads.trainer import ModelLoadError, load_model, load_tokenizer

    try:
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, adapter=args.adapter, merge=True)
    except ModelLoadError as err:
        print(f"distillery serve: {err}", file=sys.stderr)
        return 2
    model.eval()
    chat = ChatModel(model, tokenizer, args.served_model_name or args.model)
    print(f"serving {chat.name} on http://{args.host}:{args.port}", flush=True)
    web.run_app(build_app(chat), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
