"""Questions about a :class:`~.scenes.Scene` with their answers, true by construction.

Kinds (the skills the demo's LLaVA is tested on): ``colour`` ("What color is the circle?", only
for a shape that occurs once), ``shape`` ("What shape is the red object?", only for a colour that
occurs once), ``count`` ("How many shapes are there?" -> a number word), ``position`` ("Where is
the red circle?" -> a grid phrase such as "top left") and ``exists`` (POPE-style "Is there a red
circle in the image?" -> yes/no, one present and one absent object per scene).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .scenes import COLOURS, SHAPES, Scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class Question:
    """One question about a scene: its ``kind`` (a key of :data:`QUESTION_KINDS`), text and answer."""

    kind: str
    question: str
    answer: str


def _colour_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    counts = Counter(o.shape for o in scene.objects)
    return [Question("colour", f"What color is the {o.shape}?", o.colour)
            for o in scene.objects if counts[o.shape] == 1]


def _shape_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    counts = Counter(o.colour for o in scene.objects)
    return [Question("shape", f"What shape is the {o.colour} object?", o.shape)
            for o in scene.objects if counts[o.colour] == 1]


def _count_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    return [Question("count", "How many shapes are there?", NUMBER_WORDS[len(scene.objects)])]


def _position_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    return [Question("position", f"Where is the {o.name}?", o.position) for o in scene.objects]


def _exists_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    present = scene.objects[int(rng.integers(len(scene.objects)))]
    shown = {o.name for o in scene.objects}
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in shown]
    other = absent[int(rng.integers(len(absent)))]
    return [Question("exists", f"Is there a {present.name} in the image?", "yes"),
            Question("exists", f"Is there a {other} in the image?", "no")]


# kind -> every question of that kind the scene supports (``exists``: one yes and one no).
QUESTION_KINDS: dict[str, Callable[[Scene, np.random.Generator], list[Question]]] = {
    "colour": _colour_questions,
    "shape": _shape_questions,
    "count": _count_questions,
    "position": _position_questions,
    "exists": _exists_questions,
}


def scene_questions(scene: Scene, rng: np.random.Generator, per_kind: int = 1) -> list[Question]:
    """Up to ``per_kind`` questions of every kind about ``scene`` (``exists`` always gives its
    yes/no pair), in a random order; deterministic given ``rng``."""
    out = []
    for make in QUESTION_KINDS.values():
        options = make(scene, rng)
        keep = len(options) if options and options[0].kind == "exists" else min(per_kind, len(options))
        out += [options[i] for i in sorted(rng.choice(len(options), size=keep, replace=False))] if options else []
    return [out[i] for i in rng.permutation(len(out))]
