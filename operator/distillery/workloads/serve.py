"""`distillery serve`: a small OpenAI-compatible server on CPU for a tiny model or a small student.

`/v1/chat/completions`, `/v1/models` and `/health` with transformers, one generation at a
time. The cluster serves with vLLM (see `resources/vllm.py`); this is for local use and tests.
"""

import argparse
import asyncio
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from distillery.workloads.finetune_data import prompt_ids
from distillery.workloads.models import ModelLoadError, load_model, load_tokenizer

DEFAULT_PORT = 8000
MAX_NEW_TOKENS = 1024
"""Upper bound for one completion on the CPU server; it is for small models and short replies."""


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
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="0: any free port (the `serving ... on URL` line says which)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", help="name clients send as `model` (default: --model)")
    parser.add_argument("--chat-template", type=Path,
                        help="a Jinja chat template file that replaces the tokenizer's, as vLLM's flag does")
    args = parser.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.model)
        if args.chat_template is not None:
            tokenizer.chat_template = args.chat_template.read_text()
        model = load_model(args.model, adapter=args.adapter, merge=True)
    except (ModelLoadError, OSError) as err:
        print(f"distillery serve: {err}", file=sys.stderr)
        return 2
    model.eval()
    chat = ChatModel(model, tokenizer, args.served_model_name or args.model)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        # Listening before the line is printed: the URL it names answers (queued until the app runs).
        sock = socket.create_server((args.host, args.port), family=family, backlog=128)
    except OSError as err:
        print(f"distillery serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"serving {chat.name} on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    web.run_app(build_app(chat), sock=sock, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
