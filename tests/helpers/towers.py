"""Tiny towers saved to disk for the LLaVA tower/export tests (no downloads, seeded)."""

from __future__ import annotations

from pathlib import Path

import torch

import clips_tower
from clips_tower.config import config_from_dict

TINY_RES, TINY_PATCH = 32, 8


def tiny_clips(seed: int = 0, **vision: object) -> clips_tower.CLIPS:
    """clips-tiny (32 px, patch 8, 2x64) with optional vision overrides, seeded, eval mode."""
    cfg = clips_tower.get_model_config("clips-tiny")
    if vision:
        d = cfg.to_dict()
        d["vision"].update(vision)
        cfg = config_from_dict(d, "<tiny override>")
    torch.manual_seed(seed)
    return clips_tower.create_model(cfg).eval()


def save_clips(model: clips_tower.CLIPS, folder: Path, fmt: str = "clips") -> Path:
    return clips_tower.save_model(model, folder, format=fmt)


def save_hf_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A tiny HF ``CLIPVisionModel`` + its image processor (bicubic, OpenAI mean/std)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(image_size=TINY_RES, patch_size=TINY_PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2)
    CLIPVisionModel(cfg).eval().save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": TINY_RES}, crop_size={"height": TINY_RES, "width": TINY_RES}).save_pretrained(folder)
    return folder


def save_hf_clip_full(folder: Path, seed: int = 0) -> Path:
    """A tiny full HF ``CLIPModel`` folder (``model_type`` "clip", like openai/clip-vit-large-patch14-336)."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=TINY_RES, patch_size=TINY_PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(cfg).eval().save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": TINY_RES}, crop_size={"height": TINY_RES, "width": TINY_RES}).save_pretrained(folder)
    return folder


def save_hf_siglip_vision(folder: Path, seed: int = 0) -> Path:
    """A tiny HF ``SiglipVisionModel`` (no CLS token) + its image processor."""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(image_size=TINY_RES, patch_size=TINY_PATCH, hidden_size=48, intermediate_size=96,
                             num_hidden_layers=3, num_attention_heads=2)
    SiglipVisionModel(cfg).eval().save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": TINY_RES, "width": TINY_RES}).save_pretrained(folder)
    return folder


def random_image(width: int = 57, height: int = 41, mode: str = "RGB", seed: int = 0):
    """A noise PIL image of the given size and mode."""
    import numpy as np
    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB").convert(mode)



def save_clips_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIPS checkpoint folder (this project's format)."""
    return save_clips(tiny_clips(seed), folder)


# One tiny on-disk tower per kind of llava_integration.towers.TOWER_KINDS (swept by the tests).
TOWER_FOLDERS = {"clips": save_clips_folder, "clip": save_hf_clip_vision, "siglip": save_hf_siglip_vision}
