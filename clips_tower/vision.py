"""The CLIPS ViT image tower (open_clip parameter layout, ``no_ln_pre``, mean-pool then ``ln_post``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import Transformer


class VisionTransformer(nn.Module):
    """ViT: bias-free patch conv, CLS + learned positions, pre-LN blocks, avg-pool over patches.

    Parameters: ``conv1`` [W,3,P,P], ``class_embedding`` [W], ``positional_embedding`` [N+1,W],
    ``transformer.resblocks.*``, ``ln_post``, ``proj`` [W,E].
    """

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_patches + 1, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_post = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Parameter(torch.empty(w, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """open_clip's init (scale width^-0.5 for CLS, positions and the projection)."""
        scale = self.cfg.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,H,W] (H = W = image_size) -> token embeddings [B, 1+N, W] (CLS first)."""
        res = self.cfg.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (res, res):
            raise ValueError(f"expected images [B,3,{res},{res}], got {list(pixels.shape)}")
        x = self.conv1(pixels.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B,N,W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    def forward_features(self, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Per-token hidden states after block ``layer`` (CLS at index 0), not normalised.

        pixels [B,3,H,W] -> [B, 1+N, W]. ``layer`` indexes HF-style ``hidden_states`` of length
        layers+1 (0 = embeddings, -1 = last block, -2 = penultimate as LLaVA-1.5 uses); blocks
        after it are not run.
        """
        n = len(self.transformer.resblocks) + 1
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} out of range for {n - 1} blocks (+ embeddings)")
        return self.transformer(self.embed(pixels), stop_at=layer % n)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-block tokens [B, 1+N, W] -> embedding [B, E]: mean over patches (CLS excluded), ln_post, proj."""
        return self.ln_post(tokens[:, 1:].mean(dim=1)) @ self.proj

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B,3,H,W] -> (pooled embedding [B,E], last-block tokens [B,1+N,W])."""
        tokens = self.transformer(self.embed(pixels))
        return self.pool(tokens), tokens


def resize_pos_embed(pos: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Interpolate ViT positions [1+G*G, W] (CLS first) to a new grid: [1+grid_size^2, W].

    Bicubic on the patch grid (as open_clip does when fine-tuning 224 -> 336); CLS is kept.
    """
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old * old != pos.shape[0] - 1:
        raise ValueError(f"positional embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if old == grid_size:
        return pos
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, -1).to(pos.dtype)
    return torch.cat([pos[:1], grid], dim=0)
