"""Benchmark 6 (GPU, one command, about 5-8 minutes on one H200): CLIPS ViT-L/14-336 training steps
in bf16 (SDPA flash attention, fused AdamW, ``torch.compile``, gradient checkpointing off and on)
and a LLaVA stage-1 step with an L/14-336 tower and a random 0.5B-class Llama.

    python -m benchmarks gpu                              # all cases on cuda
    python -m benchmarks gpu --cases compile --batch 128
    python -m benchmarks gpu --tiny                       # clips-tiny on CPU: a smoke test of the script

Every CLIPS row is the trainer's own step (``Trainer.train_step`` through
:func:`pretrain.throughput.measure_throughput`: engine, objective, loss, grad clipping, scheduler,
fused AdamW) on a batch from the real sample pipeline; MFU is reported against a matmul roofline
measured first in the same run (:func:`pretrain.metrics.matmul_roofline`, GEMM shapes of the
model's layers) and against the GPU's datasheet dense bf16 peak when the GPU is known. The LLaVA
row is :func:`llava_integration.train.run_stage` (the HF Trainer), as ``bench llava`` runs it.
A case that fails is reported with its error and the others still run.
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
from pathlib import Path

from .common import Column, report

COLUMNS = [Column("case", "case"), Column("model", "model"), Column("device", "device"), Column("batch", "batch"),
           Column("precision", "precision"), Column("step_s", "step s", ".3f"),
           Column("samples_per_s", "samples/s", ".1f"), Column("achieved_tflops", "TFLOP/s", ".2f"),
           Column("roofline_tflops", "roofline TFLOP/s", ".1f"), Column("mfu", "MFU (roofline)", ".1%"),
           Column("mfu_datasheet", "MFU (datasheet)", ".1%"), Column("peak_mem_gib", "peak mem GiB", ".1f"),
           Column("error", "error")]
# case -> model-section overrides (attention is SDPA in every case: flash kernels on CUDA in bf16)
CASES = {
    "eager": {},
    "compile": {"compile": True},
    "compile+ckpt": {"compile": True, "grad_checkpointing": True},
}
# Dense bf16 tensor-core peak per GPU (datasheet, TFLOP/s), matched against the device name.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}
# A "0.5B-class" random Llama for the LLaVA row (built with llava_integration.tiny_llm): ~0.47B params.
LLAVA_LLM = {"hidden_size": 1536, "num_layers": 20, "num_heads": 12}
TINY = {"model": "clips-tiny", "batch": 4, "steps": 1, "warmup": 1, "llava_batch": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench gpu``."""
    p.add_argument("--model", default="clips-vit-l-14-336")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles in the first)")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["eager", "compile", "compile+ckpt"])
    p.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp",
                   help="engine wrap (fsdp2 on one process: the FSDP2 code path of multi-GPU runs)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="default: bf16 on CUDA, fp32 with --tiny (CPUs without bf16 instructions emulate it)")
    p.add_argument("--llava-steps", type=int, default=20, help="LLaVA stage-1 steps (0: skip the LLaVA row)")
    p.add_argument("--llava-batch", type=int, default=16)
    p.add_argument("--tiny", action="store_true",
                   help="smoke test of this script on CPU: clips-tiny, batch 4, 1 step, a tiny LLaVA")


def clips_row(args: argparse.Namespace, case: str, device: str, precision: str, roofline: float) -> dict:
    """One CLIPS case through the trainer's step; ``roofline``: per-device TFLOP/s."""
    import torch

    import clips_tower
    from pretrain.throughput import measure_throughput

    from .train_step import step_config

    extra = ["--train.device", device, "--dist.strategy", args.strategy]
    for key, value in CASES[case].items():
        extra += [f"--model.{key}", str(value).lower()]
    size = clips_tower.get_model_config(args.model).vision.image_size
    cfg = step_config(args.model, size, precision, args.batch, "clips", extra=extra)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    r = measure_throughput(cfg, steps=args.steps, warmup=args.warmup, peak_tflops=roofline)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"case": case, "model": r["model"], "batch": args.batch, "precision": precision,
            "step_s": r["step_s"], "samples_per_s": r["samples_per_s"], "achieved_tflops": r["achieved_tflops"],
            "mfu": r["mfu"], "peak_mem_gib": mem, "train_gflops_per_sample": r["train_gflops_per_sample"],
            "step_s_all": r["step_s_all"]}


def llava_row(args: argparse.Namespace, tower_model: str, cuda: bool) -> dict:
    """LLaVA stage 1 (projector training, frozen tower and LLM) through ``run_stage``: steps/s."""
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm
    from pretrain.synthetic import write_instruction_data

    from .llava_steps import CPU_FLAGS, stage_steps_per_s

    with tempfile.TemporaryDirectory(prefix="clips-bench-gpu-llava-") as tmp:
        root = Path(tmp)
        data = write_instruction_data(root / "data", n=max(32, args.llava_batch * 2), seed=0)
        llm = build_tiny_llm(root / "llm", **({} if args.tiny else LLAVA_LLM))
        llava = assemble_llava(f"clips:{tower_model}", llm, root / "llava")
        flags = ["--bf16", "True", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1000",
                 "--dataloader_num_workers", "2", "--seed", "0"] if cuda else CPU_FLAGS
        sps = stage_steps_per_s(root, llava, data, "pretrain", "s1", args.llava_steps, args.llava_batch, flags)
    return {"case": "llava stage 1", "model": f"{tower_model} + Llama {'tiny' if args.tiny else '0.5B'}",
            "batch": args.llava_batch, "precision": "bf16" if cuda else "fp32", "step_s": 1 / sps,
            "samples_per_s": sps * args.llava_batch}


def run(args: argparse.Namespace) -> dict:
    """Measure the roofline, then every case; returns the JSON record."""
    import torch

    from pretrain.metrics import matmul_roofline

    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
        args.llava_steps = min(args.llava_steps, 2)  # 0 still skips the row
        device = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --tiny for the CPU smoke test")
    else:
        device = "cuda"
    precision = args.precision or ("fp32" if args.tiny else "bf16")
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    roof = matmul_roofline(dtype, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None) if precision == "bf16" else None
    rows = []
    for case in args.cases:
        try:
            row = clips_row(args, case, device, precision, roof["best"])
        except Exception as e:  # one failing case (e.g. a compile error) must not lose the others
            traceback.print_exc()
            row = {"case": case, "model": args.model, "batch": args.batch, "precision": precision,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
        rows.append(row)
    if args.llava_steps:
        tower = "clips-tiny" if args.tiny else "clips-vit-l-14-336"
        try:
            rows.append(llava_row(args, tower, device == "cuda"))
        except Exception as e:
            traceback.print_exc()
            rows.append({"case": "llava stage 1", "model": tower, "error": f"{type(e).__name__}: {e}"[:200]})
    for row in rows:
        row.update(device=name, roofline_tflops=roof["best"])
        if datasheet and row.get("achieved_tflops"):
            row["mfu_datasheet"] = row["achieved_tflops"] / datasheet
    notes = ["roofline by GEMM shape (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in roof["by_shape"].items()),
             f"datasheet dense bf16 peak: {datasheet} TFLOP/s" if datasheet else "datasheet peak: unknown for this device"]
    return report(args.out, "gpu_l14_336", rows, COLUMNS, vars(args), notes)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu_l14_336 [flags]``: the same as ``python -m benchmarks gpu [flags]``."""
    import sys

    from .cli import main as bench_main

    return bench_main(["gpu", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
