"""The CLIPS model: image tower + text tower (+ optional captioner) and a learnable temperature."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .captioner import Captioner
from .config import CLIPSConfig
from .layers import ATTN_IMPLS, SelfAttention, Transformer
from .text import TextTransformer
from .tokenizer import PAD_ID
from .vision import VisionTransformer


class CLIPS(nn.Module):
    """CLIP with an optional CLIPS captioner.

    ``visual`` and ``text`` hold the encoders (open_clip names, with the text tower under
    ``text.``), ``logit_scale`` is the log inverse temperature, ``captioner`` is ``None`` for a
    plain CLIP and for the released encoder checkpoints.
    """

    def __init__(self, config: CLIPSConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
        self.captioner = (
            Captioner(config.captioner, config.vision.width, config.text.width, config.text.vocab_size)
            if config.captioner is not None
            else None
        )

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """pixels [B,3,H,W] -> image embeddings [B,E] (unit norm if ``normalize``)."""
        pooled, _ = self.visual(pixels)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ids [B,T] -> text embeddings [B,E] (unit norm if ``normalize``)."""
        pooled, _ = self.text(ids)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def forward(
        self,
        images: torch.Tensor,
        texts: Mapping[str, torch.Tensor],
        target_ids: torch.Tensor | None = None,
        prefix_text: str = "web",
        caption_negatives: int | None = None,
    ) -> dict:
        """One training forward pass.

        images [B,3,H,W]; texts: named token-id batches [B,T] to contrast with the images (e.g.
        ``{"web": ..., "sub": ...}``; all names go through the text tower in one batched call);
        target_ids [B,Q] decoder targets of the full synthetic caption (runs the captioner, which
        is conditioned on ``texts[prefix_text]``).

        Returns a dict: ``image_features`` [B,E] and ``text_features`` {name: [B,E]} (unit norm),
        ``logit_scale`` (exp of the parameter, scalar), and with ``target_ids``:
        ``caption_logits`` [M,V] and ``caption_labels`` [M] at the M supervised (non-pad) positions
        (query i predicts target token i+1), so the vocabulary projection runs on real tokens only.

        ``caption_negatives``: None scores every vocabulary entry (``caption_logits`` [M,V], labels
        are token ids: the paper's loss). An int k makes it a sampled softmax over C candidates: the
        distinct tokens of this batch's targets plus k tokens drawn uniformly from the vocabulary
        (``caption_logits`` [M,C], labels index the candidates). It costs ~C/V of the head, which
        dominates a small model's step with a 32k vocabulary. The random negatives matter: with
        the batch's tokens alone, tokens that never occur in targets keep their initial logits,
        and full-vocabulary generation then emits them wherever the model is unsure.
        """
        b = images.shape[0]
        image_pooled, image_tokens = self.visual(images)
        names = list(texts)
        for name in names:
            if texts[name].shape[0] != b:
                raise ValueError(f"texts[{name!r}] has batch {texts[name].shape[0]}, images have {b}")
        text_pooled, text_tokens = self.text(torch.cat([texts[n] for n in names]))
        out = {
            "image_features": F.normalize(image_pooled, dim=-1),
            "text_features": {n: F.normalize(f, dim=-1) for n, f in zip(names, text_pooled.split(b))},
            "logit_scale": self.logit_scale.exp(),
        }
        if target_ids is not None:
            if self.captioner is None:
                raise ValueError("target_ids given but this model has no captioner (config.captioner is null)")
            if prefix_text not in texts:
                raise KeyError(f"the captioner is conditioned on texts[{prefix_text!r}], which is missing")
            q = self.captioner.cfg.num_queries
            if target_ids.shape != (b, q):
                raise ValueError(f"target_ids must be [{b},{q}], got {list(target_ids.shape)}")
            web_tokens = text_tokens.split(b)[names.index(prefix_text)][:, :-1]  # drop the [CLS] slot
            hidden = self.captioner.hidden(image_tokens[:, 1:], web_tokens)  # [B,Q,D]
            labels = F.pad(target_ids[:, 1:], (0, 1), value=PAD_ID)  # query i -> token i+1
            keep = labels != PAD_ID
            hidden, labels = hidden[keep], labels[keep]
            if caption_negatives is None:
                out["caption_logits"], out["caption_labels"] = self.captioner.head(hidden), labels
            else:
                weight = self.captioner.head.weight
                drawn = torch.randint(weight.shape[0], (caption_negatives,), device=labels.device)
                candidates, inverse = torch.unique(torch.cat([labels, drawn]), return_inverse=True)
                out["caption_logits"] = F.linear(hidden, weight[candidates])
                out["caption_labels"] = inverse[: labels.numel()]
        return out

    @torch.no_grad()
    def generate_caption_ids(self, images: torch.Tensor, web_ids: torch.Tensor) -> torch.Tensor:
        """Greedy captions in one forward pass: images [B,3,H,W], web_ids [B,T] -> ids [B,Q].

        Row i holds the predicted tokens 1..Q of the target (decode up to the first ``[eos]``).
        """
        if self.captioner is None:
            raise ValueError("this model has no captioner")
        _, image_tokens = self.visual(images)
        _, text_tokens = self.text(web_ids)
        return self.captioner(image_tokens[:, 1:], text_tokens[:, :-1]).argmax(dim=-1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (all towers); trades ~30% compute for memory."""
        for m in self.modules():
            if isinstance(m, Transformer):
                m.grad_checkpointing = enable

    def set_attn_impl(self, impl: str) -> None:
        """Select ``"sdpa"`` (fused kernels, default) or ``"reference"`` attention everywhere."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, SelfAttention):
                m.impl = impl


def create_model(
    name_or_config: str | CLIPSConfig,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    image_size: int | None = None,
    captioner: bool = True,
) -> CLIPS:
    """Build a randomly initialised model from a registered name or a :class:`CLIPSConfig`.

    ``device="meta"`` instantiates any size without memory. ``image_size`` overrides the config's
    resolution; ``captioner=False`` drops the captioner (a plain CLIP).
    """
    from .registry import get_model_config

    cfg = get_model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if image_size is not None:
        cfg = cfg.with_image_size(image_size)
    if not captioner:
        cfg = cfg.without_captioner()
    with torch.device(device or "cpu"):
        model = CLIPS(cfg)
    return model.to(dtype) if dtype is not None else model
