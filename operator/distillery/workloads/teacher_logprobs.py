"""The teacher's token log-probabilities for logit distillation (student.loss kd).

The labeler stores, with each label, the teacher's generated tokens and its top-k alternatives at each of
them, as an OpenAI-compatible server returns them (`logprobs.content[].top_logprobs`). The trainer maps those
tokens onto the student's vocabulary by their bytes, refuses a student that lacks any of them before any GPU
work, and lines the teacher's tokens up with the student's answer tokens.
"""

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

LOGPROB_DECIMALS = 4
"""Stored log-probabilities are rounded to this many decimals: a relative error of 1e-4 in a probability is far
below what training resolves, and a label line at k=20 shrinks by nearly half (`-0.5210174616676734` is `-0.521`)."""

TopK = tuple[list[int], list[float]]
"""At one answer token: the teacher's k most likely tokens as student ids, and their log-probabilities."""


def token_text(data: bytes) -> str:
    """A token's bytes as a string of one character per byte (latin-1).

    Byte-level tokenizers split multi-byte characters, so a token may be a fragment that is not UTF-8; this keeps
    every token exactly, and ASCII tokens stay as compact in JSON as their text."""
    return data.decode("latin-1")


def text_bytes(token: str) -> bytes:
    return token.encode("latin-1")


class TokenLogprobs(BaseModel):
    """The tokens the teacher generated for one answer and, at each, its top-k alternatives with their
    log-probabilities (at temperature 1, as the server reports them). Tokens are `token_text` strings."""

    tokens: list[str]
    top: list[list[tuple[str, float]]]

    @classmethod
    def from_openai(cls, content: Sequence[dict[str, Any]]) -> "TokenLogprobs":
        """From a chat completion choice's `logprobs.content`; `bytes` is preferred over `token`, whose text
        cannot spell a fragment of a multi-byte character."""
        tokens: list[str] = []
        top: list[list[tuple[str, float]]] = []
        for entry in content:
            tokens.append(_entry_token(entry))
            top.append([(_entry_token(alt), round(float(alt["logprob"]), LOGPROB_DECIMALS))
                        for alt in entry.get("top_logprobs") or []])
        return cls(tokens=tokens, top=top)


def _entry_token(entry: dict[str, Any]) -> str:
    raw = entry.get("bytes")
    return token_text(bytes(raw)) if raw is not None else token_text(str(entry["token"]).encode())


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _decoder_types(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    stack = [json.loads(backend.to_str()).get("decoder") or {}]
    found: set[str] = set()
    while stack:
        decoder = stack.pop()
        found.add(str(decoder.get("type")))
        stack.extend(decoder.get("decoders") or [])
    return found


def token_bytes_table(tokenizer: Any) -> dict[int, bytes]:
    """Every token id of a Hugging Face tokenizer and the bytes it stands for.

    Byte-level BPE (GPT-2, Llama 3, Qwen) spells bytes with the printable characters of GPT-2's table;
    SentencePiece-style vocabularies (Llama 2, Mistral, Gemma) write a space as U+2581 and a lone byte as
    <0xNN>; added tokens (chat markers) stand for their own text. transformers has no public per-token bytes
    API, so this reads the tokenizer's decoder type and applies the matching convention.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    added = {index: str(token) for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    decoders = _decoder_types(tokenizer)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    table: dict[int, bytes] = {}
    for token, index in tokenizer.get_vocab().items():
        if index in added:
            table[index] = added[index].encode()
        elif "ByteLevel" in decoders:
            table[index] = bytes(byte_of[char] for char in token) if all(c in byte_of for c in token) \
                else token.encode()
        elif (fallback := _BYTE_FALLBACK.match(token)) is not None:
            table[index] = bytes([int(fallback.group(1), 16)])
        else:
            table[index] = token.replace("\u2581", " ").encode()
    return table


LOSSY = "\ufffd".encode()
"""U+FFFD in a token: a server that renders each token as text (vLLM's `tokenizer.decode` of one id) cannot
spell a fragment of a multi-byte character and sends the replacement character instead. Such a token says
nothing about the vocabulary: it is left out of the check, out of the top-k, and an example whose trained text
contains one is not aligned."""


class VocabularyMismatch(ValueError):
    """The teacher returned tokens the student's vocabulary does not have."""


class StudentVocabulary:
    """The student's token ids by the bytes they stand for."""

    def __init__(self, tokenizer: Any) -> None:
        self.ids: dict[bytes, int] = {}
        # Lowest id first: where two ids spell the same bytes, the ordinary token wins over a later added one.
        for index, data in sorted(token_bytes_table(tokenizer).items()):
            self.ids.setdefault(data, index)

    def id(self, token: str) -> int | None:
        """The student id of a stored teacher token; None for one it lacks or a lossy one (see LOSSY)."""
        data = text_bytes(token)
        return None if LOSSY in data else self.ids.get(data)

    def check(self, logprobs: Iterable[TokenLogprobs]) -> int:
        """The number of distinct teacher tokens seen; VocabularyMismatch if the student lacks any of them."""
        seen: set[str] = set()
        for entry in logprobs:
            seen.update(entry.tokens)
            seen.update(token for top in entry.top for token, _ in top)
        missing = sorted(token for token in seen if LOSSY not in text_bytes(token) and self.id(token) is None)
        if missing:
            shown = ", ".join(repr(text_bytes(t).decode(errors="replace")) for t in missing[:5])
            raise VocabularyMismatch(
                f"student.loss kd: the student's tokenizer lacks {len(missing)} of the {len(seen)} distinct tokens "
                f"the teacher returned (e.g. {shown}); logit distillation needs a student that shares the teacher's "
                f"vocabulary (the same model family), or student.loss.type sft")
        return len(seen)

    def align(self, target: str, student_ids: Sequence[int], logprobs: TokenLogprobs) -> list[TopK] | None:
        """The teacher's top-k at each of the student's tokens of `target`, or None where they do not line up.

        The student is trained on `target` (the answer, or the rationale and the answer), a part of what the
        teacher generated. The teacher's distribution at a token is a distribution over the student's next token
        only if both were conditioned on the same text and the same token boundaries, so KD applies to an example
        only when `target` occurs in the teacher's text (its last occurrence) starting and ending at teacher
        token boundaries, and the teacher tokens that spell it, mapped to student ids, are exactly the student's
        own tokenization of `target`. Otherwise the example is trained on cross-entropy alone (and counted).
        """
        pieces = [text_bytes(token) for token in logprobs.tokens]
        want = target.encode()
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        starts = [end - len(piece) for end, piece in zip(ends, pieces, strict=True)]
        at = b"".join(pieces).rfind(want)
        if not want or at < 0 or at not in starts or at + len(want) not in ends:
            return None
        first, last = starts.index(at), ends.index(at + len(want))
        if [self.id(token) for token in logprobs.tokens[first:last + 1]] != list(student_ids):
            return None
        aligned: list[TopK] = []
        for top in logprobs.top[first:last + 1]:
            kept = [(index, logprob) for token, logprob in top if (index := self.id(token)) is not None]
            aligned.append(([index for index, _ in kept], [logprob for _, logprob in kept]))
        return aligned
