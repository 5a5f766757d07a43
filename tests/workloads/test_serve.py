"""`distillery serve` on CPU over real HTTP: the tiny base model with the trained adapter."""

from collections.abc import Iterator
from typing import Any

import pytest

from distillery.api.spec import PromptSpec, Task
from distillery.workloads.tasks import get_task
from distillery.workloads.tasks.nli import LABELS
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.getbasetemp()
    model_dir = tm.tiny_model(root)
    trained = tm.trained_workspace(root, model_dir)
    with tm.serving(["--model", str(model_dir), "--adapter", str(trained / "train" / "adapter"),
                     "--served-model-name", "student"], root) as url:
        yield url


request = tm.http_json


def test_models_lists_the_served_name(server: str) -> None:
    status, body = request(f"{server}/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["student"]


def test_chat_completion_answers_with_the_distilled_adapter(server: str) -> None:
    task = get_task(Task.NLI, PromptSpec(), {})
    row = tm.nli_rows(1)[0]
    status, body = request(f"{server}/v1/chat/completions", {
        "model": "student", "messages": task.student_messages(row), "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == "student"
    assert choice["message"]["role"] == "assistant"
    assert task.prediction(choice["message"]["content"], row) in LABELS, choice
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_finish_reason_says_why_generation_ended(server: str) -> None:
    task = get_task(Task.NLI, PromptSpec(), {})
    messages = task.student_messages(tm.nli_rows(1)[0])
    _, cut = request(f"{server}/v1/chat/completions",
                     {"model": "student", "messages": messages, "max_tokens": 1, "temperature": 0})
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 1
    _, full = request(f"{server}/v1/chat/completions",
                      {"model": "student", "messages": messages, "max_tokens": 8, "temperature": 0})
    text = full["choices"][0]["message"]["content"]
    assert len(text) >= 3, text
    # Greedy decoding repeats itself, so a stop string taken from the full reply is met at the same place.
    _, stopped = request(f"{server}/v1/chat/completions", {"model": "student", "messages": messages,
                                                          "max_tokens": 8, "temperature": 0, "stop": [text[1:3]]})
    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == text[: text.index(text[1:3])]


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400),
    ({"messages": []}, 400),
])
def test_bad_requests_get_openai_errors(server: str, body: dict[str, Any], status: int) -> None:
    got, payload = request(f"{server}/v1/chat/completions", body)
    assert got == status and payload["error"]["message"]
