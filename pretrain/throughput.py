"""Training throughput and MFU: the one implementation the trainer's log, ``benchmarks`` and the
GPU script share.

- :func:`rates` turns (samples per step, seconds per step, model FLOPs per sample, roofline) into
  samples/s, achieved TFLOP/s and MFU = model FLOPs x samples/s / (roofline x devices);
  (the trainer's logged MFU over the steps between two log lines is :func:`rates` too);
- :func:`time_steps` times a step function (after warm-up, optionally counting the FLOPs of the
  first warm-up step with :class:`torch.utils.flop_counter.FlopCounterMode`, an independent check of
  :mod:`clips_tower.flops`);
- :func:`measure_throughput` times the trainer's own ``Trainer.train_step`` on a fixed in-memory
  batch that went through the real sample pipeline (so caption lengths are realistic; data loading
  itself is left out).

This module imports only torch and the standard library at the top, so the peer benchmark can load
it by file path inside open_clip's virtual environment (``benchmarks.peer_openclip``) and time
open_clip with the same code.

    clips pretrain --config clips-vit-b-16-112-bench --benchmark-steps 3
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def rates(samples_per_step: float, step_s: float, flops_per_sample: float | None, peak_tflops: float | None,
          world: int = 1) -> dict[str, float | None]:
    """``samples_per_s``, ``step_s``, ``train_gflops_per_sample``, ``achieved_tflops`` (all devices)
    and ``mfu`` (None without a FLOP count or a roofline; ``peak_tflops`` is per device)."""
    sps = samples_per_step / step_s
    out: dict[str, float | None] = {"samples_per_s": sps, "step_s": step_s, "train_gflops_per_sample": None,
                                    "achieved_tflops": None, "mfu": None}
    if flops_per_sample:
        out["train_gflops_per_sample"] = flops_per_sample / 1e9
        out["achieved_tflops"] = flops_per_sample * sps / 1e12
        if peak_tflops:
            out["mfu"] = out["achieved_tflops"] / (peak_tflops * world)
    return out


def _cpu_attention_flop_formulas() -> dict:
    """FlopCounterMode formulas for PyTorch's fused CPU attention kernels, which it does not count
    (it knows the CUDA flash / efficient / cuDNN ones): the same dense ``QK^T`` + ``AV`` count."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def time_steps(step: Callable[[], object], steps: int, warmup: int = 1, count_flops: bool = False,
               sync: Callable[[], None] = lambda: None, profile_rows: int = 0) -> dict:
    """Run ``step`` ``warmup`` times untimed, then ``steps`` timed times.

    Returns ``{"step_s_all": [...], "step_s": median, "results": [what each timed step returned],
    "counted_flops": FLOPs of the first warm-up step by FlopCounterMode (None unless
    ``count_flops``; needs ``warmup >= 1``), "profile": torch.profiler's top ``profile_rows`` ops by
    self CPU time of one more (untimed) step, or None}``. ``sync`` waits for the device (CUDA)
    before a clock read.
    """
    counted = None
    for i in range(warmup):
        if count_flops and i == 0:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flop_formulas()) as counter:
                step()
            counted = counter.get_total_flops()
        else:
            step()
    sync()
    times, results = [], []
    for _ in range(steps):
        start = time.perf_counter()
        results.append(step())
        sync()
        times.append(time.perf_counter() - start)
    table = None
    if profile_rows:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
            sync()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_rows)
    return {"step_s_all": times, "step_s": statistics.median(times), "results": results, "counted_flops": counted,
            "profile": table}


def measure_throughput(cfg, steps: int = 3, warmup: int = 1, count_flops: bool = False,
                       peak_tflops: float | None = None, profile_rows: int = 0) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of stage 0 of ``cfg`` (a
    :class:`~pretrain.config.PretrainConfig`) on one process, through ``Trainer.train_step``.

    Returns model/size/precision, :func:`rates` of the median step (``samples_per_s``,
    ``step_s``, ``train_gflops_per_sample``, ``achieved_tflops``, ``mfu``), ``roofline_tflops``
    (``peak_tflops`` if given, else the better of a :func:`~pretrain.metrics.matmul_roofline`
    measured before and after the steps), the raw per-step times and rooflines, and with
    ``count_flops`` ``counted_gflops_per_sample`` (FlopCounterMode on the first warm-up step), and
    ``profile`` (see :func:`time_steps`).
    """
    from .data.decode import collate
    from .data.sources import RawRecord
    from .metrics import matmul_tflops
    from .synthetic import encode_image, generate_sample
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
    dev = tr.dist.device
    dtype = torch.float32 if cfg.train.precision == "fp32" else torch.bfloat16
    # Shared machines are noisy: the better of a roofline measured before and after the steps.
    rooflines = [] if peak_tflops else [matmul_tflops(dtype, dev)]
    timed = time_steps(lambda: tr.train_step(s, batches)[1], steps, warmup, count_flops,
                       sync=(lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else lambda: None,
                       profile_rows=profile_rows)
    if not peak_tflops:
        rooflines.append(matmul_tflops(dtype, dev))
    per_step = cfg.train.global_batch_size
    tokens = sum(timed["results"])
    roofline = peak_tflops or max(rooflines)
    r = rates(per_step, timed["step_s"], s.flops_fn(tokens / (steps * per_step)), roofline)
    counted = timed["counted_flops"]
    return {
        "model": s.objective.model.config.name, "image_size": s.image_size, "global_batch": per_step,
        "precision": cfg.train.precision, "recipe": cfg.recipe.name, "threads": torch.get_num_threads(), **r,
        "step_s_all": timed["step_s_all"], "roofline_tflops": roofline, "roofline_tflops_all": rooflines,
        "counted_gflops_per_sample": counted / per_step / 1e9 if counted is not None else None,
        "profile": timed["profile"],
    }
