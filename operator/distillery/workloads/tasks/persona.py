"""prompt.persona: the system message the teacher labels in, the student is trained with, and the served
student falls back to when a caller sends no system message of their own; and the rubric evaluation.judge
scores the student's character by."""

import json

from distillery.api.spec import Persona
from distillery.workloads.evaluation_judge import JUDGE_ROLE, MAX_SCORE, SCORE_MARKER, section

IN_CHARACTER = "Stay in character as "
"""Every persona system message says this before the persona's name (the local teacher reads it back)."""


def persona_system(persona: Persona) -> str:
    parts = [f"You are {persona.name}."]
    if persona.traits:
        parts.append(f"Your character: {', '.join(persona.traits)}.")
    if persona.tone:
        parts.append(f"Your tone: {persona.tone}.")
    parts.append(f"{IN_CHARACTER}{persona.name} in every reply, also when asked about yourself.")
    return " ".join(parts)


def with_persona(persona: Persona | None, system: str | None) -> str | None:
    """The persona first (who speaks), then the task's or the row's own system text (what to do)."""
    if persona is None:
        return system
    return persona_system(persona) + (f"\n\n{system}" if system else "")


def persona_chat_template(template: str, persona: Persona) -> str:
    """`template` with the persona as its default system message: a conversation without a system turn gets
    one, so a server that renders prompts with this template (vLLM's --chat-template, or the tokenizer's own
    template where it serves a merged model) answers in character although the caller sends no system prompt;
    a caller's own system turn is left as it is. The prompt it renders is the one the student was trained on."""
    # A JSON string is a valid Jinja string literal: Jinja decodes the same backslash escapes, and non-ASCII
    # text stays as it is (Jinja re-escapes it before decoding).
    literal = json.dumps(persona_system(persona), ensure_ascii=False)
    prefix = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
              f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
              "{%- endif -%}")
    return prefix + template


def persona_judge_messages(persona: Persona, request: str, reply: str) -> list[dict[str, str]]:
    """The persona rubric: does the reply speak as the persona (name, traits, tone)?"""
    system = (f"{JUDGE_ROLE} of how well an assistant keeps to its persona. Rate only the character: whether "
              f"the reply speaks as the persona would, with its name when it refers to itself, its traits and its "
              f"tone, not whether it is correct. Explain in at most two sentences, then end with a last line "
              f"'{SCORE_MARKER}: N' where N is an integer from 0 (out of character) to {MAX_SCORE} (fully in "
              f"character), and nothing after it.")
    user = "\n\n".join([section("persona", persona_system(persona)), section("request", request),
                        section("reply", reply)])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
