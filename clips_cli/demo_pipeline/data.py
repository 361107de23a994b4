"""Step 1 of the demo: generate every data set it uses, in the formats of real data.

Pretraining shards (webdataset, ``org_caption``/``re_caption`` as in Recap-DataComp-1B), a
held-out Karpathy-style retrieval split (5 captions per image), LLaVA-format stage-1/stage-2 JSON
and held-out lmms-eval task files (POPE- and GQA-shaped) from scenes no model trained on. Seeds:
``seed`` for training data, ``seed + 1000`` / ``seed + 2000`` for the held-out sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clips_tower.io import atomic_write_text
from eval.lmms.taskdata import encode_image
from pretrain.synthetic import (generate_sample, scene_questions, write_instruction_data, write_retrieval_split,
                                write_webdataset)

from .settings import DemoSettings

HELD_OUT_RETRIEVAL, HELD_OUT_LLAVA = 1000, 2000


@dataclass(frozen=True)
class DemoData:
    """Where step 1 wrote each data set."""

    shards: Path
    retrieval: Path
    llava: dict[str, Path]
    tasks: Path
    seed: int


def task_records(n: int, seed: int, image_size: int) -> dict[str, list[dict]]:
    """lmms-eval records (:mod:`eval.lmms.taskdata` schema) for ``n`` held-out scenes of ``seed``:
    ``clips_pope.jsonl`` (the yes/no existence pair of each scene) and ``clips_gqa.jsonl`` (the
    colour, shape, count and position questions, one-word/phrase answers)."""
    pope, gqa = [], []
    for i in range(n):
        sample = generate_sample(i, seed, image_size)
        image = encode_image(sample.image)
        for q in scene_questions(sample.scene, np.random.default_rng([seed, i, 5])):
            if q.kind == "exists":
                pope.append({"question_id": len(pope), "image_source": sample.key, "question": q.question,
                             "answer": q.answer, "category": "random", "image": image})
            else:
                gqa.append({"question_id": f"{len(gqa):06d}", "imageId": sample.key, "question": q.question,
                            "answer": q.answer, "types": q.kind, "image": image})
    return {"clips_pope.jsonl": pope, "clips_gqa.jsonl": gqa}


def generate_data(out: Path, s: DemoSettings, seed: int) -> DemoData:
    """Write every demo data set under ``out`` (see module doc); returns their paths."""
    shards = out / "pretrain"
    write_webdataset(shards, s.train_samples, seed=seed, shard_size=max(1, s.train_samples // 4), image_size=s.image_size)
    retrieval = write_retrieval_split(out / "retrieval", s.eval_images, seed=seed + HELD_OUT_RETRIEVAL,
                                      image_size=s.image_size)
    llava = write_instruction_data(out / "llava", s.llava_train_scenes, seed=seed, image_size=s.image_size)
    tasks = out / "lmms_tasks"
    for name, records in task_records(s.llava_eval_scenes, seed + HELD_OUT_LLAVA, s.image_size).items():
        atomic_write_text(tasks / name, "".join(json.dumps(r) + "\n" for r in records))
    return DemoData(shards, retrieval, llava, tasks, seed)
