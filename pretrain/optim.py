"""AdamW parameter groups and the staged learning-rate schedule.

Weight decay (decoupled, AdamW) applies to weight matrices only: parameters with 2+ dimensions,
except embedding tables (``nn.Embedding``), positional embeddings, the CLS embedding, the
captioner's learnable queries, the logit scale and the SigLIP bias. Norm weights and biases
(1-D) never decay.

The schedule is a function of the global step: each stage has linear warm-up to its peak lr
(``(k+1)/warmup`` at step k of the stage) followed by cosine decay to ``min_lr_ratio * lr`` (or a
constant lr), restarted per stage as in CLIPA's low-resolution pretraining + fine-tuning.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "queries", "logit_scale", "logit_bias")


def decays(name: str, param: torch.Tensor, embedding_params: set[int]) -> bool:
    """Whether parameter ``name`` gets weight decay (see module docstring)."""
    return param.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES and id(param) not in embedding_params


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, ``decay`` (``weight_decay``) and ``no_decay`` (0), with parameter names.

    Each group dict holds ``params``, ``weight_decay`` and ``names`` (kept for logging/tests).
    """
    embedding_params = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    groups = {"decay": ([], []), "no_decay": ([], [])}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        params, names = groups["decay" if decays(name, p, embedding_params) else "no_decay"]
        params.append(p)
        names.append(name)
    return [
        {"params": groups["decay"][0], "names": groups["decay"][1], "weight_decay": weight_decay},
        {"params": groups["no_decay"][0], "names": groups["no_decay"][1], "weight_decay": 0.0},
    ]


def build_optimizer(module: nn.Module, lr: float, betas: Sequence[float], eps: float, weight_decay: float,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``module``."""
    groups = param_groups(module, weight_decay)
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def cosine(progress: float, min_ratio: float) -> float:
    """Cosine decay factor from 1 (progress 0) to ``min_ratio`` (progress 1)."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def constant(progress: float, min_ratio: float) -> float:
    """No decay."""
    return 1.0


SCHEDULES: dict[str, Callable[[float, float], float]] = {"cosine": cosine, "constant": constant}


def stage_lr_factors(stages: Sequence, base_lr: float, warmup_steps: int, schedule: str, min_lr_ratio: float
                     ) -> Callable[[int], float]:
    """``step -> lr / base_lr`` over all stages (``stages``: objects with ``steps``, ``lr``, ``warmup_steps``).

    For use with ``torch.optim.lr_scheduler.LambdaLR`` (whose base lr is ``base_lr``).
    """
    shape = SCHEDULES[schedule]
    bounds = []
    start = 0
    for st in stages:
        warm = st.warmup_steps if st.warmup_steps is not None else warmup_steps
        peak = (st.lr if st.lr is not None else base_lr) / base_lr
        bounds.append((start, start + st.steps, min(warm, st.steps), peak))
        start += st.steps

    def factor(step: int) -> float:
        for lo, hi, warm, peak in bounds:
            if step < hi or (lo, hi, warm, peak) == bounds[-1]:
                k = step - lo
                if k < warm:
                    return peak * (k + 1) / warm
                return peak * shape((k - warm) / max(1, hi - lo - warm), min_lr_ratio)
        raise AssertionError("unreachable: the last stage catches every later step")

    return factor
