"""``clips demo`` end to end: data -> four pretrained models -> retrieval -> captioner examples ->
LLaVA with two towers -> ``report.md`` + ``metrics.json`` + ``retrieval_r1.png`` in ``out``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from clips_tower.io import atomic_write_json

from . import captioner, llava, report, retrieval
from .data import HELD_OUT_RETRIEVAL, generate_data
from .pretraining import CLIPS_MODEL, WEB_BASELINE, pretrain_all
from .progress import StageClock
from .settings import MODEL_CONFIG, DemoSettings

STAGES = ("generate data", "pretrain (4 recipes, same budget)", "zero-shot retrieval", "captioner examples",
          "LLaVA stage 1 + 2 per tower, lmms-eval", "report")
# Rough share of the run each stage takes (seconds on 2 CPU cores for the default preset): for the ETA.
STAGE_WEIGHTS = (9, 500, 9, 1, 300, 1)  # 3 seeds: 12 pretraining runs (measured 2026-12-03, idle)
LLAVA_TOWERS = (CLIPS_MODEL, WEB_BASELINE)


def run_demo(out: str | Path, settings: DemoSettings, seed: int = 0, progress: bool = True, threads: int = 1) -> dict:
    """Run the whole demo into ``out`` with ``settings``; returns the metrics (also written to
    ``out/metrics.json``). Seeds: data and the first training run use ``seed``; further retrieval
    seeds (``settings.retrieval_seeds``) retrain the four models with ``seed + k``; LLaVA runs use
    the towers of the first ``settings.llava_seeds`` of them, with LLaVA training seed ``seed + k``. ``threads``:
    torch threads while it runs (1 is fastest for these tiny models on a shared CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(Path(out), settings, seed, progress)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, settings: DemoSettings, seed: int, progress: bool) -> dict:
    clock = StageClock(STAGES, STAGE_WEIGHTS)
    metrics: dict = {"settings": asdict(settings), "seed": seed}

    clock.begin(STAGES[0])
    data = generate_data(out / "data", settings, seed)

    clock.begin(STAGES[1])
    runs = pretrain_all(data.shards, out / "runs", settings, seed, progress)
    metrics["pretrain"] = runs

    clock.begin(STAGES[2])
    per_seed = {label: [retrieval.evaluate_checkpoint(r["model_dir"], data.retrieval, progress) for r in rs]
                for label, rs in runs.items()}
    summary = retrieval.summarize(per_seed)
    chance = 100.0 / settings.eval_images
    retrieval.plot_ablation(summary, out / "retrieval_r1.png", chance)
    metrics["retrieval"] = {"dataset": str(data.retrieval), "per_seed": per_seed, "summary": summary,
                            "chance_R@1": chance}

    clock.begin(STAGES[3])
    metrics["captioner_positions"] = json.loads(MODEL_CONFIG.read_text())["captioner"]["num_queries"]
    metrics["captions"] = captioner.caption_examples(runs[CLIPS_MODEL][0]["model_dir"], settings.caption_examples,
                                                     seed + HELD_OUT_RETRIEVAL, settings.image_size)

    clock.begin(STAGES[4])
    llm = llava.build_llm(out / "llava" / "llm", data, seed)
    towers = {runs[label][k]["run"]: (label, runs[label][k])
              for k in range(settings.llava_seeds) for label in LLAVA_TOWERS}
    trained = llava.train_all({slug: run for slug, (_, run) in towers.items()}, llm, data, out / "llava",
                              settings, progress)
    print("-- lmms-eval on the held-out questions (every LLaVA run, one process)", flush=True)
    evaluated = llava.lmms_accuracy({slug: folder for slug, (folder, _) in trained.items()}, data.tasks,
                                    out / "llava" / "lmms_eval")
    metrics["llava"] = {label: [] for label in LLAVA_TOWERS}
    for slug, (label, run) in towers.items():
        result = evaluated[slug]
        folder, train_time = trained[slug]
        metrics["llava"][label].append({
            "tower_seed": run["seed"], "model_dir": str(folder), "scorer": "lmms-eval", "train_time_s": train_time,
            "results": result["results"], "accuracy": result["accuracy"],
            "gqa_by_kind": llava.accuracy_by_kind(Path(result["results"]), data.tasks)})
    metrics["llava_eval_questions"] = llava.question_counts(data.tasks)

    clock.begin(STAGES[5])
    metrics["stage_times_s"] = dict(clock.stage_times)
    report.write_report(out, metrics)
    metrics["wall_time_s"] = clock.finish()
    metrics["stage_times_s"] = dict(clock.stage_times)
    atomic_write_json(out / "metrics.json", metrics)
    print(f"report: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}", flush=True)
    return metrics
