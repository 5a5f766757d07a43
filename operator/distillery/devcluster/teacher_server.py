"""A local OpenAI-compatible chat server: the teacher in tests, benchmarks and laptop demos.

Answers come from a pluggable responder, deterministically. The default one
recognises the built-in tasks' teacher prompts and answers in the format each
task's parser expects, with the gold answer when a lookup gives one and a
hash-picked valid answer otherwise. Faults (latency, 429 with Retry-After, 5xx,
answers slower than the client's timeout, malformed answers) are drawn per
request, deterministically from the prompt and how often it was asked, so a
retry of the same prompt can succeed where the first request failed.

A request with `logprobs: true` gets OpenAI-shaped `logprobs.content[].top_logprobs` for each answer: the
answer's tokens under a real tokenizer (`logprobs="tiny"`: the tiny models' own, so they match a tiny student's
vocabulary; `"foreign"`: one trained on other text, as a teacher of another model family has; `"off"`: none,
as an endpoint that does not return them), each with a deterministic made-up distribution over k tokens.

    async with TeacherServer(faults=FaultConfig(rate_limit=0.2)) as server:
        client = OpenAIChatClient(server.url, "teacher")

    python -m distillery.devcluster.teacher_server --port 8000 --latency-ms 50
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import random
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

from distillery.devcluster.tiny import DEFAULT_CORPUS, build_tokenizer
from distillery.resources.teacher import SERVED_NAME
from distillery.workloads.evaluation_judge import JUDGE_ROLE, MAX_SCORE, SCORE_MARKER
from distillery.workloads.generator import REPLY_INSTRUCTION
from distillery.workloads.strategy_judge import VERDICT_MARKER
from distillery.workloads.tasks import Message, Row, TaskDefinition
from distillery.workloads.tasks.conversation import REPLY_MARKER
from distillery.workloads.tasks.metrics import token_f1
from distillery.workloads.tasks.multiple_choice import LETTERS
from distillery.workloads.tasks.nli import LABELS
from distillery.workloads.tasks.persona import IN_CHARACTER
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
_PERSONA_NAME = re.compile(rf"{re.escape(IN_CHARACTER)}(.+?) in every reply")


def _section(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return match.group(1) if match else None


def persona_name(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The persona a prompt's system message carries (workloads/tasks/persona.py), if any."""
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    match = _PERSONA_NAME.search(system)
    return match.group(1) if match else None


def judge_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    """A judge's verdict by a rule a test can recompute: the candidate's token F1 against the reference, times
    ten and rounded; for the persona rubric, 10 when the reply names the persona and 0 otherwise."""
    text = str(messages[-1].get("content", "")) if messages else ""
    persona = _section(text, "persona")
    if persona is not None:
        match = _PERSONA_NAME.search(persona)
        name = match.group(1) if match else ""
        in_character = bool(name) and name.lower() in (_section(text, "reply") or "").lower()
        return (f"The reply {'speaks' if in_character else 'does not speak'} as {name}.\n"
                f"{SCORE_MARKER}: {MAX_SCORE if in_character else 0}")
    overlap = token_f1(_section(text, "candidate") or "", _section(text, "reference") or "")
    return f"The candidate shares {overlap:.0%} of its words with the reference.\n{SCORE_MARKER}: {round(10 * overlap)}"


_CANDIDATE = re.compile(r"^Reply (\d+):\n(.*?)(?=\n\nReply \d+:\n|\n\nWhich reply)", re.M | re.S)


