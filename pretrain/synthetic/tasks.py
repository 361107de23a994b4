"""Question records in the shapes of three real benchmarks, for lmms-eval's local tasks.

The scenes and questions are those of the rest of the package (:func:`~.writers.generate_sample`,
:func:`~.questions.scene_questions`), so the LLaVA training data and these held-out tasks ask the
same kinds of questions about the same world:

- ``clips_pope.jsonl`` (POPE): ``"Is there a {colour} {shape} in the image?"`` -> ``yes``/``no``,
  one present and one absent object per scene (POPE's "random" negative sampling, 50% yes).
- ``clips_gqa.jsonl`` (GQA): colour, shape, count and position questions with one-word/phrase
  answers, ``gqa_per_scene`` per scene (``None``: all of them), ``types`` = the question kind.
- ``clips_mmbench.jsonl`` (MMBench): a colour or shape question with options ``A``-``D`` and the
  answer letter. With ``circular=True`` every question appears once per rotation of its options,
  with ``index = group + rotation * 1_000_000`` (MMBench's CircularEval numbering).

Every record carries its image (lossless PNG, base64, under ``"image"``), so a data folder is
self-contained and ``datasets.load_dataset("json", data_files=...)`` reads it as it is.
:func:`task_records` returns the records; :func:`write_task_data` writes them as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clips_tower.io import atomic_write_text

from .config import DEFAULT_WORLD, WorldConfig
from .questions import Question, scene_questions
from .scenes import COLOURS, SHAPES
from .writers import SyntheticSample, encode_image_base64, generate_sample

OPTION_LETTERS = ("A", "B", "C", "D")
CIRCULAR_STRIDE = 1_000_000  # MMBench: rotation k of question g has index g + k * 1e6
GQA_KINDS = ("colour", "shape", "count", "position")
# Question kind -> the values its answer is drawn from (MMBench distractors).
_ANSWER_SETS = {"colour": tuple(COLOURS), "shape": SHAPES}


def pope_records(samples: Sequence[SyntheticSample], images: Sequence[str], questions: Sequence[list[Question]],
                 rng: np.random.Generator) -> list[dict]:
    """Two POPE records per scene: its ``exists`` pair (present -> ``yes``, then absent -> ``no``)."""
    records = []
    for sample, image, qs in zip(samples, images, questions):
        for q in sorted((q for q in qs if q.kind == "exists"), key=lambda q: q.answer != "yes"):
            records.append({"question_id": len(records), "image_source": sample.key, "question": q.question,
                            "answer": q.answer, "category": "random", "image": image})
    return records


def gqa_records(samples: Sequence[SyntheticSample], images: Sequence[str], questions: Sequence[list[Question]],
                rng: np.random.Generator, per_scene: int | None = 1) -> list[dict]:
    """GQA records: ``per_scene`` of each scene's :data:`GQA_KINDS` questions (``None``: all)."""
    records = []
    for sample, image, qs in zip(samples, images, questions):
        for q in [q for q in qs if q.kind in GQA_KINDS][:per_scene]:
            records.append({"question_id": f"{len(records):05d}", "imageId": sample.key, "question": q.question,
                            "answer": q.answer, "types": q.kind, "image": image})
    return records


def mmbench_records(samples: Sequence[SyntheticSample], images: Sequence[str], questions: Sequence[list[Question]],
                    rng: np.random.Generator, circular: bool = True) -> list[dict]:
    """One MMBench question per scene (its first colour or shape question; the answer + 3
    distractors as ``A``-``D``); with ``circular`` once per rotation of the options."""
    records = []
    for group, (sample, image, qs) in enumerate(zip(samples, images, questions)):
        q = next(q for q in qs if q.kind in _ANSWER_SETS)  # a scene of <= 3 objects always has one
        others = [a for a in _ANSWER_SETS[q.kind] if a != q.answer]
        options = [q.answer, *(others[i] for i in rng.choice(len(others), len(OPTION_LETTERS) - 1, replace=False))]
        options = [options[i] for i in rng.permutation(len(options))]
        for k in range(len(OPTION_LETTERS) if circular else 1):
            rotated = options[k:] + options[:k]
            records.append({
                "index": group + k * CIRCULAR_STRIDE, "question": q.question, "hint": "",
                **dict(zip(OPTION_LETTERS, rotated)), "answer": OPTION_LETTERS[rotated.index(q.answer)],
                "category": f"{q.kind}_recognition",
                "L2-category": "attribute_perception" if q.kind == "colour" else "object_perception",
                "source": "clips-synthetic", "split": "dev", "image": image,
            })
    return records


# Data file -> the function writing its records.
RECORD_WRITERS: dict[str, Callable[..., list[dict]]] = {
    "clips_pope.jsonl": pope_records,
    "clips_gqa.jsonl": gqa_records,
    "clips_mmbench.jsonl": mmbench_records,
}


def task_records(num_scenes: int, seed: int = 0, image_size: int = 64, max_objects: int = 2,
                 files: Sequence[str] = tuple(RECORD_WRITERS), gqa_per_scene: int | None = 1,
                 world: WorldConfig = DEFAULT_WORLD) -> dict[str, list[dict]]:
    """Records of every data file in ``files`` for scenes ``0 .. num_scenes-1`` of ``seed``:
    ``{file name: [record, ...]}`` (fields in the module doc; ``"image"`` is base64 PNG, decode
    with ``eval.lmms.taskdata.decode_image``). Every file asks about the same scenes; each
    scene's questions come from one stream, the MMBench distractors from their own."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if not 1 <= max_objects <= 3:  # > 3 objects can leave a scene without a colour or shape question
        raise ValueError(f"max_objects must be in 1..3, got {max_objects}")
    unknown = set(files) - set(RECORD_WRITERS)
    if unknown:
        raise ValueError(f"unknown task data files {sorted(unknown)}; known: {sorted(RECORD_WRITERS)}")
    samples = [generate_sample(i, seed, image_size, max_objects, world) for i in range(num_scenes)]
    images = [encode_image_base64(s.image) for s in samples]
    questions = [scene_questions(s.scene, np.random.default_rng([seed, i, 5])) for i, s in enumerate(samples)]
    out = {}
    for k, name in enumerate(files):
        extra = {"per_scene": gqa_per_scene} if name == "clips_gqa.jsonl" else {}
        out[name] = RECORD_WRITERS[name](samples, images, questions, np.random.default_rng([seed, 6, k]), **extra)
    return out


def write_task_data(out_dir: str | Path, num_scenes: int = 100, seed: int = 0, image_size: int = 64,
                    max_objects: int = 2, files: Sequence[str] = tuple(RECORD_WRITERS),
                    gqa_per_scene: int | None = 1, world: WorldConfig = DEFAULT_WORLD) -> dict[str, Path]:
    """:func:`task_records` written atomically as ``out_dir/<file name>`` (one JSON record per
    line); returns ``{file name: path}``. Records: POPE 2 per scene, GQA ``gqa_per_scene``,
    MMBench 4 (circular)."""
    out_dir = Path(out_dir)
    written = {}
    for name, records in task_records(num_scenes, seed, image_size, max_objects, files, gqa_per_scene, world).items():
        atomic_write_text(out_dir / name, "".join(json.dumps(r) + "\n" for r in records))
        written[name] = out_dir / name
    return written

