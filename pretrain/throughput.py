"""Training throughput of a config: timed optimizer steps on a fixed in-memory batch.

The batch goes through the real sample pipeline (generated scenes -> augmentation -> caption
sampling -> tokenization), so caption lengths are realistic; data loading itself is left out.
MFU is reported against a matmul roofline measured in the same process (``n x n`` matmul in the
run's precision), as model FLOPs (:mod:`clips_tower.flops`) x samples/s / roofline.

    clips pretrain --config clips-vit-b-16-112-bench --benchmark-steps 3
"""

from __future__ import annotations

import statistics
import time

import torch

from .config import PretrainConfig
from .data.decode import collate
from .data.sources import RawRecord
from .metrics import matmul_tflops
from .synthetic import encode_image, generate_sample


def measure_throughput(cfg: PretrainConfig, steps: int = 3, warmup: int = 1) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of stage 0 of ``cfg`` on one process.

    Returns model/size/precision, ``samples_per_s`` and ``step_s`` (from the median step),
    ``train_gflops_per_sample``, ``achieved_tflops``, ``roofline_tflops`` (the better of a matmul
    measured before and after the steps) and ``mfu``, plus the raw per-step times and rooflines.
    """
    from .trainer import RunState, Trainer

    tr = Trainer(cfg)
    s = tr.build_session(0, None, None, RunState(), with_data=False)
    processor = tr.processor(s.image_size)
    d = cfg.data
    records = []
    for i in range(s.micro_batch_size):
        sample = generate_sample(i, seed=0, image_size=2 * s.image_size)
        records.append(RawRecord(sample.key, image=encode_image(sample.image),
                                 meta={d.web_key: sample.web, d.synthetic_key: sample.synthetic}))
    batch = collate([processor(r, 0) for r in records], tr.tokenizer)
    batches = [batch] * s.accum_steps
    for _ in range(warmup):
        tr.train_step(s, batches)
    dtype = torch.float32 if cfg.train.precision == "fp32" else torch.bfloat16
    rooflines = [matmul_tflops(dtype, tr.dist.device)]
    times, tokens = [], 0.0
    for _ in range(steps):
        start = time.perf_counter()
        tokens += tr.train_step(s, batches)[1]
        if tr.dist.device.type == "cuda":
            torch.cuda.synchronize(tr.dist.device)
        times.append(time.perf_counter() - start)
    rooflines.append(matmul_tflops(dtype, tr.dist.device))
    # Shared machines are noisy: the median step and the better of the two rooflines (before/after).
    step_s = statistics.median(times)
    per_step = cfg.train.global_batch_size
    sps = per_step / step_s
    flops = s.flops_fn(tokens / (steps * per_step))
    roofline = max(rooflines)
    return {
        "model": s.objective.model.config.name, "image_size": s.image_size, "global_batch": per_step,
        "precision": cfg.train.precision, "recipe": cfg.recipe.name, "threads": torch.get_num_threads(),
        "samples_per_s": sps, "step_s": step_s, "step_s_all": times, "train_gflops_per_sample": flops / 1e9,
        "achieved_tflops": flops * sps / 1e12, "roofline_tflops": roofline, "roofline_tflops_all": rooflines,
        "mfu": flops * sps / (roofline * 1e12),
    }
