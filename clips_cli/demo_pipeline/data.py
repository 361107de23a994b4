"""Step 1 of the demo: generate every data set it uses, in the formats of real data.

Pretraining shards (webdataset, ``org_caption``/``re_caption`` as in Recap-DataComp-1B), a
held-out Karpathy-style retrieval split (5 captions per image), LLaVA-format stage-1/stage-2 JSON
and held-out lmms-eval task files (POPE- and GQA-shaped) from scenes no model trained on. Seeds:
``seed`` for training data, ``seed + 1000`` / ``seed + 2000`` for the held-out sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.synthetic import write_instruction_data, write_retrieval_split, write_task_data, write_webdataset

from .settings import DemoSettings

HELD_OUT_RETRIEVAL, HELD_OUT_LLAVA = 1000, 2000
# The demo scores its LLaVA runs on POPE-style and GQA-style questions, every GQA question of a scene.
TASK_FILES = ("clips_pope.jsonl", "clips_gqa.jsonl")


@dataclass(frozen=True)
class DemoData:
    """Where step 1 wrote each data set."""

    shards: Path
    retrieval: Path
    llava: dict[str, Path]
    tasks: Path
    seed: int


def generate_data(out: Path, s: DemoSettings, seed: int) -> DemoData:
    """Write every demo data set under ``out`` (see module doc); returns their paths."""
    shards = out / "pretrain"
    write_webdataset(shards, s.train_samples, seed=seed, shard_size=max(1, s.train_samples // 4), image_size=s.image_size)
    retrieval = write_retrieval_split(out / "retrieval", s.eval_images, seed=seed + HELD_OUT_RETRIEVAL,
                                      image_size=s.image_size)
    llava = write_instruction_data(out / "llava", s.llava_train_scenes, seed=seed, image_size=s.image_size)
    tasks = out / "lmms_tasks"
    write_task_data(tasks, s.llava_eval_scenes, seed + HELD_OUT_LLAVA, s.image_size, max_objects=3, files=TASK_FILES,
                    gqa_per_scene=None)
    return DemoData(shards, retrieval, llava, tasks, seed)
