"""Registered models made cheap enough to train on CPU without changing what they are made of."""

from __future__ import annotations

import dataclasses

from clips_tower.config import CLIPSConfig


def one_block(cfg: CLIPSConfig, grid: int = 2) -> CLIPSConfig:
    """``cfg`` with one transformer block per tower and a ``grid x grid`` patch input; every width,
    head count, MLP ratio, activation, patch size, vocabulary and the embedding and query sizes
    stay those of ``cfg``. The blocks of a tower are identical modules, so block 0 has every
    parameter kind the deeper ones have."""
    cfg = cfg.with_image_size(grid * cfg.vision.patch_size)
    captioner = dataclasses.replace(cfg.captioner, layers=1) if cfg.captioner is not None else None
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layers=1),
                               text=dataclasses.replace(cfg.text, layers=1), captioner=captioner)


def restore_depth(cfg: CLIPSConfig, like: CLIPSConfig) -> CLIPSConfig:
    """``cfg`` with the depths and input size of ``like`` (inverse of :func:`one_block`)."""
    cfg = cfg.with_image_size(like.vision.image_size)
    captioner = (dataclasses.replace(cfg.captioner, layers=like.captioner.layers)
                 if cfg.captioner is not None and like.captioner is not None else cfg.captioner)
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layers=like.vision.layers),
                               text=dataclasses.replace(cfg.text, layers=like.text.layers), captioner=captioner)
