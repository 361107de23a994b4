"""Saving and loading models: this project's format and the official open_clip format.

Own format (a folder): ``config.json`` (the :class:`CLIPSConfig`), ``model.safetensors`` and the
tokenizer files. Official format: see :mod:`clips_tower.open_clip_format`. Loading is strict:
every checkpoint key must be used and every shape must match, and the error names the key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file

from . import open_clip_format as ocf
from .config import CLIPSConfig, load_config
from .io import atomic_dir, atomic_save_safetensors, atomic_write_json
from .model import CLIPS
from .tokenizer import check_tokenizer_fits
from .vision import resize_pos_embed

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMATS = ("clips", "open_clip")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the model it is loaded into."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat state dict from ``.safetensors`` or a pickled ``.bin/.pt`` (``weights_only=True``).

    open_clip training checkpoints (``{"state_dict": ..., "optimizer": ...}``, keys prefixed
    ``module.`` under DDP) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; report the file either way
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return dict(sd)


def resolve_checkpoint(path: str | Path) -> tuple[str, Path, Path]:
    """Find (format, config file, weights file) for a checkpoint folder or weights file."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (folder / CONFIG_FILE).is_file() and (path.is_file() or (folder / WEIGHTS_FILE).is_file()):
        return "clips", folder / CONFIG_FILE, path if path.is_file() else folder / WEIGHTS_FILE
    if (folder / ocf.CONFIG_NAME).is_file():
        if path.is_file():
            return "open_clip", folder / ocf.CONFIG_NAME, path
        for name in ocf.WEIGHT_NAMES:
            if (folder / name).is_file():
                return "open_clip", folder / ocf.CONFIG_NAME, folder / name
        raise CheckpointError(f"{folder}: has {ocf.CONFIG_NAME} but none of {list(ocf.WEIGHT_NAMES)}")
    raise CheckpointError(
        f"{path}: not a checkpoint (expected {CONFIG_FILE} + {WEIGHTS_FILE}, or {ocf.CONFIG_NAME} + "
        f"one of {list(ocf.WEIGHT_NAMES)})"
    )


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str) -> None:
    """Raise :class:`CheckpointError` listing every missing/unexpected key and shape mismatch."""
    problems = []
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        problems.append(f"missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    for k in sorted(set(sd) & set(expected)):
        if tuple(sd[k].shape) != tuple(expected[k]):
            problems.append(f"{k}: checkpoint shape {list(sd[k].shape)} != model shape {list(expected[k])}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    image_size: int | None = None,
    captioner: bool = True,
) -> CLIPS:
    """Load a model from this project's folder or an official open_clip folder/weights file.

    ``image_size`` loads at another resolution, interpolating the positional embeddings (e.g. a
    224 px checkpoint for 336 px fine-tuning). ``captioner=False`` drops the captioner.
    The model is built on the meta device and the checkpoint tensors are assigned, so even
    ViT-H loads without a random init.
    """
    fmt, config_file, weights_file = resolve_checkpoint(path)
    if fmt == "clips":
        cfg = load_config(config_file)
        sd = read_weights(weights_file)
    else:
        import json

        cfg = ocf.config_from_open_clip(json.loads(config_file.read_text()), name=config_file.parent.name)
        sd = ocf.state_dict_from_open_clip(read_weights(weights_file))
    if not captioner:
        cfg = cfg.without_captioner()
        sd = {k: v for k, v in sd.items() if not k.startswith("captioner.")}
    if image_size is not None and image_size != cfg.vision.image_size:
        cfg = cfg.with_image_size(image_size)
        key = "visual.positional_embedding"
        if key in sd:
            sd[key] = resize_pos_embed(sd[key], cfg.vision.grid_size)
            log.info("interpolated %s to %d x %d patches", key, cfg.vision.grid_size, cfg.vision.grid_size)
    return model_from_state_dict(cfg, sd, source=str(weights_file), device=device, dtype=dtype)


def model_from_state_dict(
    cfg: CLIPSConfig,
    sd: Mapping[str, torch.Tensor],
    source: str = "<state dict>",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> CLIPS:
    """Build ``CLIPS(cfg)`` holding exactly the tensors of ``sd`` (strictly checked)."""
    with torch.device("meta"):
        model = CLIPS(cfg)
    check_state_dict(sd, {k: v.shape for k, v in model.state_dict().items()}, source)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device or "cpu", dtype=dtype)


def save_model(model: CLIPS, out_dir: str | Path, format: str = "clips", tokenizer=None) -> Path:
    """Write ``model`` to ``out_dir`` atomically; returns the folder.

    ``format="clips"``: ``config.json`` + ``model.safetensors`` (+ tokenizer files when a
    :class:`~clips_tower.tokenizer.CLIPSTokenizer` is given). ``format="open_clip"``:
    ``open_clip_config.json`` + ``open_clip_model.safetensors``, loadable by open_clip (the
    captioner is left out: the official format has none).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if tokenizer is not None and format == "clips":  # a folder whose tokenizer cannot feed its model is unusable
        check_tokenizer_fits(tokenizer, model.config, f"tokenizer {tokenizer.source}")
    sd = model.state_dict()
    with atomic_dir(out_dir) as tmp:
        if format == "clips":
            atomic_write_json(tmp / CONFIG_FILE, model.config.to_dict())
            atomic_save_safetensors(sd, tmp / WEIGHTS_FILE, metadata={"format": "pt", "clips_config": model.config.name})
            if tokenizer is not None:
                tokenizer.save(tmp)
        else:
            atomic_write_json(tmp / ocf.CONFIG_NAME, ocf.config_to_open_clip(model.config))
            atomic_save_safetensors(ocf.state_dict_to_open_clip(sd), tmp / ocf.WEIGHT_NAMES[0], metadata={"format": "pt"})
    return Path(out_dir)
