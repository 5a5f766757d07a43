"""Task definitions: prompts, answer parsing, gold answers and metrics for each `Task`.

    task = get_task(cfg.task, cfg.prompt, cfg.dataset.columns)
    task.teacher_messages(row); task.parse(text, row); task.target(parsed, include_rationale)
    task.student_messages(row); task.prediction(text, row); task.reference(row); task.score(preds, refs)
"""

from collections.abc import Mapping

from distillery.api.spec import PromptSpec, Task
from distillery.workloads.tasks.base import (
    MalformedAnswer,
    Message,
    MissingColumn,
    Parsed,
    Row,
    Score,
    TaskDefinition,
)
from distillery.workloads.tasks.conversation import ConversationTask
from distillery.workloads.tasks.custom import CustomTask
from distillery.workloads.tasks.math import MathTask
from distillery.workloads.tasks.multiple_choice import MultipleChoiceTask
from distillery.workloads.tasks.nli import NliTask
from distillery.workloads.tasks.summarization import SummarizationTask

TASKS: dict[Task, type[TaskDefinition]] = {
    Task.SUMMARIZATION: SummarizationTask,
    Task.CONVERSATION: ConversationTask,
    Task.MATH: MathTask,
    Task.NLI: NliTask,
    Task.MULTIPLE_CHOICE: MultipleChoiceTask,
    Task.CUSTOM: CustomTask,
}


def get_task(task: Task, prompt: PromptSpec, columns: Mapping[str, str]) -> TaskDefinition:
    return TASKS[Task(task)](prompt, columns)


__all__ = [
    "MalformedAnswer",
    "Message",
    "MissingColumn",
    "Parsed",
    "Row",
    "Score",
    "TaskDefinition",
    "get_task",
]
