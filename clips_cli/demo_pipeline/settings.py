"""The demo's sizes and budgets as typed presets (``default`` and ``quick``).

Every pretrained model gets the same budget (``pretrain_steps`` x ``batch_size``); both LLaVA
runs get the same stage-1/stage-2 steps. ``retrieval_seeds`` > 1 retrains the four models with
other seeds to show the seed-to-seed spread next to the differences between recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pretrain.config import CONFIG_DIR

MODEL_CONFIG = Path(__file__).with_name("clips-demo.json")
PRETRAIN_CONFIG = CONFIG_DIR / "clips-demo.yaml"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run.

    Data: ``train_samples`` image/caption pairs, ``eval_images`` held-out retrieval images (5
    captions each), ``llava_train_scenes`` / ``llava_eval_scenes`` for the LLaVA part.
    Budgets: ``pretrain_steps`` of ``batch_size`` per model and seed; ``stage1_steps`` /
    ``stage2_steps`` of ``llava_batch_size`` per LLaVA run. ``caption_examples``: captioner
    outputs shown in the report. ``workers``: processes that train models side by side (one torch
    thread each; the default machine has 2 cores). ``llava_seeds``: the LLaVA comparison is run
    with the towers (and LLaVA training seeds) of the first ``llava_seeds`` pretraining seeds
    (at most ``retrieval_seeds``).
    """

    train_samples: int
    eval_images: int
    pretrain_steps: int
    batch_size: int
    retrieval_seeds: int
    llava_train_scenes: int
    llava_eval_scenes: int
    stage1_steps: int
    stage2_steps: int
    llava_batch_size: int = 32
    caption_examples: int = 4
    image_size: int = 64
    workers: int = 2
    llava_seeds: int = 1


PRESETS: dict[str, DemoSettings] = {
    "default": DemoSettings(train_samples=4000, eval_images=300, pretrain_steps=600, batch_size=64,
                            retrieval_seeds=3, llava_train_scenes=1500, llava_eval_scenes=150,
                            stage1_steps=60, stage2_steps=250),
    "quick": DemoSettings(train_samples=128, eval_images=24, pretrain_steps=5, batch_size=16,
                          retrieval_seeds=2, llava_train_scenes=32, llava_eval_scenes=6,
                          stage1_steps=2, stage2_steps=3, llava_batch_size=8, caption_examples=2, llava_seeds=2),
}


def get_settings(preset: str = "default", **overrides: int) -> DemoSettings:
    """The preset ``preset`` with ``overrides`` (field -> value) applied."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown demo preset {preset!r}; choose from {sorted(PRESETS)}") from None
    settings = replace(base, **overrides)
    if not 1 <= settings.llava_seeds <= settings.retrieval_seeds:
        raise ValueError(f"llava_seeds must be between 1 and retrieval_seeds ({settings.retrieval_seeds}): the LLaVA "
                         f"runs use the pretrained towers of those seeds; got {settings.llava_seeds}")
    return settings
