"""The CLIPS captioner: predicts the full synthetic caption from image and web-caption tokens.

Sequence = ``[prefix, queries]`` where prefix = ``[image_proj(patch tokens), text_proj(web tokens)]``
and queries are 128 learnable vectors. Prefix tokens attend to the whole prefix and never to the
queries; query i attends to the whole prefix and to queries 0..i. Query i predicts target token
i+1. The queries never see caption tokens, so a caption comes out of ONE forward pass.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .config import CaptionerConfig
from .layers import Transformer


def prefix_causal_mask_reference(prefix_len: int, num_queries: int) -> torch.Tensor:
    """Brute-force construction of the captioner mask, for tests: bool [S,S], True = may attend."""
    s = prefix_len + num_queries
    mask = torch.zeros(s, s, dtype=torch.bool)
    for i in range(s):
        for j in range(s):
            if i < prefix_len:
                mask[i, j] = j < prefix_len
            else:
                mask[i, j] = j < prefix_len or j <= i
    return mask


@functools.lru_cache(maxsize=16)
def prefix_causal_mask(prefix_len: int, num_queries: int, device: torch.device) -> torch.Tensor:
    """Captioner attention mask, built once per (shape, device) and shared by every layer and call.

    Returns bool [S,S] with S = prefix_len + num_queries (broadcast over batch and heads by SDPA).
    """
    s = prefix_len + num_queries
    i = torch.arange(s, device=device)[:, None]
    j = torch.arange(s, device=device)[None, :]
    return (j < prefix_len) | ((i >= prefix_len) & (j <= i))


class Captioner(nn.Module):
    """Prefix-conditioned parallel decoder. Parameters: ``image_proj``, ``text_proj`` (no bias),
    ``queries`` [Q,D], ``transformer``, ``ln_final``, ``head`` (no bias)."""

    def __init__(self, cfg: CaptionerConfig, vision_width: int, text_width: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Linear(vision_width, cfg.width, bias=False)
        self.text_proj = nn.Linear(text_width, cfg.width, bias=False)
        self.queries = nn.Parameter(torch.empty(cfg.num_queries, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Queries N(0,1) as in the reference; projections and head scaled by fan-in."""
        nn.init.normal_(self.queries, std=1.0)
        nn.init.normal_(self.image_proj.weight, std=self.image_proj.in_features**-0.5)
        nn.init.normal_(self.text_proj.weight, std=self.text_proj.in_features**-0.5)
        nn.init.normal_(self.head.weight, std=self.cfg.width**-0.5)
        self.transformer.init_weights()

    def hidden(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """Decoder states at the query positions, after ``ln_final``.

        image_tokens [B,N,Wv] (last ViT block, CLS dropped, before ln_post);
        text_tokens [B,T,Wt] (last text block, [CLS] position dropped, before ln_final).
        Returns [B,Q,D].
        """
        b = image_tokens.shape[0]
        prefix = torch.cat([self.image_proj(image_tokens), self.text_proj(text_tokens)], dim=1)
        queries = self.queries.to(prefix.dtype).expand(b, -1, -1)
        x = torch.cat([prefix, queries], dim=1)
        mask = prefix_causal_mask(prefix.shape[1], self.cfg.num_queries, x.device)
        x = self.transformer(x, mask)
        return self.ln_final(x[:, prefix.shape[1]:])

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary at every query: [B,Q,V] (see :meth:`hidden` for inputs)."""
        return self.head(self.hidden(image_tokens, text_tokens))
