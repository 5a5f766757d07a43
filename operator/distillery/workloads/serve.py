"""`distillery serve`: an OpenAI-compatible server on CPU for a small teacher or student.

`/v1/chat/completions` (with `n`, `seed`, temperature, `logprobs`/`top_logprobs`, true `finish_reason` and
usage), `/v1/models` and `/health`. A model directory with a GGUF file runs under llama.cpp, anything else (or
one with a LoRA adapter) under transformers (`serve_engines` says why). The cluster serves with vLLM (see
`resources/vllm.py`); this is for local use, the local kubelet's stand-in for `vllm serve`, and tests.

The HTTP layer is ours rather than llama-cpp-python's own server: that one drops `n` (one choice for any n),
wants the fastapi/uvicorn stack, and would leave the transformers engine without the same API.
"""

import argparse
import asyncio
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from distillery.workloads.models import ModelLoadError, load_model, load_tokenizer, resolve_local_model
from distillery.workloads.serve_engines import (
    GGUF_FILE,
    Engine,
    EngineError,
    LlamaCppEngine,
    Request,
    TransformersEngine,
)

DEFAULT_PORT = 8000
MAX_NEW_TOKENS = 1024
"""Upper bound for one completion on the CPU server; it is for small models and short replies."""
MAX_CHOICES = 16


class ChatModel:
    """One engine under a served name, with the server's limits."""

    def __init__(self, engine: Engine, name: str, max_logprobs: int = 0) -> None:
        self.engine = engine
        self.name = name
        self.max_logprobs = max_logprobs


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
        try:
            n = int(body.get("n") or 1)
            top = _top_logprobs(body, chat.max_logprobs)
            stop = body.get("stop") or []
            seed = body.get("seed")
            base = Request(
                messages=[{"role": str(m.get("role", "user")), "content": m["content"]} for m in messages],
                max_tokens=min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                               MAX_NEW_TOKENS),
                # Greedy unless asked: a CPU server for tests and demos answers reproducibly by default.
                temperature=float(body.get("temperature") or 0.0),
                top_p=float(body.get("top_p") or 1.0),
                stop=[stop] if isinstance(stop, str) else [str(s) for s in stop],
                seed=int(seed) if seed is not None else None,
                top_logprobs=top)
            if not 1 <= n <= MAX_CHOICES:
                raise EngineError(f"n must be between 1 and {MAX_CHOICES}")
            results = []
            for index in range(n):
                # Choices of one request differ by seed, as a server sampling them side by side would make them.
                seed_i = None if base.seed is None else base.seed + index
                if seed_i is None and base.temperature > 0:
                    seed_i = int.from_bytes(os.urandom(4), "little")
                results.append(await asyncio.to_thread(chat.engine.complete, Request(**{**vars(base),
                                                                                        "seed": seed_i})))
        except (TypeError, ValueError) as err:  # EngineError is a ValueError
            return _error(400, str(err))
        prompt_tokens = results[0].prompt_tokens
        completion_tokens = sum(r.completion_tokens for r in results)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "logprobs": {"content": r.logprobs} if r.logprobs is not None else None,
                         "finish_reason": r.finish_reason} for i, r in enumerate(results)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def _top_logprobs(body: dict[str, Any], limit: int) -> int | None:
    """The request's k (OpenAI: `logprobs: true` with `top_logprobs: k`), within the server's --max-logprobs."""
    if not body.get("logprobs"):
        if body.get("top_logprobs") is not None:
            raise EngineError("top_logprobs needs logprobs: true")
        return None
    k = int(body.get("top_logprobs") or 0)
    if not 0 <= k <= limit:
        # vLLM's answer to the same request: the server's --max-logprobs is the bound.
        raise EngineError(f"top_logprobs {k} is outside 0..{limit} (this server's --max-logprobs)")
    return k


def load_engine(model: str, *, engine: str, adapter: str | None, chat_template: str | None,
                max_logprobs: int, threads: int | None) -> Engine:
    """The engine for `model`: llama.cpp when its directory has a GGUF and nothing needs transformers."""
    location = Path(resolve_local_model(model))
    gguf = location / GGUF_FILE if location.is_dir() else location
    if engine == "auto":
        engine = "llama.cpp" if gguf.suffix == ".gguf" and gguf.is_file() and adapter is None else "transformers"
    if engine == "llama.cpp":
        if adapter is not None:
            raise ModelLoadError("the llama.cpp engine serves a GGUF as it is; a LoRA adapter needs transformers")
        if not gguf.is_file():
            raise ModelLoadError(f"model {model!r}: no GGUF file at {gguf}")
        try:
            return LlamaCppEngine(gguf, threads=threads, logprobs=max_logprobs > 0, chat_template=chat_template)
        except (ImportError, ValueError) as err:
            raise ModelLoadError(f"model {model!r}: llama.cpp cannot load {gguf}: {err}") from err
    tokenizer = load_tokenizer(model)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    loaded = load_model(model, adapter=adapter, merge=True)
    loaded.eval()
    return TransformersEngine(loaded, tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillery serve",
                                     description="Serve a model on CPU behind an OpenAI-compatible API.")
    parser.add_argument("--model", required=True, help="model directory, GGUF file, pvc:// reference or hub id")
    parser.add_argument("--adapter", help="LoRA adapter directory, merged into the model at load")
    parser.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default="auto",
                        help="auto: llama.cpp for a directory with model.gguf (and no adapter), else transformers")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="0: any free port (the `serving ... on URL` line says which)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", help="name clients send as `model` (default: --model)")
    parser.add_argument("--chat-template", type=Path,
                        help="a Jinja chat template file that replaces the model's, as vLLM's flag does")
    parser.add_argument("--max-logprobs", type=int, default=20,
                        help="the largest top_logprobs a request may ask for (vLLM's flag; 0: no logprobs)")
    parser.add_argument("--threads", type=int, help="llama.cpp's CPU threads (default: its own choice)")
    args = parser.parse_args(argv)
    try:
        template = args.chat_template.read_text() if args.chat_template is not None else None
        engine = load_engine(args.model, engine=args.engine, adapter=args.adapter, chat_template=template,
                             max_logprobs=args.max_logprobs, threads=args.threads)
    except (ModelLoadError, OSError) as err:
        print(f"distillery serve: {err}", file=sys.stderr)
        return 2
    chat = ChatModel(engine, args.served_model_name or args.model, args.max_logprobs)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        # Listening before the line is printed: the URL it names answers (queued until the app runs).
        sock = socket.create_server((args.host, args.port), family=family, backlog=128)
    except OSError as err:
        print(f"distillery serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"serving {chat.name} ({engine.backend}) on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    web.run_app(build_app(chat), sock=sock, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
