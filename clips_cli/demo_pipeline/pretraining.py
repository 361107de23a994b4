"""Step 2 of the demo: pretrain the four models of the paper's ablation with one budget.

Each row is a text-source recipe of :mod:`pretrain.recipes` run through the real trainer from
``pretrain/configs/clips-demo.yaml``; only the recipe (and the seed) changes between runs. The
runs (4 recipes x seeds) are independent and go to worker processes, longest first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .parallel import Job, run_jobs
from .settings import MODEL_CONFIG, PRETRAIN_CONFIG, DemoSettings

# Report label -> recipe name; the paper's ablation rows, in its order.
MODELS: dict[str, str] = {
    "CLIP (web captions)": "clip-web",
    "CLIP (full synthetic captions)": "clip-synthetic-full",
    "CLIP (sub-captions)": "clip-synthetic-partial",
    "CLIPS (web + sub-caption + captioner)": "clips",
}
WEB_BASELINE, CLIPS_MODEL = "CLIP (web captions)", "CLIPS (web + sub-caption + captioner)"
# A CLIPS step (two texts + captioner) takes ~3.5x a CLIP step in the demo (158-195 s vs 42-56 s per
# run with the in-memory data cache, measured): weights the progress bar's ETA.
CLIPS_STEP_COST = 3.5


def pretrain_model(recipe: str, shards: Path, out_dir: Path, s: DemoSettings, seed: int,
                   overrides: Sequence[str] = ()) -> dict:
    """Train ``recipe`` on ``shards`` for the demo budget (``s``: ``train_samples``,
    ``pretrain_steps``, ``batch_size``), without progress bars (it runs in a worker:
    :func:`pretrain_all` draws one bar for all runs); ``overrides``: further config flags (e.g.
    ``--recipe.strategy block``). Returns the trainer's summary (its ``checkpoint`` + ``/model``
    is a ``clips_tower.load_model`` folder)."""
    from pretrain.config import load_config
    from pretrain.trainer import train

    cfg = load_config(PRETRAIN_CONFIG, [
        "--model.name", str(MODEL_CONFIG), "--recipe.name", recipe, "--data.train", str(shards),
        "--data.num_samples", str(s.train_samples), "--stages.0.steps", str(s.pretrain_steps),
        "--train.global_batch_size", str(s.batch_size), "--train.seed", str(seed),
        "--train.out_dir", str(out_dir), "--train.progress", "false",
        "--optim.warmup_steps", str(max(1, s.pretrain_steps // 15)), *overrides,
    ])
    return train(cfg)


def steps_logged(run_dir: Path) -> int:
    """The last step the trainer logged in ``run_dir/metrics.jsonl`` (0 before the first log)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):  # not there yet, or a line being written
        return 0


def pretrain_all(shards: Path, runs_dir: Path, s: DemoSettings, seed: int, progress: bool = True) -> dict[str, list[dict]]:
    """Every model of :data:`MODELS` with seeds ``seed .. seed + s.retrieval_seeds - 1`` on
    ``s.workers`` processes, into ``runs_dir/<recipe>-seed<k>`` (each with its ``train.log``).
    Returns label -> one record per seed: ``run`` (the run folder's name), ``seed``, ``recipe``,
    ``model_dir``, ``wall_time_s``, ``final_loss``."""
    seeds = range(seed, seed + s.retrieval_seeds)
    # CLIPS (captioner) runs are the longest: start them first so the workers finish together.
    order = sorted(MODELS.items(), key=lambda item: item[0] != CLIPS_MODEL)
    jobs, where = [], {}
    for label, recipe in order:
        for k in seeds:
            run_dir = runs_dir / f"{recipe}-seed{k}"
            name = f"{recipe} seed {k}"
            where[name] = (label, recipe, k, run_dir.name)
            jobs.append(Job(name, pretrain_model, (recipe, shards, run_dir, s, k), run_dir / "train.log",
                            s.pretrain_steps, lambda d=run_dir: steps_logged(d),
                            CLIPS_STEP_COST if label == CLIPS_MODEL else 1.0))
    done = run_jobs(jobs, s.workers, "pretraining", progress)
    runs: dict[str, list[dict]] = {label: [] for label in MODELS}
    for name, (summary, wall) in sorted(done.items(), key=lambda kv: where[kv[0]][2]):
        label, recipe, k, run = where[name]
        runs[label].append({"run": run, "seed": k, "recipe": recipe, "model_dir": summary["checkpoint"] + "/model",
                            "wall_time_s": wall, "final_loss": summary["final_metrics"]["loss"]})
    return runs
