"""A local OpenAI-compatible chat server: the teacher in tests, benchmarks and laptop demos.

Answers come from a pluggable responder, deterministically. The default one
recognises the built-in tasks' teacher prompts and answers in the format each
task's parser expects, with the gold answer when a lookup gives one and a
hash-picked valid answer otherwise. Faults (latency, 429 with Retry-After, 5xx,
answers slower than the client's timeout, malformed answers) are drawn per
request, deterministically from the prompt and how often it was asked, so a
retry of the same prompt can succeed where the first request failed.

    async with TeacherServer(faults=FaultConfig(rate_limit=0.2)) as server:
        client = OpenAIChatClient(server.url, "teacher")

    python -m distillery.devcluster.teacher_server --port 8000 --latency-ms 50
"""

import argparse
import asyncio
import hashlib
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from distillery.workloads.tasks import Message, Row, TaskDefinition
from distillery.workloads.tasks.conversation import REPLY_MARKER
from distillery.workloads.tasks.multiple_choice import LETTERS
from distillery.workloads.tasks.nli import LABELS
from distillery.workloads.tasks.summarization import COD_KEY, COD_MISSING_KEY, SUMMARY_MARKER

Outcome = Literal["ok", "400", "429", "500", "503", "slow", "malformed", "length"]
""""length" answers the valid text with finish_reason "length", as a server cut off at max_tokens does."""


class FaultConfig(BaseModel):
    """What goes wrong, and how often. Fractions are per request, drawn deterministically."""

    latency_ms: float = Field(0, ge=0)
    """Added to every response."""
    rate_limit: float = Field(0, ge=0, le=1)
    """Share of requests answered 429 with Retry-After."""
    retry_after_s: float = Field(1.0, ge=0)
    retry_after_http_date: bool = False
    """Send Retry-After as an HTTP date instead of seconds."""
    server_error: float = Field(0, ge=0, le=1)
    """Share of requests answered 500."""
    slow: float = Field(0, ge=0, le=1)
    """Share of requests that wait slow_s before answering (past the client's timeout, typically)."""
    slow_s: float = Field(30.0, ge=0)
    malformed: float = Field(0, ge=0, le=1)
    """Share of requests answered with malformed_text instead of a valid answer."""
    malformed_text: str = ""
    sequence: list[Outcome] = Field(default_factory=list)
    """Outcomes of each prompt's 1st, 2nd, ... request; requests past its end draw from the shares above."""
    only_matching: str | None = None
    """Apply faults only to prompts whose text contains this string."""
    support_n: bool = True
    """False answers one choice whatever `n` asks, as some OpenAI-compatible servers do."""


@dataclass(frozen=True)
class ResponderContext:
    messages: list[Message]
    sample_index: int
    """Which of the request's `n` choices this is."""
    request_index: int
    """How many requests with this prompt came before this one."""


