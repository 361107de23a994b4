"""The module that DDP / FSDP2 / DeepSpeed wrap: the CLIPS model + its loss, global-batch aware.

Contrastive negatives span the whole *accumulated global* batch: ``A`` micro-batches x ``W`` ranks
x ``b`` samples. Gradient accumulation keeps them (as open_clip's ``accum_freq`` does):

1. before the step, every micro-batch is encoded without gradients and gathered from all ranks
   into a :class:`FeatureBank` ``[A*W*b, E]`` (block ``m`` = micro-batch ``m`` of every rank);
2. micro-batch ``j`` is then encoded again with gradients, gathered (with gradients) and put in
   place of block ``j``; the loss over the whole bank is back-propagated. Summed over ``j``, the
   gradients equal those of one step on the full batch: each micro step contributes exactly the
   gradient through its own features. The logit scale (and SigLIP bias) enter the loss directly,
   so they are live in the last micro step only and detached in the others, and the caption
   cross-entropy of micro-batch ``j`` is divided by the token count of the whole global batch.

The cost is one extra no-grad forward pass of both encoders per micro-batch when ``A > 1``.
With ``local_loss`` each rank computes the contrastive rows of its own samples (of every
micro-batch) only; gathered gradients make the result identical, with ``W`` times smaller logit
matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from .distributed import gather_no_grad, gather_with_grad
from .losses import CLIPSLoss, at_least_fp32


@dataclass
class FeatureBank:
    """No-grad unit-norm features of the accumulated global batch: ``image`` [A*G,E] and ``texts``
    {name: [A*G,E]}, block ``m`` (rows ``m*G .. (m+1)*G``) from micro-batch ``m`` of every rank."""

    image: torch.Tensor
    texts: dict[str, torch.Tensor]
    block: int  # G = world * micro-batch size

    def with_live(self, micro: int, image: torch.Tensor, texts: Mapping[str, torch.Tensor]):
        """(image [A*G,E], texts) with block ``micro`` replaced by the live (differentiable) features."""
        lo, hi = micro * self.block, (micro + 1) * self.block

        def splice(bank: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
            return torch.cat([bank[:lo], live.to(bank.dtype), bank[hi:]])

        return splice(self.image, image), {n: splice(self.texts[n], t) for n, t in texts.items()}


class CLIPSObjective(nn.Module):
    """``model`` (a :class:`clips_tower.CLIPS`) + ``loss`` (:class:`~pretrain.losses.CLIPSLoss`).

    ``rank``/``world`` place this process's rows in the gathered batch; ``local_loss`` restricts
    the contrastive rows to them; ``max_logit_scale`` caps the temperature (100 = CLIP's clamp);
    ``caption_negatives`` goes to the model (sampled softmax: each rank's micro-batch has its own
    candidates).
    """

    def __init__(self, model: nn.Module, loss: CLIPSLoss, rank: int = 0, world: int = 1, local_loss: bool = False,
                 max_logit_scale: float = 100.0, prefix_text: str = "web",
                 caption_negatives: int | None = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.rank, self.world, self.local_loss = rank, world, local_loss
        self.max_logit_scale, self.prefix_text = max_logit_scale, prefix_text
        self.caption_negatives = caption_negatives

    def _encode(self, images: torch.Tensor, texts: Mapping[str, torch.Tensor], targets: torch.Tensor | None) -> dict:
        out = self.model(images, texts, target_ids=targets, prefix_text=self.prefix_text,
                         caption_negatives=self.caption_negatives)
        out["image_features"] = at_least_fp32(out["image_features"])
        out["text_features"] = {n: at_least_fp32(f) for n, f in out["text_features"].items()}
        return out

    def forward(
        self,
        images: torch.Tensor,
        texts: Mapping[str, torch.Tensor],
        targets: torch.Tensor | None = None,
        *,
        bank: FeatureBank | None = None,
        micro: int = 0,
        live_scale: bool = True,
        caption_norm: torch.Tensor | None = None,
        features_only: bool = False,
    ):
        """One micro-batch: images [b,3,H,W], texts {name: [b,T]}, targets [b,Q] or None.

        ``features_only``: return the gathered no-grad features ``(image [W*b,E], {name: [W*b,E]})``
        for the :class:`FeatureBank`. Otherwise return the loss terms (see
        :class:`~pretrain.losses.CLIPSLoss`) over the bank with block ``micro`` live (the gathered
        micro-batch alone when ``bank`` is None). ``caption_norm``: supervised target tokens of the
        whole accumulated global batch divided by the world size (DDP averages over ranks).
        """
        if features_only:
            out = self._encode(images, texts, None)
            return gather_no_grad(out["image_features"]), {n: gather_no_grad(f) for n, f in out["text_features"].items()}
        out = self._encode(images, texts, targets)
        image = gather_with_grad(out["image_features"])
        text = {n: gather_with_grad(f) for n, f in out["text_features"].items()}
        b = images.shape[0]
        num_blocks = 1
        if bank is not None:
            image, text = bank.with_live(micro, image, text)
            num_blocks = image.shape[0] // bank.block
        rows = None
        if self.local_loss:
            block = self.world * b
            own = torch.arange(b, device=image.device) + self.rank * b
            rows = torch.cat([own + m * block for m in range(num_blocks)])
        scale = out["logit_scale"].clamp(max=self.max_logit_scale)
        bias = self.loss.logit_bias
        if not live_scale:
            scale = scale.detach()
            bias = bias.detach() if bias is not None else None
        return self.loss(image, text, scale, out.get("caption_logits"), out.get("caption_labels"), rows=rows,
                         caption_norm=caption_norm, bias=bias)
