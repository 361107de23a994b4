"""Synthetic data for the local lmms-eval tasks: scenes of coloured shapes with questions in the
shapes of three real benchmarks.

- ``clips_pope.jsonl`` (POPE): ``"Is there a {colour} {shape} in the image?"`` -> ``yes``/``no``,
  one present and one absent object per scene (POPE's "random" negative sampling, 50% yes).
- ``clips_gqa.jsonl`` (GQA): ``"What colour is the {shape}?"`` -> colour, or
  ``"Which shape is {colour}?"`` -> shape; short answers scored by exact match.
- ``clips_mmbench.jsonl`` (MMBench): the same two question kinds with options ``A``-``D`` and the
  answer letter. With ``circular=True`` every question appears once per rotation of its options,
  with ``index = group + rotation * 1_000_000`` (MMBench's CircularEval numbering).

Every record is one JSON line that carries its image (PNG, base64, under ``"image"``), so a data
folder is self-contained and movable and ``datasets.load_dataset("json", data_files=...)`` reads
it as it is. Other generators (richer scenes) write records with the same fields, using
:func:`encode_image` for the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw, UnidentifiedImageError

from clips_tower.io import atomic_write_text

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUND = (128, 128, 128)
OPTION_LETTERS = ("A", "B", "C", "D")
CIRCULAR_STRIDE = 1_000_000  # MMBench: rotation k of question g has index g + k * 1e6

# Task name -> the data file its YAML reads (relative to the task folder).
TASK_DATA_FILES = {
    "clips_pope": "clips_pope.jsonl",
    "clips_gqa": "clips_gqa.jsonl",
    "clips_mmbench": "clips_mmbench.jsonl",
    "clips_mmbench_mcppl": "clips_mmbench.jsonl",
}


class TaskDataError(ValueError):
    """A task record cannot be used (its image does not decode); the message names the record."""


def encode_image(image: Image.Image) -> str:
    """PNG-encode ``image`` and return it as base64 text (the ``"image"`` field of a record)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(text: str, record: str = "record") -> Image.Image:
    """Inverse of :func:`encode_image` (any PIL-readable format); raises :class:`TaskDataError`
    naming ``record`` if ``text`` is not a base64-encoded image."""
    try:
        return Image.open(io.BytesIO(base64.b64decode(text, validate=True))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, TypeError, ValueError, OSError) as e:
        raise TaskDataError(f"{record}: 'image' is not a base64-encoded image ({e})") from None


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene, drawn inside grid cell ``cell`` (0-3, row-major 2x2)."""

    shape: str
    colour: str
    cell: int


def random_scene(rng: random.Random, max_objects: int = 2) -> tuple[SceneObject, ...]:
    """1..``max_objects`` objects with distinct shapes, colours and cells."""
    n = rng.randint(1, max_objects)
    return tuple(SceneObject(s, c, cell) for s, c, cell in
                 zip(rng.sample(SHAPES, n), rng.sample(sorted(COLOURS), n), rng.sample(range(4), n)))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + w // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        draw.rectangle((x0 + w // 3, y0, x1 - w // 3, y1), fill=fill)
        draw.rectangle((x0, y0 + h // 3, x1, y1 - h // 3), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw_scene(objects: Sequence[SceneObject], size: int = 64) -> Image.Image:
    """Render ``objects`` on a grey ``size`` x ``size`` canvas, one per quarter of the image."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half, margin = size // 2, max(1, size // 16)
    for obj in objects:
        x, y = (obj.cell % 2) * half, (obj.cell // 2) * half
        _draw_shape(draw, obj.shape, (x + margin, y + margin, x + half - margin, y + half - margin), COLOURS[obj.colour])
    return image


def _colour_or_shape_question(rng: random.Random, objects: Sequence[SceneObject]) -> tuple[str, str, str, list[str]]:
    """(kind, question, answer, the answer's alternatives) about one object of the scene."""
    obj = rng.choice(objects)
    if rng.random() < 0.5:
        return "colour", f"What colour is the {obj.shape}?", obj.colour, sorted(COLOURS)
    return "shape", f"Which shape is {obj.colour}?", obj.shape, list(SHAPES)


def pope_records(scenes: Sequence[tuple[SceneObject, ...]], images: Sequence[str], rng: random.Random) -> list[dict]:
    """Two POPE records per scene: a present object (``yes``) and an absent one (``no``). An object
    is a coloured shape ("red circle"); the absent one is a random combination not in the scene
    (POPE's "random" negative sampling)."""
    records = []
    for i, (objects, image) in enumerate(zip(scenes, images)):
        present = rng.choice(objects)
        shown = {(o.colour, o.shape) for o in objects}
        absent = rng.choice([(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in shown])
        for (colour, shape), answer in (((present.colour, present.shape), "yes"), (absent, "no")):
            records.append({"question_id": len(records), "image_source": f"scene-{i:05d}",
                            "question": f"Is there a {colour} {shape} in the image?", "answer": answer,
                            "category": "random", "image": image})
    return records


def gqa_records(scenes: Sequence[tuple[SceneObject, ...]], images: Sequence[str], rng: random.Random) -> list[dict]:
    """One GQA record per scene: a colour or a shape question with a one-word answer."""
    records = []
    for i, (objects, image) in enumerate(zip(scenes, images)):
        kind, question, answer, _ = _colour_or_shape_question(rng, objects)
        records.append({"question_id": f"{i:05d}", "imageId": f"scene-{i:05d}", "question": question,
                        "answer": answer, "types": kind, "image": image})
    return records


def mmbench_records(scenes: Sequence[tuple[SceneObject, ...]], images: Sequence[str], rng: random.Random,
                    circular: bool = True) -> list[dict]:
    """One MMBench question per scene (the answer + 3 distractors as ``A``-``D``); with ``circular``
    each question once per rotation of its options (``index = group + rotation * 1e6``)."""
    records = []
    for group, (objects, image) in enumerate(zip(scenes, images)):
        kind, question, answer, alternatives = _colour_or_shape_question(rng, objects)
        options = [answer, *rng.sample([a for a in alternatives if a != answer], len(OPTION_LETTERS) - 1)]
        rng.shuffle(options)
        for k in range(len(OPTION_LETTERS) if circular else 1):
            rotated = options[k:] + options[:k]
            records.append({
                "index": group + k * CIRCULAR_STRIDE, "question": question, "hint": "",
                **dict(zip(OPTION_LETTERS, rotated)), "answer": OPTION_LETTERS[rotated.index(answer)],
                "category": f"{kind}_recognition",
                "L2-category": "attribute_perception" if kind == "colour" else "object_perception",
                "source": "clips-synthetic", "split": "dev", "image": image,
            })
    return records


# Data file -> the function writing its records.
RECORD_WRITERS: dict[str, Callable[..., list[dict]]] = {
    "clips_pope.jsonl": pope_records,
    "clips_gqa.jsonl": gqa_records,
    "clips_mmbench.jsonl": mmbench_records,
}


def write_task_data(out_dir: str | Path, num_scenes: int = 100, seed: int = 0, image_size: int = 64,
                    max_objects: int = 2) -> dict[str, Path]:
    """Generate ``num_scenes`` scenes of 1..``max_objects`` shapes (seeded) and write the three data
    files into ``out_dir`` (atomically). Each file's questions use the same scenes but their own
    random stream.

    Returns ``{file name: path}``. Records: POPE 2 per scene, GQA 1, MMBench 4 (circular).
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if not 1 <= max_objects <= len(SHAPES):
        raise ValueError(f"max_objects must be in 1..{len(SHAPES)}, got {max_objects}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    scenes = [random_scene(rng, max_objects) for _ in range(num_scenes)]
    images = [encode_image(draw_scene(s, image_size)) for s in scenes]
    written = {}
    for name, make in RECORD_WRITERS.items():
        records = make(scenes, images, random.Random(f"{seed}/{name}"))
        atomic_write_text(out_dir / name, "".join(json.dumps(r) + "\n" for r in records))
        written[name] = out_dir / name
    return written