class TaskAwareResponder:
    """Well-formed chain-of-thought answers for the built-in tasks' teacher prompts, and a judge's verdicts
    for their judge prompts (`judge_reply`).

    The task is recognised from the instruction its prompt ends with; the answer is the
    lookup's gold answer for the prompt's last turn, else one picked by hashing the prompt.
    """

    def __init__(self, lookup: Mapping[str, str] | None = None, *, wrong_share: float = 0.0,
                 wrong_salt: str = "", reply_suffix: str = "") -> None:
        self.lookup = dict(lookup or {})
        self.wrong_share = wrong_share
        """Share of prompts (drawn by prompt and `wrong_salt`) answered with another valid answer than the
        lookup's: several such teachers disagree on different rows, so votes and ties happen."""
        self.wrong_salt = wrong_salt
        self.reply_suffix = reply_suffix
        """Appended to conversation replies and summaries: a more detailed teacher, which the judge prefers."""

    def wrong(self, prompt: str) -> bool:
        return bool(self.wrong_share) and _unit("wrong", self.wrong_salt, prompt) < self.wrong_share

    def __call__(self, ctx: ResponderContext) -> str:
        if ctx.messages and ctx.messages[0].get("content", "").startswith(JUDGE_ROLE):
            return judge_reply(ctx.messages)
        last = ctx.messages[-1]["content"] if ctx.messages else ""
        everything = "\n".join(m.get("content", "") for m in ctx.messages)
        if f"'{VERDICT_MARKER}: <number" in last:
            return self._verdict(last)
        if REPLY_INSTRUCTION in last:
            return generated_input(last)
        gold = self.lookup.get(last)
        pick = int(_unit(last) * 2**32)
        if self.wrong(last):
            # Any valid answer but the gold one: shift the hash pick past it.
            return self._wrong_answer(last, gold, pick)
        suffix = f" {self.reply_suffix}" if self.reply_suffix else ""
        if COD_KEY in last:
            return self._density(last, gold)
        if f"'{SUMMARY_MARKER}:'" in last:
            return f"Key points: the main facts.\n{SUMMARY_MARKER}: {gold or self._lead(last)}{suffix}"
        if f"'{REPLY_MARKER}:'" in everything:
            # In character when the system message carries a persona, so persona adherence has something to see.
            name = persona_name(ctx.messages)
            voice = f"{name} here. " if name else ""
            return (f"Thoughts: the user wants a direct answer.\n{REPLY_MARKER}: "
                    f"{voice}{gold or self._echo(last)}{suffix}")
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

    def _wrong_answer(self, prompt: str, gold: str | None, pick: int) -> str:
        """A well-formed answer other than `gold` for the checkable tasks (others get a short reply)."""
        def other(options: Sequence[str]) -> str:
            rest = [o for o in options if o != gold] or list(options)
            return rest[pick % len(rest)]

        if all(f"'Answer: {label}'" in prompt for label in LABELS):
            return f"{_RATIONALE}\nAnswer: {other(LABELS)}"
        if "choice letter" in prompt:
            return f"{_RATIONALE}\nAnswer: {other(_OPTION.findall(prompt) or list(LETTERS[:4]))}"
        if "numeric answer" in prompt:
            number = int(gold) if gold and gold.lstrip("-").isdigit() else pick % 1000
            return f"{_RATIONALE}\nAnswer: {number + 1 + pick % 7}"
        return f"{_RATIONALE}\nAnswer: no"

    @staticmethod
    def _verdict(prompt: str) -> str:
        """A judge: prefers the most detailed reply (most words; the first among equals)."""
        candidates = [(int(number), len(text.split())) for number, text in _CANDIDATE.findall(prompt)]
        best = max(candidates, key=lambda c: (c[1], -c[0]))[0] if candidates else 1
        return f"Reply {best} is the most complete and follows the format.\n{VERDICT_MARKER}: {best}"

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


_SUBJECTS = ("a chef", "the pilot", "two children", "an old farmer", "the librarian", "a cyclist", "my neighbour",
             "the committee", "a young violinist", "the night nurse", "three tourists", "the mayor", "a beekeeper",
             "the goalkeeper", "a retired sailor", "the new intern", "a street painter", "the ferry captain")
_ACTIONS = ("is repairing", "carried", "painted", "is photographing", "sold", "is studying", "found", "cleaned",
            "is measuring", "delivered", "borrowed", "is sketching", "lost", "returned", "is weighing", "ordered")
_OBJECTS = ("a wooden boat", "the broken clock", "seven crates of apples", "an antique map", "the red umbrella",
            "a stack of letters", "the village bell", "a heavy suitcase", "two bicycles", "the glass lantern",
            "a jar of honey", "the silver trophy", "a torn kite", "the brass telescope", "a basket of eggs")
_PLACES = ("near the harbour", "in the old market", "behind the station", "on a rainy morning", "at the town fair",
           "beside the river", "in a crowded hall", "after midnight", "on the hill road", "inside the museum",
           "during the storm", "at the corner shop", "on the frozen lake", "in the school garden")
_NUMBER = re.compile(r"Write new input number (\d+)")
_KEYS = re.compile(r'"([^"]+)"')


