"""Typed model configuration: dataclasses loaded strictly from small JSON files.

A config is data, not code: every named model is one JSON file in ``model_configs/`` and every
field is declared here. Loading goes through the project's one strict loader
(:mod:`clips_tower.schema`): unknown keys, wrong types, wrong tuple lengths are errors that name
the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .schema import ConfigError, build_dataclass  # ConfigError: re-exported, its historical home

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass(frozen=True)
class VisionConfig:
    """ViT image tower: patch conv (no bias) + CLS + learned positions, pre-LN blocks, no ln_pre.

    ``heads`` defaults to ``width // 64`` (open_clip's ``head_width`` convention).
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 0
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    act: str = "gelu"

    def __post_init__(self) -> None:
        if self.heads == 0:
            object.__setattr__(self, "heads", max(1, self.width // 64))
        _check_common(self, "vision")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (CLS excluded)."""
        return self.grid_size**2


@dataclass(frozen=True)
class TextConfig:
    """Bidirectional text tower pooled at the last position (always ``[CLS]``)."""

    vocab_size: int = 32000
    context_length: int = 80
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    act: str = "gelu_tanh"

    def __post_init__(self) -> None:
        _check_common(self, "text")


@dataclass(frozen=True)
class CaptionerConfig:
    """Non-causal-prefix decoder: [img tokens, web-text tokens] prefix + learnable queries."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    num_queries: int = 128
    ln_eps: float = 1e-6
    act: str = "gelu_tanh"

    def __post_init__(self) -> None:
        _check_common(self, "captioner")


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval preprocessing: "squash" resize to res x res then normalise (open_clip preprocess_cfg)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_mode: str = "squash"


@dataclass(frozen=True)
class CLIPSConfig:
    """A whole CLIPS model. ``captioner=None`` gives a plain CLIP (and the released encoders)."""

    name: str
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    captioner: CaptionerConfig | None = None
    init_logit_scale: float = math.log(1 / 0.07)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (round-trips through :func:`config_from_dict`)."""
        return dataclasses.asdict(self)

    def with_image_size(self, image_size: int) -> "CLIPSConfig":
        """Same model at another input resolution (positional embeddings get interpolated)."""
        return dataclasses.replace(self, vision=dataclasses.replace(self.vision, image_size=image_size))

    def without_captioner(self) -> "CLIPSConfig":
        """The encoders alone (what the official checkpoints hold)."""
        return dataclasses.replace(self, captioner=None)


def _check_common(cfg: Any, section: str) -> None:
    if cfg.width % cfg.heads:
        raise ConfigError(f"{section}.width {cfg.width} is not divisible by heads {cfg.heads}")
    if cfg.act not in ACTIVATIONS:
        raise ConfigError(f"{section}.act must be one of {ACTIVATIONS}, got {cfg.act!r}")


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> CLIPSConfig:
    """Build a :class:`CLIPSConfig` from a dict, rejecting unknown keys and wrong types.

    ``source`` (a file name) is put into every error message.
    """
    return build_dataclass(CLIPSConfig, data, source)


def load_config(path: str | Path) -> CLIPSConfig:
    """Read a model config JSON file (the registry's files, or a checkpoint's ``config.json``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    return config_from_dict(data, str(path))
