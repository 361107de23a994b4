"""Benchmark 1: one pretraining step (forward + backward + AdamW) per model shape, resolution and
precision: samples/s, MFU against the same-run roofline, peak resident memory.

The step is the trainer's own (:func:`pretrain.throughput.measure_throughput`: engine, objective,
loss, optimizer, on a batch that went through the real sample pipeline); model FLOPs come from
:func:`clips_tower.flops.model_flops` (matmuls only, training = 3 x forward).

    python -m benchmarks train --models tiny s16 b16 --sizes 112 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Sequence

from .common import Column, PeakRSS, native_bf16_cpu, report

# Benchmark shape -> registered model or model JSON ("demo": the model `clips demo` trains).
MODELS = {"tiny": "clips-tiny", "s16": "clips-vit-s-16", "b16": "clips-vit-b-16",
          "demo": str(Path(__file__).resolve().parents[1] / "clips_cli" / "demo_pipeline" / "clips-demo.json")}
# Models benchmarked at their own resolution whatever --sizes says.
OWN_SIZE = {"tiny": 32, "demo": 32}
COLUMNS = [Column("model", "model"), Column("image_size", "px"), Column("precision", "precision"),
           Column("recipe", "recipe"), Column("compiled", "compiled"), Column("batch", "batch"), Column("step_s", "step s", ".3f"),
           Column("samples_per_s", "samples/s", ".2f"), Column("train_gflops_per_sample", "GFLOP/sample", ".1f"),
           Column("achieved_tflops", "TFLOP/s", ".4f"), Column("roofline_tflops", "roofline TFLOP/s", ".4f"),
           Column("mfu", "MFU", ".1%"), Column("peak_rss_mib", "peak RSS MiB", ".0f")]


def step_config(model: str, image_size: int, precision: str, batch: int, recipe: str = "clips", out_dir: str = "",
                extra: Sequence[str] = ()):
    """A :class:`~pretrain.config.PretrainConfig` for one timed step: the tiny reference config
    with the model, resolution, precision, batch and recipe replaced (then the ``extra`` overrides)."""
    from pretrain.config import load_config

    return load_config("clips-tiny", [
        "--model.name", model, "--recipe.name", recipe, "--train.precision", precision,
        "--train.global_batch_size", str(batch), "--train.out_dir", out_dir or tempfile.mkdtemp(prefix="clips-bench-"),
        "--stages", f"[{{name: bench, steps: 1, image_size: {image_size}}}]", *extra])


def measure_step(model: str, image_size: int, precision: str, batch: int, steps: int, recipe: str = "clips",
                 extra: Sequence[str] = (), compiled: bool = False) -> dict:
    """Time ``steps`` training steps (after one warm-up; two when ``compiled``: ``torch.compile``
    compiles in the first, the timed steps exclude it) and return one result row (``extra``:
    config overrides).

    ``mfu`` divides by the best-layout roofline :func:`pretrain.throughput.measure_throughput`
    measures before and after the timed steps (:func:`~pretrain.metrics.matmul_roofline`, the better
    of the two)."""
    from pretrain.throughput import measure_throughput

    with PeakRSS() as mem:
        cfg = step_config(model, image_size, precision, batch, recipe,
                          extra=[*extra, *(["--model.compile", "true"] if compiled else [])])
        r = measure_throughput(cfg, steps=steps, warmup=2 if compiled else 1)
    return {"model": r["model"], "image_size": r["image_size"], "precision": precision, "recipe": recipe,
            "compiled": "yes" if compiled else "no",
            "batch": batch, "step_s": r["step_s"], "samples_per_s": r["samples_per_s"],
            "train_gflops_per_sample": r["train_gflops_per_sample"], "achieved_tflops": r["achieved_tflops"],
            "roofline_tflops": r["roofline_tflops"], "mfu": r["mfu"], "peak_rss_mib": mem.peak_mib,
            "step_s_all": r["step_s_all"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench train``."""
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "s16", "b16"])
    p.add_argument("--sizes", nargs="+", type=int, default=[112], help="resolutions of s16/b16 (e.g. 112 224)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=2, help="samples per step (default 2: short runs)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    p.add_argument("--force-bf16", action="store_true",
                   help="run bf16 even on a CPU without bf16 instructions (emulated: minutes per step)")
    p.add_argument("--compile", action="store_true",
                   help="time every configuration eager and compiled (torch.compile, inductor), one after the other")


def run(args: argparse.Namespace) -> dict:
    """Measure every (model, size, precision) and report the table; returns the JSON record."""
    rows, notes = [], []
    slow_bf16 = not native_bf16_cpu() and not args.force_bf16
    for key in args.models:
        for size in ([OWN_SIZE[key]] if key in OWN_SIZE else args.sizes):
            for precision in args.precisions:
                if precision == "bf16" and slow_bf16:
                    notes.append(f"skipped {key}@{size} bf16: this CPU has no bf16 instructions (emulated bf16 "
                                 f"GEMMs run at a few GFLOP/s, minutes per step); --force-bf16 runs it anyway")
                    continue
                for compiled in (False, True) if args.compile else (False,):
                    rows.append(measure_step(MODELS[key], size, precision, args.batch, args.steps, compiled=compiled))
    return report(args.out, "train_step", rows, COLUMNS, vars(args), notes)
