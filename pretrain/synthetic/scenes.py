"""Procedural scenes: a background and a few coloured shapes, each on its own cell of a 3x3 grid.

Some scenes carry a *label*: a brand-like mark drawn as a coloured band along the bottom edge,
with a name (``acme``, ...) that a web page's alt-text knows and an image recaptioner usually does
not (it sees "a band", not the brand). A :class:`Scene` is plain data (no pixels, no words);
:mod:`.render` draws it and :mod:`.captions` describes it, so what a caption says is true of the
image by construction except where the caption writers are configured to omit, lie or
hallucinate (:class:`~.config.WorldConfig`).
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
# Label name -> colour of its band (none of them is an object or background colour).
LABELS: dict[str, tuple[int, int, int]] = {
    "acme": (0, 205, 205),
    "nova": (250, 120, 190),
    "zenith": (128, 128, 0),
    "pixo": (185, 165, 255),
}
# Height of the label band as a fraction of the image side.
LABEL_BAND = 0.12
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
    """A background name, 1..k objects on distinct grid cells and an optional label name (a key of
    :data:`LABELS`)."""

    background: str
    objects: tuple[SceneObject, ...]
    label: str | None = None


def sample_scene(rng: np.random.Generator, max_objects: int = 3, label_rate: float = 0.0) -> Scene:
    """Draw a scene: background, 1..``max_objects`` objects with distinct cells and (colour, shape),
    and with probability ``label_rate`` a label.

    Objects of the same colour and shape are avoided so every caption phrase names one object. The
    label is drawn last, so scenes without labels are those of ``label_rate=0``.
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
    label = list(LABELS)[int(rng.integers(len(LABELS)))] if rng.random() < label_rate else None
    return Scene(background, tuple(objects), label)
