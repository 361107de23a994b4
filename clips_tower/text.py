"""The CLIPS text tower: bidirectional (no attention mask), pooled at the last position."""

from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig
from .layers import Transformer


class TextTransformer(nn.Module):
    """Token + learned position embeddings, pre-LN blocks without mask, ``ln_final``, projection.

    The tokenizer always puts ``[CLS]`` at the last position, which is the pooled token. Padding
    is attended to (the released models were trained that way), so no mask is built.
    Parameters: ``token_embedding`` [V,W], ``positional_embedding`` [T,W],
    ``transformer.resblocks.*``, ``ln_final``, ``text_projection`` [W,E].
    """

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """open_clip's text init."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.cfg.width**-0.5)
        self.transformer.init_weights()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B,T] (T = context_length) -> (pooled embedding [B,E], last-block tokens [B,T,W])."""
        if ids.ndim != 2 or ids.shape[1] != self.cfg.context_length:
            raise ValueError(f"expected token ids [B,{self.cfg.context_length}], got {list(ids.shape)}")
        x = self.token_embedding(ids) + self.positional_embedding
        tokens = self.transformer(x)
        return self.ln_final(tokens[:, -1]) @ self.text_projection, tokens
