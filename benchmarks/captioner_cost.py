"""Benchmark 2: what the captioner costs.

- A CLIPS step (web + sub-caption contrast + captioner) over a CLIP step (web contrast only) with
  the same encoders, set against the ratio of their model FLOPs (target: time ratio <= FLOPs
  ratio + 10%, i.e. the captioner runs as efficiently as the encoders), and a CLIPS step whose
  captioner loss is a sampled softmax (``loss.caption_negatives``) instead of the full-vocabulary one.
- The captioner's attention (fused SDPA with one shared boolean ``[S,S]`` prefix-causal mask,
  :func:`clips_tower.captioner.prefix_causal_mask`) against a dense-mask SDPA baseline (an additive
  float mask materialised per sample and head, ``[B,H,S,S]``) and the reference softmax
  (:func:`clips_tower.layers.reference_attention`), forward + backward at the captioner's shapes.

    python -m benchmarks captioner --model s16 --size 112
"""

from __future__ import annotations

import argparse
import statistics

from .common import Column, PeakRSS, report, time_calls
from .train_step import MODELS, OWN_SIZE, measure_step

COLUMNS = [Column("case", "case"), Column("step_s", "time s", ".4f"), Column("ratio", "time ratio", ".2f"),
           Column("flops_ratio", "FLOPs ratio", ".2f"), Column("peak_rss_delta_mib", "extra RSS MiB", ".0f")]


def attention_inputs(model_name: str, image_size: int, batch: int):
    """(q, k, v) [B,H,S,D] leaf tensors at the captioner's shapes and its bool mask [S,S]."""
    import torch

    import clips_tower
    from clips_tower.captioner import prefix_causal_mask

    cfg = clips_tower.get_model_config(model_name).with_image_size(image_size)
    c = cfg.captioner
    prefix = cfg.vision.num_patches + cfg.text.context_length - 1
    s = prefix + c.num_queries
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, c.heads, s, c.width // c.heads, generator=g).requires_grad_() for _ in range(3))
    return q, k, v, prefix_causal_mask(prefix, c.num_queries, q.device)


def attention_impls() -> dict:
    """Name -> fn(q, k, v, bool mask) -> out: the model's path and the two comparisons."""
    import torch
    import torch.nn.functional as F

    from clips_tower.layers import reference_attention

    def dense(q, k, v, mask):
        additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=additive.expand(q.shape[0], q.shape[1], -1, -1).clone())

    return {"sdpa + shared bool mask (model)": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
            "sdpa + dense float mask [B,H,S,S]": dense,
            "reference softmax": reference_attention}


def measure_attention(model_name: str, image_size: int, batch: int, steps: int) -> list[dict]:
    """Forward + backward time and extra RSS of each attention implementation (one layer)."""
    q, k, v, mask = attention_inputs(model_name, image_size, batch)
    rows = []
    for name, fn in attention_impls().items():
        def call():
            fn(q, k, v, mask).sum().backward()
        with PeakRSS() as mem:
            t = statistics.median(time_calls(call, steps))
        rows.append({"case": f"attention: {name}", "step_s": t, "peak_rss_delta_mib": mem.delta_mib})
    base = rows[0]["step_s"]
    for r in rows:
        r["ratio"] = r["step_s"] / base
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench captioner``."""
    p.add_argument("--model", choices=sorted(MODELS), default="s16")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--attn-steps", type=int, default=5)
    p.add_argument("--caption-negatives", type=int, default=512,
                   help="random negatives of the sampled-softmax CLIPS row (0: skip that row)")


def run(args: argparse.Namespace) -> dict:
    """CLIPS vs CLIP steps, then the attention comparison; returns the JSON record."""
    name = MODELS[args.model]
    size = OWN_SIZE.get(args.model, args.size)
    clip = measure_step(name, size, args.precision, args.batch, args.steps, recipe="clip-web")
    clips = measure_step(name, size, args.precision, args.batch, args.steps, recipe="clips")
    flops_ratio = clips["train_gflops_per_sample"] / clip["train_gflops_per_sample"]
    rows = [{"case": f"CLIP step ({name}@{size}, {args.precision})", "step_s": clip["step_s"], "ratio": 1.0,
             "flops_ratio": 1.0, "mfu": clip["mfu"]},
            {"case": f"CLIPS step ({name}@{size}, {args.precision})", "step_s": clips["step_s"],
             "ratio": clips["step_s"] / clip["step_s"], "flops_ratio": flops_ratio, "mfu": clips["mfu"]}]
    ratio = rows[1]["ratio"]
    notes = [f"CLIPS/CLIP time ratio {ratio:.2f} vs FLOPs ratio {flops_ratio:.2f}: "
             f"{'within' if ratio <= flops_ratio * 1.1 else 'ABOVE'} the +10% target "
             f"(MFU CLIP {clip['mfu']:.1%}, CLIPS {clips['mfu']:.1%})"]
    if args.caption_negatives:
        sampled = measure_step(name, size, args.precision, args.batch, args.steps, recipe="clips",
                               extra=["--loss.caption_negatives", str(args.caption_negatives)])
        rows.append({"case": f"CLIPS step, sampled softmax (+{args.caption_negatives} negatives)",
                     "step_s": sampled["step_s"], "ratio": sampled["step_s"] / clip["step_s"]})
        notes.append(f"sampled softmax: CLIPS step {clips['step_s'] / sampled['step_s']:.2f}x faster than with the "
                     "full-vocabulary softmax (FLOPs ratio not shown: it counts the full head)")
    rows += measure_attention(name, size, args.batch, args.attn_steps)
    return report(args.out, "captioner_cost", rows, COLUMNS, vars(args), notes)
