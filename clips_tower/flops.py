"""Analytic FLOPs of a CLIPS / CLIP model: one training sample, counted from the config alone.

Convention (the one MFU figures use, as in the PaLM and Megatron papers): only matrix
multiplications count, one multiply-add = 2 FLOPs; LayerNorm, GELU, softmax, embeddings lookups
and the optimizer are left out. Training = forward + backward = 3 x forward (the backward pass does
two matmuls per forward matmul). Activation recomputation (gradient checkpointing) and the extra
no-grad encoder pass of gradient accumulation are *hardware* work, not model work, and are not
counted, so MFU stays comparable across memory-saving settings.

Per pre-LN transformer block on ``L`` tokens of width ``W`` with MLP width ``H``::

    qkv 6 L W^2  +  scores (QK^T) 2 L^2 W  +  mix (AV) 2 L^2 W  +  out-proj 2 L W^2  +  MLP 4 L W H
    = 8 L W^2 + 4 L W H + 4 L^2 W

Towers (N = (image_size / patch)^2 patches, T = text context length, E = embed dim):

- vision: patch conv ``2 N (3 P^2) W`` + blocks on ``L = N + 1`` + pooled projection ``2 W E``;
- text (once per contrasted text, e.g. web + sub-caption = 2): blocks on ``L = T`` + ``2 W E``;
- captioner (width D, Q queries, vocab V): prefix projections ``2 N W_v D + 2 (T - 1) W_t D``,
  blocks on ``L = N + (T - 1) + Q`` (the prefix/causal mask runs dense through SDPA, so every
  score is counted), vocabulary head ``2 M D V`` on the M supervised positions (default ``Q``,
  an upper bound; pass the measured mean caption length for a tighter figure);
- contrastive logits: ``2 E B`` per text per sample (one ``[B,B]`` matmul against a global batch
  of B; the text->image logits are its transpose), negligible unless B is huge. The
  row-partitioned loss of a distributed run computes both directions for its rows, twice this.
"""

from __future__ import annotations

from dataclasses import dataclass


def block_flops(tokens: int, width: int, mlp_ratio: float) -> int:
    """Forward FLOPs of one pre-LN transformer block on ``tokens`` tokens (see module docstring)."""
    hidden = int(width * mlp_ratio)
    return 8 * tokens * width**2 + 4 * tokens * width * hidden + 4 * tokens**2 * width


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per sample by part; ``train`` is 3 x ``forward``."""

    vision: int
    text: int
    captioner: int
    contrastive: int

    @property
    def forward(self) -> int:
        """Forward FLOPs per sample (all parts)."""
        return self.vision + self.text + self.captioner + self.contrastive

    @property
    def train(self) -> int:
        """Training (forward + backward) FLOPs per sample."""
        return 3 * self.forward


def model_flops(
    config,
    num_texts: int = 2,
    captioner: bool | None = None,
    caption_tokens: int | None = None,
    global_batch: int = 0,
    image_size: int | None = None,
) -> ModelFlops:
    """Per-sample FLOPs of a :class:`~clips_tower.config.CLIPSConfig`.

    Args:
        config: the model config (``vision``, ``text``, ``captioner``, ``embed_dim``).
        num_texts: texts contrasted per image (CLIPS: web + sub-caption = 2; plain CLIP: 1).
        captioner: count the captioner (default: when the config has one).
        caption_tokens: supervised caption positions per sample (default: all ``num_queries``).
        global_batch: contrastive batch size for the logits term (0 leaves it out).
        image_size: resolution to count at (default: the config's).

    Returns a :class:`ModelFlops`; ``.train`` is what MFU divides by.
    """
    v, t, e = config.vision, config.text, config.embed_dim
    res = image_size or v.image_size
    n = (res // v.patch_size) ** 2
    vision = 2 * n * 3 * v.patch_size**2 * v.width + v.layers * block_flops(n + 1, v.width, v.mlp_ratio) + 2 * v.width * e
    text = num_texts * (t.layers * block_flops(t.context_length, t.width, t.mlp_ratio) + 2 * t.width * e)
    cap = 0
    c = config.captioner
    if c is not None and (captioner is None or captioner):
        prefix = n + t.context_length - 1
        m = c.num_queries if caption_tokens is None else caption_tokens
        cap = (
            2 * n * v.width * c.width
            + 2 * (t.context_length - 1) * t.width * c.width
            + c.layers * block_flops(prefix + c.num_queries, c.width, c.mlp_ratio)
            + 2 * m * c.width * t.vocab_size
        )
    contrastive = num_texts * 2 * e * global_batch
    return ModelFlops(vision=vision, text=text, captioner=cap, contrastive=contrastive)