def _sentence(seed: int) -> str:
    pick = random.Random(seed)
    return (f"{pick.choice(_SUBJECTS)} {pick.choice(_ACTIONS)} {pick.choice(_OBJECTS)} "
            f"{pick.choice(_PLACES)}.").capitalize()


def _invent(key: str, example: Any, seed: int) -> Any:
    """A value shaped like the seeds' value for `key`, with content drawn from `seed`."""
    pick = random.Random(f"{key}:{seed}")
    if isinstance(example, list) and example and isinstance(example[0], dict):
        return [{"role": "user", "content": f"Could you help me understand why {_sentence(seed).lower()[:-1]}?"}]
    if isinstance(example, dict):
        return {k: _invent(k, v, seed * 13 + i) for i, (k, v) in enumerate(example.items())}
    if isinstance(example, list) and all(isinstance(v, str) and len(v) <= 3 for v in example):
        return list(example)  # choice labels (A, B, C, D) stay as they are
    if isinstance(example, list):
        return [_sentence(seed * 7 + i) for i in range(max(2, len(example)))]
    if isinstance(example, int | float) and not isinstance(example, bool):
        return pick.randint(1, 999)
    if key in ("question", "problem") and any(ch.isdigit() for ch in str(example)):
        a, b = pick.randint(2, 90), pick.randint(2, 40)
        return f"{_sentence(seed)[:-1]} and paid {a} coins for each of {b} items. How many coins in total?"
    if key in ("question", "problem", "stem"):
        return f"Which of these best describes why {_sentence(seed).lower()[:-1]}?"
    sentences = max(1, min(6, len(str(example).split(".")) - 1))
    return " ".join(_sentence(seed * 11 + i) for i in range(sentences))


def generated_input(prompt: str) -> str:
    """A reply to a generation prompt: a new input as the JSON object the prompt asks for. Deterministic per
    input number; some replies are near-duplicates of the previous number's input or of an example, and some
    are malformed (not JSON, a missing key, an empty value), so near-duplicate removal and rejection see work."""
    examples = [json.loads(line) for line in prompt.splitlines() if line.startswith("{")]
    keys = _KEYS.findall(prompt.rpartition(REPLY_INSTRUCTION)[2])
    match = _NUMBER.search(prompt)
    number = int(match.group(1)) if match else 0
    example = examples[0] if examples else {}
    draw = _unit("generate", number)

    def invent(n: int) -> dict[str, Any]:
        return {key: _invent(key, example.get(key, ""), n * 1009 + i) for i, key in enumerate(keys)}

    if draw < 0.04:
        return "Sure! Here is a new example: " + "; ".join(f"{k} = {v}" for k, v in invent(number).items())
    if draw < 0.07 and len(keys) > 1:
        return json.dumps({k: v for k, v in invent(number).items() if k != keys[-1]})
    if draw < 0.09:
        return json.dumps({**invent(number), keys[0]: ""} if keys else {})
    if draw < 0.16 and number > 1:
        # The previous input again, changed only in case and punctuation: a near-duplicate.
        return json.dumps({k: v.upper().replace(".", "!") if isinstance(v, str) else v
                           for k, v in invent(number - 1).items()})
    if draw < 0.20 and example:
        return json.dumps({k: example[k] + " " if isinstance(example.get(k), str) else example.get(k)
                           for k in keys})
    return "```json\n" + json.dumps(invent(number)) + "\n```"


def _count_tokens(text: str) -> int:
    return len(text.split())


LogprobsMode = Literal["tiny", "foreign", "off"]
MAX_TOP_LOGPROBS = 20
"""OpenAI's bound; vLLM's default --max-logprobs."""
# Another family's tokenizer: trained on the answers' own words, so it has whole-word tokens (" reason",
# " evidence") that the tiny models' vocabulary lacks.
_FOREIGN_CORPUS = (_RATIONALE, "Answer: entailment neutral contradiction", "Thoughts: the user wants a direct answer.",
                   "Key points: the main facts. Summary: Reply: Here is a helpful answer about")


