"""The CLIPS image tower as a stock transformers ``ViTModel`` (exact: same hidden states).

HF's ``CLIPVisionModel`` always applies a LayerNorm before the blocks, which CLIPS has not, but
``ViTModel`` is the same network as the CLIPS ViT: bias-free patch conv (HF's conv has a bias,
set to zero), CLS + learned positions, pre-LN blocks with exact GELU. The packed qkv projection
is split into ``q/k/v``. Two things differ and are documented rather than hidden:

- ``ViTModel.layernorm`` (we load ``ln_post`` into it) acts on every token of
  ``last_hidden_state``; CLIPS pools (mean over patches) *before* ``ln_post``. ``hidden_states``
  are identical, and LLaVA reads ``hidden_states[-2]``.
- ``ViTModel``'s pooler (``tanh(dense(CLS))``) has no CLIPS counterpart; it is exported as zeros
  so ``pooler_output`` cannot be mistaken for the CLIPS embedding.

Parameters are mapped module to module (attributes of the in-memory model), never by checkpoint
key strings: ``save_pretrained`` writes whatever key names the installed transformers uses.

This module knows nothing of tower specs (``towers`` imports it, not the other way round); saving
any tower as an HF folder is :func:`llava_integration.export.export_vision_tower`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from clips_tower.config import CLIPSConfig
from clips_tower.vision import VisionTransformer

# CLIPS activation names -> transformers ACT2FN names.
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def vit_config_from_clips(config: CLIPSConfig) -> ViTConfig:
    """The ``ViTConfig`` of a CLIPS image tower (``layer_norm_eps`` set explicitly: ViT's default is 1e-12)."""
    v = config.vision
    return ViTConfig(
        image_size=v.image_size,
        patch_size=v.patch_size,
        num_channels=3,
        hidden_size=v.width,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        intermediate_size=int(v.width * v.mlp_ratio),
        hidden_act=_HF_ACT[v.act],
        layer_norm_eps=v.ln_eps,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        encoder_stride=v.patch_size,
    )


class _Writer:
    """Copies tensors into parameters (shape-checked) and remembers which parameters it wrote."""

    def __init__(self) -> None:
        self.written: set[int] = set()

    def __call__(self, dst: nn.Parameter, src: torch.Tensor) -> None:
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: HF {list(dst.shape)} vs CLIPS {list(src.shape)}")
        dst.copy_(src)
        self.written.add(id(dst))

    def linear(self, dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self(dst.weight, weight)
        self(dst.bias, bias)

    def norm(self, dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
        if dst.eps != src.eps:
            raise ValueError(f"LayerNorm eps mismatch: HF {dst.eps} vs CLIPS {src.eps}")
        self.linear(dst, src.weight, src.bias)


@torch.no_grad()
def vit_from_clips_visual(visual: VisionTransformer, vit_config: ViTConfig) -> ViTModel:
    """A ``ViTModel`` (fp32, eval mode) holding the weights of a CLIPS ``VisionTransformer``.

    ``vit_config`` comes from :func:`vit_config_from_clips`. For pixels ``[B,3,H,W]``,
    ``ViTModel(..., output_hidden_states=True).hidden_states[i]`` equals
    ``visual.forward_features(pixels, layer=i)`` for every ``i``.
    """
    # Allocated without a random init (every parameter is written below, which is checked).
    with torch.device("meta"):
        vit = ViTModel(vit_config)
    vit = vit.to_empty(device="cpu").float().eval()
    if len(vit.layers) != len(visual.transformer.resblocks):
        raise ValueError(f"ViT has {len(vit.layers)} layers, the CLIPS tower {len(visual.transformer.resblocks)}")
    write = _Writer()
    emb = vit.embeddings
    write(emb.patch_embeddings.projection.weight, visual.conv1.weight)
    write(emb.patch_embeddings.projection.bias, torch.zeros_like(emb.patch_embeddings.projection.bias))  # CLIPS' conv has no bias
    write(emb.cls_token, visual.class_embedding.view(1, 1, -1))
    write(emb.position_embeddings, visual.positional_embedding.unsqueeze(0))
    for layer, block in zip(vit.layers, visual.transformer.resblocks):
        write.norm(layer.layernorm_before, block.ln_1)
        # nn.MultiheadAttention packing: rows [q; k; v].
        for proj, w, b in zip((layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj),
                              block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            write.linear(proj, w, b)
        write.linear(layer.attention.o_proj, block.attn.out_proj.weight, block.attn.out_proj.bias)
        write.norm(layer.layernorm_after, block.ln_2)
        write.linear(layer.mlp.fc1, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        write.linear(layer.mlp.fc2, block.mlp.c_proj.weight, block.mlp.c_proj.bias)
    write.norm(vit.layernorm, visual.ln_post)
    if vit.pooler is not None:  # no CLIPS counterpart: zeros, so it cannot pass for the CLIPS embedding
        write.linear(vit.pooler.dense, torch.zeros_like(vit.pooler.dense.weight), torch.zeros_like(vit.pooler.dense.bias))
    unwritten = [n for n, p in vit.named_parameters() if id(p) not in write.written]
    if unwritten:
        raise RuntimeError(f"ViT parameters without a CLIPS source: {unwritten}")
    return vit
