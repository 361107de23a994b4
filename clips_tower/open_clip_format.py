"""Conversion to and from the official open_clip checkpoint format of the released CLIPS models.

The official folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_pytorch_model.bin`` (or ``open_clip_model.safetensors``): the state dict of
open_clip's plain ``CLIP`` class. Our vision keys are identical (``visual.*``); open_clip keeps
the text tower at the top level (``token_embedding``, ``transformer.*``, ``ln_final`` ...) where
we keep it under ``text.``. The captioner is not part of the released format.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .config import CLIPSConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")

# open_clip settings that CLIPS fixes: absent keys take open_clip's default, which must equal these.
_VISION_FIXED = {"no_ln_pre": (True, False), "pool_type": ("avg", "tok"), "final_ln_after_pool": (True, False)}
_TEXT_FIXED = {"pool_type": ("last", "argmax"), "no_causal_mask": (True, False), "proj_bias": (False, False)}
# open_clip options with these (default) values change nothing; any other value is unsupported.
_VISION_NEUTRAL = {"ls_init_value": None, "attentional_pool": False, "pos_embed_type": "learnable",
                   "timm_model_name": None, "input_patchnorm": False}
_TEXT_NEUTRAL = {"ls_init_value": None, "embed_cls": False, "proj_type": "linear", "hf_model_name": None}
# Settings that do not change the network's function (training-time or tokenizer/IO options).
_IGNORED = {"patch_dropout", "output_tokens", "hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode",
            "pad_id", "hf_pooler_type", "hf_proj_type", "hf_model_pretrained"}


def _check_flags(section: str, cfg: Mapping[str, Any], fixed: dict, neutral: dict, used: set) -> None:
    for key, (want, default) in fixed.items():
        if cfg.get(key, default) != want:
            raise ConfigError(f"{CONFIG_NAME}: {section}.{key} = {cfg.get(key, default)!r}, but CLIPS needs {want!r}")
    for key, default in neutral.items():
        if cfg.get(key, default) != default:
            raise ConfigError(f"{CONFIG_NAME}: {section}.{key} = {cfg[key]!r} is not supported (only {default!r})")
    unknown = sorted(set(cfg) - set(fixed) - set(neutral) - _IGNORED - used)
    if unknown:
        raise ConfigError(f"{CONFIG_NAME}: unsupported key(s) in {section}: {unknown}")


def _act(cfg: Mapping[str, Any]) -> str:
    return "gelu_tanh" if cfg.get("act_kwargs", {}).get("approximate") == "tanh" else "gelu"


def config_from_open_clip(oc: Mapping[str, Any], name: str = "open_clip") -> CLIPSConfig:
    """Read an ``open_clip_config.json`` dict into a captioner-free :class:`CLIPSConfig`.

    Raises :class:`ConfigError` naming the key when the config describes something CLIPS is not.
    """
    model_cfg = oc.get("model_cfg", oc)
    if model_cfg.get("quick_gelu", False):
        raise ConfigError(f"{CONFIG_NAME}: model_cfg.quick_gelu = true is not a CLIPS architecture")
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    v_used = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio", "act_kwargs", "norm_kwargs"}
    t_used = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "act_kwargs", "norm_kwargs"}
    _check_flags("vision_cfg", v, _VISION_FIXED, _VISION_NEUTRAL, v_used)
    _check_flags("text_cfg", t, _TEXT_FIXED, _TEXT_NEUTRAL, t_used)
    vision = VisionConfig(
        image_size=int(v["image_size"]),
        patch_size=int(v["patch_size"]),
        width=int(v["width"]),
        layers=int(v["layers"]),
        heads=int(v["width"]) // int(v.get("head_width", 64)),
        mlp_ratio=float(v.get("mlp_ratio", 4.0)),
        ln_eps=float(v.get("norm_kwargs", {}).get("eps", 1e-5)),  # nn.LayerNorm's default
        act=_act(v),
    )
    text = TextConfig(
        vocab_size=int(t["vocab_size"]),
        context_length=int(t["context_length"]),
        width=int(t["width"]),
        layers=int(t["layers"]),
        heads=int(t["heads"]),
        mlp_ratio=float(t.get("mlp_ratio", 4.0)),
        ln_eps=float(t.get("norm_kwargs", {}).get("eps", 1e-5)),
        act=_act(t),
    )
    pp = oc.get("preprocess_cfg", {})
    default = PreprocessConfig()
    preprocess = PreprocessConfig(
        mean=tuple(pp.get("mean", default.mean)),
        std=tuple(pp.get("std", default.std)),
        interpolation=pp.get("interpolation", default.interpolation),
        resize_mode=pp.get("resize_mode", default.resize_mode),
    )
    return CLIPSConfig(name=name, embed_dim=int(model_cfg["embed_dim"]), vision=vision, text=text,
                       captioner=None, preprocess=preprocess)


def _tower_cfg(c: VisionConfig | TextConfig) -> dict[str, Any]:
    cfg: dict[str, Any] = {"width": c.width, "layers": c.layers, "mlp_ratio": c.mlp_ratio,
                           "norm_kwargs": {"eps": c.ln_eps}}
    if c.act == "gelu_tanh":
        cfg["act_kwargs"] = {"approximate": "tanh"}
    return cfg


def config_to_open_clip(cfg: CLIPSConfig) -> dict[str, Any]:
    """The ``open_clip_config.json`` dict for a model (the captioner is not representable)."""
    v, t = cfg.vision, cfg.text
    vision_cfg = {"image_size": v.image_size, "patch_size": v.patch_size, "head_width": v.width // v.heads,
                  **_tower_cfg(v), "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True}
    text_cfg = {"context_length": t.context_length, "vocab_size": t.vocab_size, "heads": t.heads, **_tower_cfg(t),
                "hf_tokenizer_name": "bert-base-uncased", "tokenizer_mode": "clips",
                "pool_type": "last", "no_causal_mask": True, "proj_bias": False}
    pp = cfg.preprocess
    return {
        "model_cfg": {"embed_dim": cfg.embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg},
        "preprocess_cfg": {"mean": list(pp.mean), "std": list(pp.std), "interpolation": pp.interpolation,
                           "resize_mode": pp.resize_mode},
    }


def state_dict_from_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` keys -> our keys (text tower moves under ``text.``)."""
    return {k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}": v for k, v in sd.items()}


def state_dict_to_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> open_clip ``CLIP`` keys; captioner weights are dropped (not in the format)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("captioner."):
            continue
        out[k.removeprefix("text.")] = v
    return out