class TokenLogprobsMaker:
    """OpenAI `logprobs.content` for a text: its tokens under `tokenizer`, and at each a deterministic
    distribution: the token itself at 0.5-0.9, then k-1 other tokens of the vocabulary at halving shares."""

    def __init__(self, tokenizer: Any) -> None:
        from distillery.workloads.teacher_logprobs import token_bytes_table

        self.tokenizer = tokenizer
        self.bytes = token_bytes_table(tokenizer)
        added = set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.candidates = sorted(index for index in self.bytes if index not in added)

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        data = self.bytes[token_id]
        return {"token": data.decode(errors="replace"), "logprob": logprob, "bytes": list(data)}

    def content(self, text: str, k: int) -> list[dict[str, Any]]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        content = []
        for position, token_id in enumerate(ids):
            share = 0.5 + 0.4 * _unit(text, position)
            start = int(_unit(text, position, "alternatives") * len(self.candidates))
            others = [c for c in itertools.islice(itertools.cycle(self.candidates), start, start + k + 1)
                      if c != token_id][:max(0, k - 1)]
            top = [(token_id, share)] + [(other, (1 - share) * 0.5 ** (j + 1)) for j, other in enumerate(others)]
            content.append({**self.entry(token_id, math.log(share)),
                            "top_logprobs": [self.entry(i, math.log(p)) for i, p in top[:k]]})
        return content


class TeacherServer:
    def __init__(self, responder: Responder | None = None, faults: FaultConfig | None = None, *,
                 model: str = SERVED_NAME, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, logprobs: LogprobsMode = "tiny") -> None:
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
        self.logprobs: LogprobsMode = logprobs
        """Which tokens answer a request for log-probabilities; see the module docstring."""
        self._logprobs_maker: TokenLogprobsMaker | None = None

    def logprobs_maker(self) -> TokenLogprobsMaker:
        """Built on the first request that asks for log-probabilities: training a tokenizer takes a moment."""
        if self._logprobs_maker is None:
            corpus = _FOREIGN_CORPUS if self.logprobs == "foreign" else DEFAULT_CORPUS
            self._logprobs_maker = TokenLogprobsMaker(build_tokenizer(corpus))
        return self._logprobs_maker

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
            top_logprobs = int(body.get("top_logprobs") or 0)
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "body must be JSON with a messages list")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            return _error(400, "invalid_request_error", f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
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
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish,
                         **self._choice_logprobs(body, t, top_logprobs)}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    def _choice_logprobs(self, body: dict[str, Any], text: str, k: int) -> dict[str, Any]:
        if not body.get("logprobs"):
            return {}
        if self.logprobs == "off":
            return {"logprobs": None}
        return {"logprobs": {"content": self.logprobs_maker().content(text, k)}}

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
    parser.add_argument("--model", default=SERVED_NAME)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--rate-limit", type=float, default=0, help="share of requests answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    parser.add_argument("--server-error", type=float, default=0, help="share of requests answered 500")
    parser.add_argument("--slow", type=float, default=0, help="share of requests delayed by --slow-seconds")
    parser.add_argument("--slow-seconds", type=float, default=30)
    parser.add_argument("--malformed", type=float, default=0, help="share of requests answered malformed")
    parser.add_argument("--no-n", action="store_true", help="ignore the n parameter (one choice per request)")
    parser.add_argument("--lookup", type=Path, help="JSON object: teacher prompt's last turn -> gold answer")
    parser.add_argument("--logprobs", choices=["tiny", "foreign", "off"], default="tiny",
                        help="tokens of the log-probabilities it returns: the tiny models' vocabulary, another one, "
                             "or none")
    parser.add_argument("--wrong-share", type=float, default=0,
                        help="share of prompts answered with a valid but wrong answer (several teachers disagree)")
    parser.add_argument("--wrong-salt", default="", help="which prompts are answered wrong (differs per teacher)")
    parser.add_argument("--reply-suffix", default="",
                        help="appended to conversation replies and summaries (a judge prefers the longer reply)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    faults = FaultConfig(
        latency_ms=args.latency_ms, rate_limit=args.rate_limit, retry_after_s=args.retry_after,
        server_error=args.server_error, slow=args.slow, slow_s=args.slow_seconds, malformed=args.malformed,
        support_n=not args.no_n,
    )
    lookup = json.loads(args.lookup.read_text()) if args.lookup else None
    responder = TaskAwareResponder(lookup, wrong_share=args.wrong_share, wrong_salt=args.wrong_salt,
                                   reply_suffix=args.reply_suffix)
    server = TeacherServer(responder, faults,
                           model=args.model, host=args.host, port=args.port, logprobs=args.logprobs)
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
