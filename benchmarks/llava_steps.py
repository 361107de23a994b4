"""Benchmark 5: LLaVA training steps/s on the tiny setup (clips-tiny tower + the local tiny Llama).

- Stage 1 (projector pretraining): live tower vs the tower feature cache
  (:mod:`llava_integration.feature_cache`; its one-off build is timed separately), plus the
  tower's own forward time per batch, which bounds what the cache can save.
- Stage 2 (instruction tuning): full fine-tuning vs LoRA vs QLoRA (4-bit LLM).

Every run is :func:`llava_integration.train.run_stage`, the ``clips llava`` code path; steps/s is
the HF Trainer's ``train_steps_per_second`` (training loop wall time, model loading excluded).

    python -m benchmarks llava --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from .common import Column, report, time_calls

COLUMNS = [Column("case", "case"), Column("steps", "steps"), Column("steps_per_s", "steps/s", ".2f"),
           Column("ratio", "vs baseline", ".2f"), Column("seconds", "extra s", ".2f")]
CPU_FLAGS = ["--use_cpu", "True", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0",
             "--save_strategy", "no", "--logging_steps", "1000"]
STAGE2_MODES = {"full": [], "lora": ["--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16"],
                "qlora": ["--lora_enable", "True", "--bits", "4", "--lora_r", "8", "--lora_alpha", "16"]}


def _steps_per_s(out: Path) -> float:
    return json.loads((out / "train_results.json").read_text())["train_steps_per_second"]


def stage_steps_per_s(root: Path, llava: Path, data: dict, stage: str, out: str, steps: int, batch: int,
                      flags: list[str], extra: list[str] = ()) -> float:
    """Run ``stage`` (``pretrain``: captions, ``finetune``: instructions) of ``llava`` on ``data``
    (:func:`pretrain.synthetic.write_instruction_data`) through ``run_stage`` for ``steps`` steps of
    ``batch``; returns the HF Trainer's training steps/s. ``flags``: device/precision flags."""
    from llava_integration.train import run_stage

    kind = "captions" if stage == "pretrain" else "instruct"
    run_stage(stage, ["--model_name_or_path", str(llava), "--image_folder", str(data["images"]), "--max_steps",
                      str(steps), "--per_device_train_batch_size", str(batch), *flags, "--data_path", str(data[kind]),
                      "--output_dir", str(root / out), *extra])
    return _steps_per_s(root / out)


def tower_seconds(llava_dir: Path, images: Path, batch: int, reps: int = 5) -> float:
    """Median seconds of the tower's forward (the projector input) for one batch of images."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_integration.feature_cache import tower_features

    model = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    processor = AutoProcessor.from_pretrained(llava_dir)
    from PIL import Image

    files = sorted(images.iterdir())[:batch]
    pixels = processor.image_processor([Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return statistics.median(time_calls(lambda: tower_features(model, pixels), reps))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench llava``."""
    p.add_argument("--steps", type=int, default=10, help="training steps per run")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--samples", type=int, default=32, help="generated image/caption/instruction samples")
    p.add_argument("--stages", nargs="+", choices=["pretrain", "finetune"], default=["pretrain", "finetune"])


def run(args: argparse.Namespace) -> dict:
    """Build the tiny setup, run every case; returns the JSON record."""
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm
    from pretrain.synthetic import write_instruction_data

    rows = []
    with tempfile.TemporaryDirectory(prefix="clips-bench-llava-") as tmp:
        root = Path(tmp)
        data = write_instruction_data(root / "data", n=args.samples, seed=0)
        llava = assemble_llava("clips:clips-tiny", build_tiny_llm(root / "llm"), root / "llava")

        def stage(name: str, out: str, extra: list[str]) -> float:
            return stage_steps_per_s(root, llava, data, name, out, args.steps, args.batch, CPU_FLAGS, extra)

        if "pretrain" in args.stages:
            live = stage("pretrain", "s1-live", [])
            start = time.perf_counter()
            stage("pretrain", "s1-build", ["--feature_cache", str(root / "cache"), "--max_steps", "1"])
            build_s = time.perf_counter() - start
            cached = stage("pretrain", "s1-cache", ["--feature_cache", str(root / "cache")])
            tower = tower_seconds(llava, data["images"], args.batch)
            rows += [{"case": "stage 1, live tower", "steps": args.steps, "steps_per_s": live, "ratio": 1.0,
                      "seconds": tower, "note": "extra s = tower forward per batch"},
                     {"case": "stage 1, feature cache", "steps": args.steps, "steps_per_s": cached,
                      "ratio": cached / live, "seconds": build_s, "note": "extra s = cache build run (1 step)"}]
        if "finetune" in args.stages:
            base = None
            for mode, extra in STAGE2_MODES.items():
                sps = stage("finetune", f"s2-{mode}", extra)
                base = base or sps
                rows.append({"case": f"stage 2, {mode}", "steps": args.steps, "steps_per_s": sps, "ratio": sps / base})
    notes = ["stage 1 extra s: live row = tower forward per batch (what the cache removes); "
             "cache row = wall time of the run that built the cache"]
    return report(args.out, "llava_steps", rows, COLUMNS, vars(args), notes)
