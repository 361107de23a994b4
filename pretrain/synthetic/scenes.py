"""Procedural scenes: a background and a few coloured shapes, each on its own cell of a 3x3 grid.

A :class:`Scene` is plain data (no pixels, no words); :mod:`.render` draws it and :mod:`.captions`
describes it, so every caption is true of the image by construction (except where the web-caption
writer deliberately lies, as alt-text does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (120, 120, 120),
    "black": (20, 20, 25),
    "brown": (110, 75, 45),
}
# Radius of each size as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.14, "large": 0.17}
# Grid cells (row, column) -> the phrase used in captions.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}


@dataclass(frozen=True)
class SceneObject:
    """One shape: names from the vocabularies above; ``cell`` (row, col) of the 3x3 grid and the
    centre ``(x, y)`` as fractions of the image side."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    x: float
    y: float

    @property
    def position(self) -> str:
        """The caption phrase for the object's cell (e.g. ``"top left"``)."""
        return POSITIONS[self.cell]

    @property
    def name(self) -> str:
        """``"colour shape"``, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background name and 1..k objects on distinct grid cells."""

    background: str
    objects: tuple[SceneObject, ...]


def sample_scene(rng: np.random.Generator, max_objects: int = 3) -> Scene:
    """Draw a scene: background, 1..``max_objects`` objects with distinct cells and (colour, shape).

    Objects of the same colour and shape are avoided so every caption phrase names one object.
    """
    n = int(rng.integers(1, max_objects + 1))
    cells = [list(POSITIONS)[i] for i in rng.choice(len(POSITIONS), size=n, replace=False)]
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)
    colours = list(COLOURS)
    objects = []
    for cell, kind in zip(cells, kinds):
        shape, colour = SHAPES[kind % len(SHAPES)], colours[kind // len(SHAPES)]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        # Centre of the cell, jittered so shapes do not sit on a fixed lattice.
        x = (cell[1] + 0.5 + rng.uniform(-0.1, 0.1)) / 3
        y = (cell[0] + 0.5 + rng.uniform(-0.1, 0.1)) / 3
        objects.append(SceneObject(shape, colour, size, cell, float(x), float(y)))
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(background, tuple(objects))
