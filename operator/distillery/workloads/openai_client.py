"""An async client for OpenAI-compatible chat completions (vLLM, hosted APIs).

It owns the transport policy, so callers see either a completion or one final
error: a per-request timeout, retries with exponential backoff and full jitter
for 5xx, 408, connection errors and timeouts, and the server's Retry-After on
429 and 503. Callers bound concurrency themselves (a semaphore or a worker pool).
"""

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp

from distillery.api.pipeline import TEACHER_API_KEY_ENV, TeacherClientConfig
from distillery.api.spec import Sampling
from distillery.workloads.environment import teacher_api_key
from distillery.workloads.teacher_logprobs import TokenLogprobs

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
MISCONFIGURED_STATUSES = frozenset({401, 403, 404})
MAX_RETRY_AFTER_S = 300.0
"""A longer Retry-After is capped: the row's attempt budget, not the server, decides when to give up."""


@dataclass(frozen=True)
class ChatResult:
    texts: list[str]
    """One text per returned choice; fewer than `n` when the server ignores `n`."""
    finish_reasons: list[str]
    """Per choice: "stop", or "length" for an answer cut off at max_tokens."""
    tokens_in: int
    tokens_out: int
    requests: int
    """HTTP requests this call made, retries included."""
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    """Per choice, when the request asked for top_logprobs: the generated tokens' log-probabilities, None for a
    choice the server returned without them."""


class TeacherError(Exception):
    """The request failed for good."""


class TeacherRejected(TeacherError):
    """A 4xx about this request (a prompt over the context length, say): sending it again fails again."""


class TeacherUnavailable(TeacherError):
    """Retries exhausted on 5xx, rate limits, timeouts or connection errors."""


class TeacherMisconfigured(TeacherUnavailable):
    """401, 403 or 404: a wrong key, URL or model name fails every request, so none is retried."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_body(model: str, messages: Sequence[dict[str, str]], sampling: Sampling,
                 n: int, top_logprobs: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if n > 1:
        body["n"] = n
    if top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs
    return body


class _Retryable(Exception):
    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class OpenAIChatClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout_s: float = 300,
        max_attempts: int = 4,
        api_key: str | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_connections: int = 0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_connections = max_connections
        key = api_key if api_key is not None else os.environ.get(TEACHER_API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.requests_sent = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: the caller's concurrency bound is the only one; aiohttp's default of 100
            # connections would silently cap a larger teacher.concurrency.
            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def backoff_s(self, retry: int) -> float:
        """Full jitter: uniform in [0, base * 2^retry], capped, so retries of many rows spread out."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** retry))

    async def chat(self, messages: Sequence[dict[str, str]], sampling: Sampling, n: int = 1,
                   top_logprobs: int | None = None) -> ChatResult:
        """`top_logprobs` asks for the k most likely tokens at each generated token (ChatResult.logprobs)."""
        body = request_body(self.model, messages, sampling, n, top_logprobs)
        last = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                texts, reasons, tokens_in, tokens_out, logprobs = await self._post(body)
            except _Retryable as err:
                last = err.reason
                if attempt == self.max_attempts:
                    break
                wait = err.wait_s if err.wait_s is not None else self.backoff_s(attempt - 1)
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
                continue
            return ChatResult(texts, reasons, tokens_in, tokens_out, attempt,
                              logprobs if top_logprobs is not None else [])
        raise TeacherUnavailable(f"{self.max_attempts} attempts failed, last: {last}")

    async def _post(self, body: dict[str, Any]) -> tuple[list[str], list[str], int, int,
                                                          list[TokenLogprobs | None]]:
        self.requests_sent += 1
        try:
            async with self.session.post(self.url, json=body, timeout=self.timeout) as response:
                if response.status != 200:
                    detail = (await response.text())[:300]
                    if response.status in RETRY_STATUSES:
                        wait = None
                        if response.status in RETRY_AFTER_STATUSES:
                            wait = parse_retry_after(response.headers.get("Retry-After"))
                        raise _Retryable(f"HTTP {response.status}: {detail}", wait)
                    if response.status in MISCONFIGURED_STATUSES:
                        raise TeacherMisconfigured(f"HTTP {response.status} from {self.url}: {detail}")
                    raise TeacherRejected(f"HTTP {response.status}: {detail}")
                payload = await response.json(content_type=None)
        except TimeoutError:
            raise _Retryable(f"no answer within {self.timeout.total:g} s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        except ValueError as err:  # a 200 whose body is not JSON: a proxy page, a truncated body
            raise _Retryable(f"invalid JSON body: {err}") from None
        return parse_completion(payload)


def parse_completion(payload: Any) -> tuple[list[str], list[str], int, int, list[TokenLogprobs | None]]:
    """(texts, finish reasons, prompt tokens, completion tokens, per-choice log-probabilities) of a chat
    completion body."""
    try:
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        texts = [choice["message"].get("content") or "" for choice in choices]
        reasons = [str(choice.get("finish_reason") or "stop") for choice in choices]
        logprobs = [TokenLogprobs.from_openai(choice["logprobs"]["content"])
                    if (choice.get("logprobs") or {}).get("content") is not None else None for choice in choices]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise _Retryable(f"unexpected completion shape: {str(payload)[:200]}") from None
    usage = payload.get("usage") or {}
    return (texts, reasons, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
            logprobs)


def teacher_client(teacher: TeacherClientConfig) -> OpenAIChatClient:
    """A client for a teacher (or teacherStrategy's judge) with its timeout, attempts and bearer token."""
    return OpenAIChatClient(teacher.base_url, teacher.model, timeout_s=teacher.request_timeout_seconds,
                            max_attempts=teacher.max_attempts, api_key=teacher_api_key(teacher))
