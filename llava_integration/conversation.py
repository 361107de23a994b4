"""Conversation templates for LLaVA training: ``plain`` (stage 1), ``v1``/``vicuna_v1`` (stage 2,
LLaVA-1.5), ``llava_v1`` (same layout, "curious human" system prompt) and ``chat_template`` (the language model's own Jinja chat template).

A template turns one LLaVA conversation (``[{"from": "human"|"gpt", "value": str}, ...]``) into
the training text plus the character spans that carry the loss (the assistant answers and the
separator the template puts after each answer). :mod:`llava_integration.data` maps those spans
onto tokens through the tokenizer's offsets, so masking never depends on re-tokenising pieces.

Registry: :data:`TEMPLATES` (name -> template); :func:`get_template` looks names up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from .chat_template import VICUNA_ROLES, VICUNA_SEP, VICUNA_SYSTEM

IMAGE_PLACEHOLDER = "<image>"
HUMAN, GPT = "human", "gpt"

Span = tuple[int, int]


class ConversationError(ValueError):
    """A conversation does not fit the LLaVA schema or the chosen template."""


@dataclass(frozen=True)
class Rendered:
    """A conversation rendered to text.

    ``targets``: half-open character spans of ``text`` whose tokens are trained on (answers and
    their end-of-turn separators); everything else is context. ``add_special_tokens``: whether
    the tokenizer should add its BOS (False when the template writes it into the text itself).
    """

    text: str
    targets: tuple[Span, ...]
    add_special_tokens: bool


class Template(Protocol):
    """Renders a validated list of turns; raises :class:`ConversationError` if it cannot."""

    name: str

    def render(self, turns: Sequence[Mapping[str, str]], tokenizer: Any) -> Rendered: ...


def validate_turns(turns: Any) -> None:
    """Check the LLaVA conversation schema: a non-empty list of ``{"from", "value"}`` dicts whose
    roles alternate ``human``, ``gpt``, ... starting with ``human`` and ending with ``gpt``, with
    ``<image>`` only in human turns. Raises :class:`ConversationError` saying what is wrong."""
    if not isinstance(turns, list) or not turns:
        raise ConversationError("'conversations' must be a non-empty list")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise ConversationError(f"turn {i} must be a dict with 'from' and a string 'value'")
        expected = HUMAN if i % 2 == 0 else GPT
        if turn["from"] != expected:
            raise ConversationError(f"roles must alternate human/gpt starting with human: turn {i} is "
                                    f"{turn['from']!r}, expected {expected!r}")
        if turn["from"] == GPT and IMAGE_PLACEHOLDER in turn["value"]:
            raise ConversationError(f"turn {i} (gpt) contains {IMAGE_PLACEHOLDER}")
    if len(turns) % 2:
        raise ConversationError("the last turn must be from gpt (an unanswered question trains nothing)")


def count_image_placeholders(turns: Sequence[Mapping[str, str]]) -> int:
    """Number of ``<image>`` placeholders in the conversation."""
    return sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)


def normalise_image_placeholder(value: str) -> str:
    """LLaVA's convention: a message with one ``<image>`` becomes ``"<image>\\n" + rest``; messages
    with none (or several, for multi-image samples) keep their text."""
    if value.count(IMAGE_PLACEHOLDER) != 1:
        return value
    return (IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


@dataclass(frozen=True)
class PlainTemplate:
    """Stage-1 captioning template: ``<image>`` + caption + ``sep``; the caption and ``sep`` train.

    The human turn is replaced by the bare placeholder, as in LLaVA's ``plain`` template.
    """

    name: str = "plain"
    sep: str = "\n"

    def render(self, turns: Sequence[Mapping[str, str]], tokenizer: Any) -> Rendered:
        if len(turns) != 2 or IMAGE_PLACEHOLDER not in turns[0]["value"]:
            raise ConversationError(f"template {self.name!r} needs exactly one human turn containing "
                                    f"{IMAGE_PLACEHOLDER} and one gpt turn; got {len(turns)} turns")
        if count_image_placeholders(turns) != 1:
            raise ConversationError(f"template {self.name!r} takes one image per sample")
        text = IMAGE_PLACEHOLDER
        start = len(text)
        text += turns[1]["value"] + self.sep
        return Rendered(text, ((start, len(text)),), add_special_tokens=True)


@dataclass(frozen=True)
class SeparatorTemplate:
    """Vicuna-style template (LLaVA's ``v1``): ``system + sep``, then for each round
    ``"USER: " + question + sep + "ASSISTANT:" + " " + answer + sep2``.

    The loss covers ``" " + answer + sep2``: the space joins the answer's first token in both
    SentencePiece and byte-level BPE vocabularies, so no token straddles the boundary.
    ``sep2=None`` uses the tokenizer's EOS token (``</s>`` for Vicuna/LLaMA).
    """

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str | None = None

    def render(self, turns: Sequence[Mapping[str, str]], tokenizer: Any) -> Rendered:
        sep2 = self.sep2 if self.sep2 is not None else tokenizer.eos_token
        if not sep2:
            raise ConversationError(f"template {self.name!r} ends answers with the EOS token, but the tokenizer has none")
        text, targets = self.system + self.sep, []
        for question, answer in zip(turns[0::2], turns[1::2]):
            text += f"{self.roles[0]}: {normalise_image_placeholder(question['value'])}{self.sep}{self.roles[1]}:"
            start = len(text)
            text += " " + answer["value"] + sep2
            targets.append((start, len(text)))
        return Rendered(text, tuple(targets), add_special_tokens=True)


@dataclass(frozen=True)
class ChatTemplate:
    """The language model's own Jinja chat template (``tokenizer.apply_chat_template``).

    Each answer's span is what rendering the conversation up to and including that answer adds
    after the generation prompt of the conversation before it, so it holds the answer plus the
    template's end-of-turn marker. A template whose renderings are not prefixes of each other
    (e.g. one that rewrites earlier turns) cannot be masked this way and is an error.
    """

    name: str = "chat_template"

    def render(self, turns: Sequence[Mapping[str, str]], tokenizer: Any) -> Rendered:
        if not getattr(tokenizer, "chat_template", None):
            raise ConversationError(f"template {self.name!r}: the tokenizer has no chat_template")
        messages = [{"role": "user" if t["from"] == HUMAN else "assistant",
                     "content": normalise_image_placeholder(t["value"])} for t in turns]
        targets, text = [], ""
        for k in range(1, len(messages), 2):
            prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
            if not prompt.startswith(text) or not upto.startswith(prompt):
                raise ConversationError(f"template {self.name!r}: the chat template is not prefix-stable "
                                        f"at turn {k}, so answer spans cannot be located")
            targets.append((len(prompt), len(upto)))
            text = upto
        # LLM chat templates usually write BOS themselves; LLaVA processor templates (ours) leave
        # it to the tokenizer: add it only when the rendering does not start with it.
        bos = getattr(tokenizer, "bos_token", None)
        return Rendered(text, tuple(targets), add_special_tokens=not (bos and text.startswith(bos)))


VICUNA_V1 = SeparatorTemplate(name="v1", system=VICUNA_SYSTEM, roles=VICUNA_ROLES, sep=VICUNA_SEP)

LLAVA_V1 = SeparatorTemplate(
    name="llava_v1",
    system="A chat between a curious human and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the human's questions.",
)

TEMPLATES: dict[str, Template] = {
    "plain": PlainTemplate(),
    "v1": VICUNA_V1,
    "vicuna_v1": VICUNA_V1,
    "llava_v1": LLAVA_V1,
    "chat_template": ChatTemplate(),
}


def get_template(name: str) -> Template:
    """The template registered under ``name`` (LLaVA's ``--version``)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template --version {name!r}; choose from {sorted(TEMPLATES)}") from None
