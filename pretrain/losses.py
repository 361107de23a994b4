"""Losses: symmetric InfoNCE (CLIP), sigmoid (SigLIP), and the CLIPS combination with the captioner.

``CLIPSLoss`` computes

    L = contrastive_weight * sum_t w_t * CON(image, text_t) + caption_weight * CE(captioner)

with ``w = {"web": 0.5, "sub": 0.5}``, ``contrastive_weight = 1`` and ``caption_weight = 2`` for
CLIPS. Contrastive losses take the features of the whole (global, accumulated) batch and an
optional set of ``rows`` (this rank's samples): a row-restricted loss averaged over ranks equals
the full loss, which is what the memory-saving "local loss" relies on.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: image [N,E], text [N,E] (pair i = row i), scale scalar.

    ``rows`` (LongTensor [R], default all N): only those images' image->text rows and those texts'
    text->image rows are computed; the result is their mean, so averaging it over a partition of
    the rows gives the full loss. ``bias`` is unused (signature shared with :func:`siglip_loss`).
    """
    if rows is None:  # all rows: text->image logits are the transpose, one [N,N] matmul instead of two
        logits = scale * (image @ text.T)
        labels = torch.arange(image.shape[0], device=image.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    logits_i2t = scale * (image[rows] @ text.T)  # [R,N]
    logits_t2i = scale * (text[rows] @ image.T)
    return 0.5 * (F.cross_entropy(logits_i2t, rows) + F.cross_entropy(logits_t2i, rows))


def siglip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss (SigLIP): every (image, text) pair is a binary match/no-match problem.

    image [N,E], text [N,E]; logits ``scale * x_i . y_j + bias``; the sum over pairs of
    ``-log sigmoid(+-logit)`` divided by the number of image rows (``rows`` as in :func:`clip_loss`).
    """
    if rows is None:
        rows = torch.arange(image.shape[0], device=image.device)
    logits = scale * image[rows] @ text.T
    if bias is not None:
        logits = logits + bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(rows.shape[0], device=rows.device), rows] = 1.0
    return -F.logsigmoid(signs * logits).sum() / rows.shape[0]


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64 (bf16/fp16 features are upcast for the loss maths)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


ContrastiveLoss = Callable[..., torch.Tensor]
CONTRASTIVE_LOSSES: dict[str, ContrastiveLoss] = {"clip": clip_loss, "siglip": siglip_loss}


class CLIPSLoss(nn.Module):
    """Weighted contrastive terms (one per text name) + weighted captioner cross-entropy.

    Args:
        text_weights: contrastive weight per text name; names with weight 0 are not contrasted.
        contrastive: ``"clip"`` or ``"siglip"``.
        contrastive_weight / caption_weight: the outer weights (CLIPS: 1 and 2).
        siglip_bias_init: initial learnable logit bias (SigLIP only; held as ``logit_bias``).
    """

    def __init__(self, text_weights: Mapping[str, float], contrastive: str = "clip", contrastive_weight: float = 1.0,
                 caption_weight: float = 2.0, siglip_bias_init: float = -10.0) -> None:
        super().__init__()
        if contrastive not in CONTRASTIVE_LOSSES:
            raise KeyError(f"unknown contrastive loss {contrastive!r}; choose from {sorted(CONTRASTIVE_LOSSES)}")
        self.text_weights = {k: float(v) for k, v in text_weights.items() if v}
        self.contrastive_fn = CONTRASTIVE_LOSSES[contrastive]
        self.contrastive_weight, self.caption_weight = float(contrastive_weight), float(caption_weight)
        self.logit_bias = nn.Parameter(torch.tensor(float(siglip_bias_init))) if contrastive == "siglip" else None

    def forward(
        self,
        image: torch.Tensor,
        texts: Mapping[str, torch.Tensor],
        scale: torch.Tensor,
        caption_logits: torch.Tensor | None = None,
        caption_labels: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        caption_norm: float | torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms.

        image [N,E] and texts {name: [N,E]}: unit-norm features of the whole (global) batch;
        scale: logit scale (exp'd); caption_logits [M,V] / caption_labels [M]: this process's
        supervised caption positions; ``caption_norm``: divisor of the summed cross-entropy
        (default M, i.e. the mean); ``bias``: SigLIP logit bias to use instead of ``logit_bias``
        (a detached copy during gradient accumulation).

        Returns ``{"loss", "contrastive", "contrastive/<name>" ..., "caption" (with a captioner)}``.
        """
        bias = self.logit_bias if bias is None else bias
        image = at_least_fp32(image)
        out: dict[str, torch.Tensor] = {}
        con = image.new_zeros(())
        for name, w in self.text_weights.items():
            term = self.contrastive_fn(image, at_least_fp32(texts[name]), at_least_fp32(scale), bias, rows)
            out[f"contrastive/{name}"] = term
            con = con + w * term
        out["contrastive"] = con
        total = self.contrastive_weight * con
        if caption_logits is not None and self.caption_weight:
            ce = F.cross_entropy(at_least_fp32(caption_logits), caption_labels, reduction="sum")
            norm = caption_labels.numel() if caption_norm is None else caption_norm
            out["caption"] = ce / max(norm, 1) if not torch.is_tensor(norm) else ce / norm.clamp_min(1)
            total = total + self.caption_weight * out["caption"]
        out["loss"] = total
        return out