Responder = Callable[[ResponderContext], str]


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """The identity of a prompt: its role/content turns, canonical JSON, hashed."""
    canonical = json.dumps([[m.get("role"), m.get("content")] for m in messages], separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _unit(*parts: object) -> float:
    """A deterministic draw in [0, 1)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def lookup_from_rows(task: TaskDefinition, rows: Sequence[Row]) -> dict[str, str]:
    """Gold answers keyed as the default responder looks them up: by the teacher prompt's last turn."""
    lookup = {}
    for row in rows:
        gold = task.reference(row)
        if gold is not None:
            lookup[task.teacher_messages(row)[-1]["content"]] = gold
    return lookup


_RATIONALE = "Let me reason step by step. I read the input carefully and weigh the evidence it gives."
_WORDS_LIMIT = re.compile(r"at most (\d+) words")
_ROUNDS = re.compile(r"following two steps (\d+) times")
_OPTION = re.compile(r"^([A-Z])\. ", re.M)


class TaskAwareResponder:
    """Well-formed chain-of-thought answers for the built-in tasks' teacher prompts.

    The task is recognised from the instruction its prompt ends with; the answer is the
    lookup's gold answer for the prompt's last turn, else one picked by hashing the prompt.
    """

    def __init__(self, lookup: Mapping[str, str] | None = None) -> None:
        self.lookup = dict(lookup or {})

    def __call__(self, ctx: ResponderContext) -> str:
        last = ctx.messages[-1]["content"] if ctx.messages else ""
        everything = "\n".join(m.get("content", "") for m in ctx.messages)
        gold = self.lookup.get(last)
        pick = int(_unit(last) * 2**32)
        if COD_KEY in last:
            return self._density(last, gold)
        if f"'{SUMMARY_MARKER}:'" in last:
            return f"Key points: the main facts.\n{SUMMARY_MARKER}: {gold or self._lead(last)}"
        if f"'{REPLY_MARKER}:'" in everything:
            return f"Thoughts: the user wants a direct answer.\n{REPLY_MARKER}: {gold or self._echo(last)}"
        if all(f"'Answer: {label}'" in last for label in LABELS):
            return f"{_RATIONALE}\nAnswer: {gold or LABELS[pick % len(LABELS)]}"
        if "choice letter" in last:
            options = _OPTION.findall(last) or list(LETTERS[:4])
            return f"{_RATIONALE}\nAnswer: {gold or options[pick % len(options)]}"
        if "numeric answer" in last:
            return f"{_RATIONALE}\nAnswer: {gold or pick % 1000}"
        if ctx.messages and ctx.messages[-1].get("role") == "user" and len(ctx.messages) > 2:
            return gold or self._echo(last)  # a conversation prompted without chain of thought
        return f"{_RATIONALE}\nAnswer: {gold or 'yes'}"

    @staticmethod
    def _limit(prompt: str) -> int:
        match = _WORDS_LIMIT.search(prompt)
        return int(match.group(1)) if match else 20

    def _lead(self, prompt: str) -> str:
        """A lead-sentence summary: the first words of the article, within the word limit."""
        article = prompt.partition("Article:")[2] or prompt
        return " ".join(article.split()[: min(20, self._limit(prompt))])

    def _density(self, prompt: str, gold: str | None) -> str:
        match = _ROUNDS.search(prompt)
        rounds = int(match.group(1)) if match else 3
        final = gold or self._lead(prompt)
        words = final.split()
        steps = [{COD_MISSING_KEY: f"entity {i + 1}",
                  COD_KEY: " ".join(words[: max(1, len(words) * (i + 1) // rounds)])} for i in range(rounds)]
        return json.dumps(steps, indent=1)

    @staticmethod
    def _echo(text: str) -> str:
        return f"Here is a helpful answer about: {' '.join(text.split()[:12])}"


def _count_tokens(text: str) -> int:
    return len(text.split())


class TeacherServer:
    def __init__(self, responder: Responder | None = None, faults: FaultConfig | None = None, *,
                 model: str = "teacher", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None) -> None:
        self.responder = responder or TaskAwareResponder()
        self.api_key = api_key
        """When set, requests must carry `Authorization: Bearer <api_key>`."""
        self.faults = faults or FaultConfig()
        self.model = model
        self.host, self.port = host, port
        self.requests: Counter[str] = Counter()
        """Requests received per prompt_key, faults included."""
        self.outcomes: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        """Valid answers sent per prompt_key: a request cut off by a stop mid-answer is not one."""
        self.total_requests = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL up to and including /v1, as OpenAI clients want it."""
        if self._url is None:
            raise RuntimeError("the server is not started")
        return self._url

    def requests_for(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return self.requests[prompt_key(messages)]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/admin/stats", self._stats)
        app.router.add_post("/admin/faults", self._set_faults)
        return app

    async def start(self) -> str:
        # Cancel handlers of clients that hung up (a slow answer past the client's timeout) so that
        # stopping the server does not wait for them.
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._url = f"http://{self.host}:{self.port}/v1"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _outcome(self, key: str, index: int, text: str) -> Outcome:
        faults = self.faults
        if faults.only_matching is not None and faults.only_matching not in text:
            return "ok"
        if index < len(faults.sequence):
            return faults.sequence[index]
        shares: tuple[tuple[Outcome, float], ...] = (("429", faults.rate_limit), ("500", faults.server_error),
                                                     ("slow", faults.slow), ("malformed", faults.malformed))
        for outcome, share in shares:
            if share and _unit(key, index, outcome) < share:
                return outcome
        return "ok"

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            messages = [{"role": str(m["role"]), "content": str(m.get("content") or "")}
                        for m in body["messages"]]
            n = int(body.get("n") or 1)
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "body must be JSON with a messages list")
        if body.get("stream"):
            return _error(400, "invalid_request_error", "streaming is not supported by this test server")
        key = prompt_key(messages)
        index = self.requests[key]
        self.requests[key] += 1
        self.total_requests += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.outcomes["401"] += 1
            return _error(401, "invalid_api_key", "missing or wrong bearer token")
        text = "\n".join(m["content"] for m in messages)
        outcome = self._outcome(key, index, text)
        self.outcomes[outcome] += 1
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if outcome == "429":
            retry_after = (formatdate(time.time() + faults.retry_after_s, usegmt=True)
                           if faults.retry_after_http_date else f"{faults.retry_after_s:g}")
            return _error(429, "rate_limit_exceeded", "slow down", {"Retry-After": retry_after})
        if outcome == "400":
            return _error(400, "invalid_request_error", "injected: the prompt exceeds the context length")
        if outcome in ("500", "503"):
            return _error(int(outcome), "server_error", "injected failure")
        if outcome == "slow":
            await asyncio.sleep(faults.slow_s)
        choices = n if faults.support_n else 1
        finish = "length" if outcome == "length" else "stop"
        if outcome == "malformed":
            texts = [faults.malformed_text] * choices
        else:
            texts = [self.responder(ResponderContext(messages, i, index)) for i in range(choices)]
        prompt_tokens = _count_tokens(text)
        completion_tokens = sum(_count_tokens(t) for t in texts)
        if outcome in ("ok", "length"):
            self.answered[key] += 1
        return web.json_response({
            "id": f"chatcmpl-{key[:12]}-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "distillery"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"total_requests": self.total_requests, "prompts": len(self.requests),
                                  "outcomes": dict(self.outcomes), "answered_prompts": len(self.answered),
                                  "max_answers_per_prompt": max(self.answered.values(), default=0),
                                  "max_requests_per_prompt": max(self.requests.values(), default=0)})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = self.faults.model_copy(
                update=FaultConfig.model_validate_json(await request.read()).model_dump(exclude_unset=True))
        except ValidationError as err:
            return _error(400, "invalid_request_error", str(err))
        return web.json_response(self.faults.model_dump())


def _error(status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status, headers=headers)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distillery.devcluster.teacher_server",
                                     description="A local OpenAI-compatible teacher for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    parser.add_argument("--model", default="teacher")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--rate-limit", type=float, default=0, help="share of requests answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    parser.add_argument("--server-error", type=float, default=0, help="share of requests answered 500")
    parser.add_argument("--slow", type=float, default=0, help="share of requests delayed by --slow-seconds")
    parser.add_argument("--slow-seconds", type=float, default=30)
    parser.add_argument("--malformed", type=float, default=0, help="share of requests answered malformed")
    parser.add_argument("--no-n", action="store_true", help="ignore the n parameter (one choice per request)")
    parser.add_argument("--lookup", type=Path, help="JSON object: teacher prompt's last turn -> gold answer")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    faults = FaultConfig(
        latency_ms=args.latency_ms, rate_limit=args.rate_limit, retry_after_s=args.retry_after,
        server_error=args.server_error, slow=args.slow, slow_s=args.slow_seconds, malformed=args.malformed,
        support_n=not args.no_n,
    )
    lookup = json.loads(args.lookup.read_text()) if args.lookup else None
    server = TeacherServer(TaskAwareResponder(lookup), faults,
                           model=args.model, host=args.host, port=args.port)
    url = await server.start()
    print(f"teacher_server listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(serve(parse_args(list(sys.argv[1:] if argv is None else argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
