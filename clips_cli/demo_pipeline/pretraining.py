"""Step 2 of the demo: pretrain the four models of the paper's ablation with one budget.

Each row is a text-source recipe of :mod:`pretrain.recipes` run through the real trainer from
``pretrain/configs/clips-demo.yaml``; only the recipe (and the seed) changes between runs.
"""

from __future__ import annotations

from pathlib import Path

from .settings import MODEL_CONFIG, PRETRAIN_CONFIG, DemoSettings

# Report label -> recipe name; the paper's ablation rows, in its order.
MODELS: dict[str, str] = {
    "CLIP (web captions)": "clip-web",
    "CLIP (full synthetic captions)": "clip-synthetic-full",
    "CLIP (sub-captions)": "clip-synthetic-partial",
    "CLIPS (web + sub-caption + captioner)": "clips",
}
WEB_BASELINE, CLIPS_MODEL = "CLIP (web captions)", "CLIPS (web + sub-caption + captioner)"


def pretrain_model(recipe: str, shards: Path, out_dir: Path, s: DemoSettings, seed: int,
                   progress: bool = True) -> dict:
    """Train ``recipe`` on ``shards`` for the demo budget; returns the trainer's summary (its
    ``checkpoint`` + ``/model`` is a ``clips_tower.load_model`` folder)."""
    from pretrain.config import load_config
    from pretrain.trainer import train

    cfg = load_config(PRETRAIN_CONFIG, [
        "--model.name", str(MODEL_CONFIG), "--recipe.name", recipe, "--data.train", str(shards),
        "--data.num_samples", str(s.train_samples), "--stages.0.steps", str(s.pretrain_steps),
        "--train.global_batch_size", str(s.batch_size), "--train.seed", str(seed),
        "--train.out_dir", str(out_dir), "--train.progress", str(progress).lower(),
        "--optim.warmup_steps", str(max(1, s.pretrain_steps // 15)),
    ])
    return train(cfg)
