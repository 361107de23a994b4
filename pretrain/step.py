"""One optimisation step: ``accum_steps`` micro-batches -> forward, loss, backward, NaN/Inf check,
clip + update (by the engine).

With more than one micro-batch, a no-grad pass first embeds the whole accumulated batch into a
:class:`~pretrain.objective.FeatureBank`, so every micro-batch is contrasted against all of it (the
step equals one big batch; see :mod:`pretrain.objective`). A step whose loss terms or gradients are
NaN/Inf on any rank raises :class:`~pretrain.nonfinite.NonFiniteStep` (skipped when the engine can
still drop the update); :func:`handle_nonfinite` is the run's policy for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from clips_tower.tokenizer import PAD_ID

from . import distributed as D
from .engines import Engine, autocast
from .nonfinite import GRADIENT, NonFiniteError, NonFiniteStep, agreed_nonfinite, flag_nonfinite
from .objective import FeatureBank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepSettings:
    """What a step needs besides the engine and the batches: this rank's ``device``, the world
    size, the autocast ``precision`` and the loss weights (to report the total loss)."""

    device: torch.device
    world: int
    precision: str
    contrastive_weight: float
    caption_weight: float


def to_device(batches: list[dict], device: torch.device) -> list[dict]:
    """Collated micro-batches (``images`` [B,3,H,W], ``texts`` name -> [B,L] ids, ``targets``
    [B,T] ids or None) moved to ``device``."""
    return [{"images": b["images"].to(device, non_blocking=True),
             "texts": {n: t.to(device, non_blocking=True) for n, t in b["texts"].items()},
             "targets": b["targets"].to(device, non_blocking=True) if b["targets"] is not None else None}
            for b in batches]


def feature_bank(engine: Engine, micro_batches: list[dict], settings: StepSettings) -> FeatureBank | None:
    """Features of the whole accumulated batch (no grad), None for a single micro-batch."""
    if len(micro_batches) < 2:
        return None
    with torch.no_grad(), autocast(settings.device, settings.precision):
        feats = [engine.module(m["images"], m["texts"], features_only=True) for m in micro_batches]
    return FeatureBank(torch.cat([f[0] for f in feats]),
                       {n: torch.cat([f[1][n] for f in feats]) for n in feats[0][1]}, feats[0][0].shape[0])


def train_step(engine: Engine, batches: list[dict], settings: StepSettings) -> tuple[dict[str, float], float]:
    """One optimizer step over the micro-batches ``batches`` (collective).

    Returns (rank-averaged loss terms + ``loss`` + ``grad_norm`` + ``lr``, supervised caption
    tokens in the global batch). Raises :class:`NonFiniteStep` (all ranks together) when a loss
    term or gradient is NaN/Inf; the update is then dropped if ``engine.can_skip_update``.
    """
    dev = settings.device
    mbs = to_device(batches, dev)
    tokens = sum(int((m["targets"][:, 1:] != PAD_ID).sum()) for m in mbs if m["targets"] is not None)
    tokens_total = D.all_reduce_sum(torch.tensor(float(tokens), device=dev))
    caption_norm = tokens_total / settings.world
    bank = feature_bank(engine, mbs, settings)
    lr = engine.lr
    logged: dict[str, torch.Tensor] = {}
    flags: dict[str, torch.Tensor] = {}  # loss term -> NaN/Inf seen in any micro-batch (kept on device)
    for j, m in enumerate(mbs):
        last = j == len(mbs) - 1
        with engine.sync(last):
            with autocast(dev, settings.precision):
                terms = engine.module(m["images"], m["texts"], m["targets"], bank=bank, micro=j, live_scale=last,
                                      caption_norm=caption_norm)
            engine.backward(terms["loss"])
        flag_nonfinite(flags, terms)
        for k, v in terms.items():
            if k == "caption":  # per micro-batch share of the global mean: add up
                logged[k] = logged.get(k, 0) + v.detach()
            elif k != "loss":  # contrastive terms cover the whole bank: the last one is the step's
                logged[k] = v.detach()
    nonfinite = agreed_nonfinite(flags, engine.grad_norm(), dev)
    if nonfinite:
        if engine.can_skip_update:
            engine.skip_update()
        raise NonFiniteStep(nonfinite, skipped=engine.can_skip_update)
    grad_norm = engine.step()
    names = sorted(logged)
    values = D.all_reduce_sum(torch.stack([logged[k].float().reshape(()) for k in names])) / settings.world
    out = dict(zip(names, values.tolist()))
    out["loss"] = settings.contrastive_weight * out["contrastive"] + settings.caption_weight * out.get("caption", 0.0)
    out.update(grad_norm=grad_norm, lr=lr)
    return out, float(tokens_total)


def handle_nonfinite(e: NonFiniteStep, step: int, skipped_so_far: int, limit: int, last_checkpoint: str) -> None:
    """The run's NaN/Inf policy for step ``step`` (1-based): return (the caller counts one more
    skipped step) while fewer than ``limit`` steps were skipped and the engine dropped the update;
    otherwise raise :class:`NonFiniteError` naming the step, what was non-finite, why the run stops
    and ``last_checkpoint`` (a sentence naming the last complete checkpoint)."""
    terms = [t for t in e.what if t != GRADIENT]
    what = " and ".join(([f"loss term(s) {', '.join(terms)}"] if terms else [])
                        + (["gradient"] if GRADIENT in e.what else []))
    if not e.skipped or skipped_so_far >= limit:
        why = ("the engine had already applied the update inside backward()" if not e.skipped else
               f"{skipped_so_far} step(s) skipped already, train.max_nonfinite_skips={limit}")
        raise NonFiniteError(f"step {step}: non-finite {what} ({why}); stopping; {last_checkpoint}")
    log.warning("step %d: non-finite %s: update skipped (%d of at most %d)", step, what, skipped_so_far + 1, limit)
