"""Benchmark 6 (GPU, one command, a few minutes on one H200-class GPU): a CLIPS ViT-L/14-336
training step in bf16 autocast at a realistic batch: samples/s, MFU against a bf16 matmul peak
measured first, peak GPU memory.

    python -m benchmarks gpu                      # clips-vit-l-14-336, batch 64, on cuda
    python -m benchmarks gpu --batch 128 --grad-checkpointing
    python -m benchmarks gpu --tiny               # clips-tiny on CPU: a smoke test of the script

The step is the pretraining objective (:class:`pretrain.objective.CLIPSObjective` with
:class:`pretrain.losses.CLIPSLoss`, the CLIPS weights) and AdamW from :mod:`pretrain.optim`, on
random pixels and token ids with realistic caption lengths (40 supervised target tokens).
"""

from __future__ import annotations

import argparse
import statistics

from pretrain.metrics import matmul_roofline

from .common import Column, report

COLUMNS = [Column("model", "model"), Column("device", "device"), Column("batch", "batch"),
           Column("step_s", "step s", ".3f"), Column("samples_per_s", "samples/s", ".1f"),
           Column("achieved_tflops", "TFLOP/s", ".3f"), Column("precision", "precision"), Column("roofline_tflops", "peak TFLOP/s", ".3f"),
           Column("mfu", "MFU", ".1%"), Column("peak_mem_gib", "peak mem GiB", ".1f")]
CAPTION_TOKENS = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench gpu``."""
    p.add_argument("--model", default="clips-vit-l-14-336")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test of this script: clips-tiny, batch 4, 2 steps, on CPU in fp32")


def run(args: argparse.Namespace) -> dict:
    """Measure the peak, then time the steps; returns the JSON record."""
    import time

    import torch

    import clips_tower
    from clips_tower.flops import model_flops
    from pretrain.losses import CLIPSLoss
    from pretrain.objective import CLIPSObjective
    from pretrain.optim import build_optimizer

    if args.tiny:
        args.model, args.batch, args.steps, args.warmup = "clips-tiny", 4, 2, 1
        device, dtype = torch.device("cpu"), torch.float32  # CPUs without bf16 instructions emulate it
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or pass --tiny for the CPU smoke test")
        device, dtype = torch.device("cuda"), torch.bfloat16
    peak = matmul_roofline(dtype, device, n=1024 if args.tiny else 8192)["best"]
    torch.manual_seed(0)
    model = clips_tower.create_model(args.model, device=device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    if args.compile:
        model.compile()
    objective = CLIPSObjective(model, CLIPSLoss({"web": 0.5, "sub": 0.5})).to(device)
    optimizer = build_optimizer(objective, 1e-4, (0.9, 0.98), 1e-6, 0.2)
    cfg, b = model.config, args.batch
    g = torch.Generator(device=device).manual_seed(0)
    res = cfg.vision.image_size
    images = torch.randn(b, 3, res, res, device=device, generator=g)
    ids = torch.randint(1000, 2000, (b, cfg.text.context_length), device=device, generator=g)
    targets = torch.randint(1000, 2000, (b, cfg.captioner.num_queries), device=device, generator=g)
    targets[:, CAPTION_TOKENS + 1:] = 0  # PAD: realistic caption length
    texts = {"web": ids, "sub": ids.roll(1, dims=1)}

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = objective(images, texts, targets)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = model_flops(cfg, 2, True, CAPTION_TOKENS, b).train
    achieved = flops * b / step_s / 1e12
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    row = {"model": args.model, "precision": str(dtype).removeprefix("torch."), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "batch": b, "step_s": step_s, "samples_per_s": b / step_s, "achieved_tflops": achieved,
           "roofline_tflops": peak, "mfu": achieved / peak, "peak_mem_gib": mem,
           "train_gflops_per_sample": flops / 1e9, "step_s_all": times}
    return report(args.out, "gpu_l14_336", [row], COLUMNS, vars(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu_l14_336 [flags]``: the same as ``python -m benchmarks gpu [flags]``."""
    import sys

    from .cli import main as bench_main

    return bench_main(["gpu", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
