"""An independent re-statement of open_clip's plain ``CLIP`` forward for the CLIPS configuration.

Written from open_clip's documented structure (module names and the order of operations), using
``torch.nn.MultiheadAttention`` as open_clip does, so that parity with it checks both our
maths and our state-dict key names (loaded with ``strict=True``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int, approximate: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(approximate=approximate), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    def __init__(self, width, layers, heads, approximate, eps):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, approximate, eps) for _ in range(layers))

    def forward(self, x):
        for b in self.resblocks:
            x = b(x)
        return x


class Visual(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, embed_dim, eps):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((image_size // patch) ** 2 + 1, width))
        self.transformer = Stack(width, layers, heads, "none", eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer(x)          # no ln_pre
        pooled = x[:, 1:].mean(1)        # pool_type avg (CLS excluded), final_ln_after_pool
        return self.ln_post(pooled) @ self.proj


class OpenCLIPReference(nn.Module):
    """open_clip ``CLIP`` (vision avg-pool, text last-token pool, no causal mask)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        v, t = cfg.vision, cfg.text
        self.visual = Visual(v.image_size, v.patch_size, v.width, v.layers, v.heads, cfg.embed_dim, v.ln_eps)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.zeros(t.context_length, t.width))
        self.transformer = Stack(t.width, t.layers, t.heads, "tanh", t.ln_eps)
        self.ln_final = nn.LayerNorm(t.width, eps=t.ln_eps)
        self.text_projection = nn.Parameter(torch.zeros(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, x):
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, ids):
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding)
        x = self.ln_final(x)
        return F.normalize(x[:, -1] @ self.text_projection, dim=-1)
