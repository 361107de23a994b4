"""Vision towers for LLaVA behind one interface, chosen by a tower spec string.

A spec is ``<kind>:<target>``; :data:`TOWER_KINDS` maps each kind (the spec prefix) to its class:

- ``clips:<checkpoint folder or weights file>`` (this project's format or the official open_clip
  one) or ``clips:<named model>`` (a registered config, random weights from a fixed seed, for tests
  and demos);
- ``clip:<folder>`` / ``siglip:<folder>``: a local folder of an HF ``CLIPVisionModel`` /
  ``SiglipVisionModel`` (or of the full CLIP/SigLIP model).

A bare path (no known prefix) is resolved by one documented fallback, :func:`bare_path_kind`:
a folder whose ``config.json`` ``model_type`` is in :data:`HF_MODEL_TYPES` is that HF kind, else a
CLIPS checkpoint (this project's ``config.json`` or the open_clip files) is ``clips``, else an error.

Every tower implements the interface the original LLaVA code expects of its ``CLIPVisionTower``
(``is_loaded``, ``load_model``, ``forward``, ``dtype``/``device``/``config``/``hidden_size``,
``num_patches(_per_side)``, ``dummy_feature``, ``image_processor``) and works standalone too. Each
kind knows how many non-patch tokens lead its sequence (CLS: 1 for CLIPS and CLIP, 0 for
SigLIP), so ``select_feature="patch"`` always yields exactly the patch tokens.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import torch
import transformers
from torch import nn

import clips_tower
from clips_tower import open_clip_format as ocf
from clips_tower.checkpoint import CheckpointError, check_state_dict, read_weights, resolve_checkpoint
from clips_tower.config import CLIPSConfig, ConfigError, load_config
from clips_tower.vision import VisionTransformer

# Imported eagerly (they pull in transformers' modeling code): importing those modules for the
# first time inside deepspeed.zero.Init, which patches tensor construction, fails. hf_export holds
# only the CLIPS -> ViTModel mapping and imports nothing from this module (no import circle).
from .hf_export import vit_config_from_clips, vit_from_clips_visual
from .image_processing import clips_image_processor

log = logging.getLogger(__name__)

CLIPS_PREFIX = "clips:"
SELECT_FEATURES = ("patch", "cls_patch")
NAMED_MODEL_SEED = 0


@contextlib.contextmanager
def full_parameters(module: nn.Module) -> Iterator[None]:
    """Inside the block every parameter of ``module`` holds its full tensor.

    Under DeepSpeed ZeRO-3 parameters created inside ``deepspeed.zero.Init`` are partitioned
    (local shape ``[0]``), so a plain ``load_state_dict`` fails; here they are gathered and, on
    exit, rank 0's values are re-partitioned to every rank. Without ZeRO-3 this does nothing
    (and never imports deepspeed).
    """
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def _device_from_map(device_map: Any) -> torch.device | None:
    """LLaVA passes HF-style ``device_map`` values; a tower lives on one device."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(f"a vision tower cannot be split across devices: device_map={device_map}")
        device_map = devices.pop()
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map if not isinstance(device_map, int) else f"cuda:{device_map}")


class VisionTower(nn.Module):
    """The original-LLaVA tower contract, shared by all kinds.

    ``forward(images)``: ``[B,3,H,W]`` -> features ``[B,N,hidden]`` (``N`` = patches, +1 with
    ``select_feature="cls_patch"``), or a list of ``[3,H,W]`` -> a list of ``[1,N,hidden]``. Input
    is cast to the tower's dtype/device, output comes back in the input's dtype; runs under
    ``no_grad`` while every tower parameter is frozen. ``spec`` is the full spec (kept as
    ``vision_tower_name``, as LLaVA does), :attr:`target` the part after the kind prefix. Subclasses
    set :attr:`kind`, :attr:`num_prefix_tokens` and implement ``_read_config``,
    ``_build_image_processor``, ``_build_model``, ``_hidden_states`` and ``to_hf_vision_model``.
    """

    kind = ""
    num_prefix_tokens = 1  # non-patch tokens (CLS) in front of the patch tokens

    def __init__(self, spec: str, select_layer: int = -2, select_feature: str = "patch", delay_load: bool = False) -> None:
        super().__init__()
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {select_feature!r}")
        if select_feature == "cls_patch" and self.num_prefix_tokens == 0:
            raise ValueError(f"{self.kind} towers have no CLS token: use select_feature='patch' ({spec})")
        self.is_loaded = False
        self.vision_tower_name = spec
        self.target = spec_target(spec)
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.cfg_only = self._read_config()
        n = self.cfg_only.num_hidden_layers + 1
        if not -n <= select_layer < n:
            raise ValueError(f"select_layer {select_layer} out of range for {n - 1} layers (+ embeddings) ({spec})")
        self.image_processor = self._build_image_processor()
        if not delay_load:
            self.load_model()

    # --- kind-specific -------------------------------------------------------------------
    def _read_config(self):
        """The HF config of the tower (``image_size``, ``patch_size``, ``hidden_size``,
        ``num_hidden_layers``), read without loading weights."""
        raise NotImplementedError

    def _build_image_processor(self):
        raise NotImplementedError

    def _build_model(self) -> nn.Module:
        """The tower module with its weights (ZeRO-3 safe)."""
        raise NotImplementedError

    def _hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels ``[B,3,H,W]`` (tower dtype/device) -> hidden states ``[B,P+N,W]`` at ``select_layer``."""
        raise NotImplementedError

    def to_hf_vision_model(self) -> nn.Module:
        """A stock transformers vision model (``AutoModel.from_config(model.config)`` builds the
        same class) holding this tower's weights, fp32."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------
    def load_model(self, device_map: Any = None) -> None:
        """Build the tower with its weights (idempotent); frozen, eval mode, on ``device_map``'s device."""
        if self.is_loaded:
            log.info("%s is already loaded; load_model called again, skipping", self.vision_tower_name)
            return
        self.vision_tower = self._build_model().eval()
        self.vision_tower.requires_grad_(False)
        device = _device_from_map(device_map)
        if device is not None:
            self.vision_tower.to(device)
        self.is_loaded = True

    def feature_select(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B,P+N,W]`` -> ``[B,N,W]`` (``patch``) or unchanged (``cls_patch``)."""
        return hidden[:, self.num_prefix_tokens:] if self.select_feature == "patch" else hidden

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            hidden = self._hidden_states(images.to(device=self.device, dtype=self.dtype))
            return self.feature_select(hidden).to(images.dtype)

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """See the class docstring."""
        if not self.is_loaded:
            raise RuntimeError(f"vision tower {self.vision_tower_name} is not loaded: call load_model() first")
        if isinstance(images, (list, tuple)):
            return [self._encode(image.unsqueeze(0)) for image in images]
        return self._encode(images)

    @property
    def _first_param(self) -> torch.Tensor:
        if not self.is_loaded:
            raise RuntimeError(f"vision tower {self.vision_tower_name} is not loaded: call load_model() first")
        return next(self.vision_tower.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self._first_param.dtype

    @property
    def device(self) -> torch.device:
        return self._first_param.device

    @property
    def config(self):
        """HF config with ``image_size``, ``patch_size``, ``hidden_size`` (available before loading)."""
        return self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def dummy_feature(self) -> torch.Tensor:
        """``[1, hidden]`` zeros (LLaVA's placeholder for image-less samples)."""
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)


# --- CLIPS ---------------------------------------------------------------------------------

def _is_clips_checkpoint(path: str) -> bool:
    """A CLIPS checkpoint path: official open_clip files, or a ``config.json`` that is a CLIPS
    config (an HF model folder also has a ``config.json`` and ``model.safetensors``)."""
    try:
        fmt, config_file, _ = resolve_checkpoint(path)
        if fmt == "clips":
            load_config(config_file)
    except (CheckpointError, ConfigError):
        return False
    return True


def read_clips_checkpoint_config(target: str) -> tuple[CLIPSConfig, Path | None]:
    """(``CLIPSConfig``, weights file or ``None`` for a named model) of a CLIPS checkpoint path or named model."""
    if Path(target).exists():
        fmt, config_file, weights_file = resolve_checkpoint(target)
        if fmt == "clips":
            return load_config(config_file), weights_file
        cfg = ocf.config_from_open_clip(json.loads(config_file.read_text()), name=config_file.parent.name)
        return cfg, weights_file
    if target in clips_tower.list_models():
        return clips_tower.get_model_config(target), None
    raise ValueError(f"clips tower {target!r}: not an existing checkpoint path and not a named model "
                     f"(named models: {', '.join(clips_tower.list_models())})")


def read_clips_visual_state(weights_file: Path) -> dict[str, torch.Tensor]:
    """The image-tower tensors (``visual.`` prefix removed) of a CLIPS checkpoint, either format
    (both name the image tower ``visual.*`` identically)."""
    sd = read_weights(weights_file)
    return {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}


def _seeded_init(visual: nn.Module, seed: int) -> None:
    """Deterministic random weights: every submodule's default init, then open_clip's init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in visual.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        visual.init_weights()


class CLIPSVisionTower(VisionTower):
    """A CLIPS image tower (``clips_tower.vision.VisionTransformer``); features are
    ``visual.forward_features(pixels, layer=select_layer)``, its HF twin is a ``ViTModel``."""

    kind = "clips"
    num_prefix_tokens = 1

    def _read_config(self):
        self.clips_config, self.weights_file = read_clips_checkpoint_config(self.target)
        return vit_config_from_clips(self.clips_config)

    def _build_image_processor(self):
        return clips_image_processor(self.clips_config)

    def _build_model(self) -> nn.Module:
        # Built as a plain module: inside deepspeed.zero.Init it comes out partitioned, which
        # full_parameters() undoes while the weights are written.
        visual = VisionTransformer(self.clips_config.vision, self.clips_config.embed_dim)
        state = None
        if self.weights_file is not None:
            state = read_clips_visual_state(self.weights_file)
            # ZeRO-3 keeps the full shape of a partitioned parameter in ``ds_shape``.
            expected = {k: getattr(p, "ds_shape", p.shape) for k, p in visual.named_parameters()}
            check_state_dict(state, expected, f"{self.weights_file} (visual.*)")
        with torch.no_grad(), full_parameters(visual):
            if state is None:
                log.warning("clips tower %s: named model without a checkpoint -> random weights (seed %d)",
                            self.vision_tower_name, NAMED_MODEL_SEED)
                _seeded_init(visual, NAMED_MODEL_SEED)
            else:
                visual.load_state_dict(state, strict=True)
        return visual

    def _hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_tower.forward_features(pixels, layer=self.select_layer)

    def to_hf_vision_model(self) -> nn.Module:
        if not self.is_loaded:
            self.load_model()
        with full_parameters(self.vision_tower):
            return vit_from_clips_visual(self.vision_tower, self.config)


# --- HF vision models (CLIP, SigLIP) ---------------------------------------------------------

def _hf_model_type(spec: str) -> str | None:
    config = Path(spec) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{config}: invalid JSON ({e})") from None


class HFVisionTower(VisionTower):
    """An HF vision model loaded with ``from_pretrained`` (which handles ZeRO-3 itself when
    transformers' DeepSpeed integration is active); features are
    ``model(pixels, output_hidden_states=True).hidden_states[select_layer]``."""

    model_types: tuple[str, ...] = ()  # config.json model_type values of this kind (bare-path fallback)
    model_class_name = ""
    config_class_name = ""

    def _read_config(self):
        if not Path(self.target).is_dir():
            raise ValueError(f"{self.kind} tower {self.vision_tower_name!r}: {self.target} is not a local folder")
        model_type = _hf_model_type(self.target)
        if model_type not in self.model_types:
            raise ValueError(f"{self.kind} tower {self.vision_tower_name!r}: {self.target}/config.json has model_type "
                             f"{model_type!r}, expected one of {list(self.model_types)}")
        return getattr(transformers, self.config_class_name).from_pretrained(self.target)

    def _build_image_processor(self):
        try:
            return transformers.AutoImageProcessor.from_pretrained(self.target)
        except OSError as e:
            raise ValueError(f"{self.vision_tower_name}: no image processor (preprocessor_config.json) found: {e}") from None

    def _build_model(self) -> nn.Module:
        return getattr(transformers, self.model_class_name).from_pretrained(self.target, dtype=torch.float32)

    def _hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(pixels, output_hidden_states=True).hidden_states[self.select_layer]

    def to_hf_vision_model(self) -> nn.Module:
        if not self.is_loaded:
            self.load_model()
        return copy.deepcopy(self.vision_tower).float().requires_grad_(True)


class CLIPVisionTowerHF(HFVisionTower):
    """HF ``CLIPVisionModel`` (OpenAI CLIP, e.g. ViT-L/14-336 of LLaVA-1.5)."""

    kind = "clip"
    num_prefix_tokens = 1
    model_types = ("clip", "clip_vision_model")
    model_class_name = "CLIPVisionModel"
    config_class_name = "CLIPVisionConfig"


class SiglipVisionTowerHF(HFVisionTower):
    """HF ``SiglipVisionModel``: no CLS token, every token is a patch."""

    kind = "siglip"
    num_prefix_tokens = 0
    model_types = ("siglip", "siglip_vision_model")
    model_class_name = "SiglipVisionModel"
    config_class_name = "SiglipVisionConfig"


# Spec prefix (before the ':') -> tower class. Every kind is named here; nothing else registers one.
TOWER_KINDS: Mapping[str, type[VisionTower]] = MappingProxyType({
    "clips": CLIPSVisionTower,
    "clip": CLIPVisionTowerHF,
    "siglip": SiglipVisionTowerHF,
})
# config.json model_type -> kind, for bare paths of HF vision folders (see bare_path_kind).
HF_MODEL_TYPES: Mapping[str, str] = MappingProxyType(
    {t: name for name, cls in TOWER_KINDS.items() for t in getattr(cls, "model_types", ())})


def _split_prefix(spec: str) -> tuple[str | None, str]:
    prefix, sep, rest = spec.partition(":")
    return (prefix, rest) if sep and prefix in TOWER_KINDS else (None, spec)


def spec_prefix(spec: str) -> str | None:
    """The kind named by ``spec``'s prefix (``"clips"`` for ``clips:...``), or None for a bare path."""
    return _split_prefix(spec)[0]


def spec_target(spec: str) -> str:
    """The part of ``spec`` after its kind prefix (the whole spec for a bare path)."""
    return _split_prefix(spec)[1]


def bare_path_kind(path: str) -> str:
    """The documented fallback for a spec without a kind prefix, in this order: a folder whose
    ``config.json`` has a ``model_type`` of :data:`HF_MODEL_TYPES` is that HF kind; a CLIPS
    checkpoint (this project's folder/file or the official open_clip one) is ``clips``; anything
    else is a ``ValueError`` naming the accepted forms. Named models always need ``clips:``."""
    model_type = _hf_model_type(path)
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    if _is_clips_checkpoint(path):
        return "clips"
    raise ValueError(
        f"unknown vision tower {path!r}: expected '<kind>:<target>' with kind one of {sorted(TOWER_KINDS)} "
        f"(e.g. 'clips:<checkpoint or named model>', 'clip:<HF folder>'), a CLIPS checkpoint folder, or a "
        f"folder with an HF vision model whose config.json model_type is one of {sorted(HF_MODEL_TYPES)}"
    )


def tower_kind(spec: str) -> str:
    """The kind (key of :data:`TOWER_KINDS`) of ``spec``: its prefix, else :func:`bare_path_kind`."""
    prefix = spec_prefix(spec)
    return prefix if prefix is not None else bare_path_kind(spec)


def load_vision_tower(spec: str, select_layer: int = -2, select_feature: str = "patch", delay_load: bool = False) -> VisionTower:
    """Build the tower for ``spec`` (see the module docstring); loaded unless ``delay_load``."""
    return TOWER_KINDS[tower_kind(spec)](spec, select_layer=select_layer, select_feature=select_feature,
                                         delay_load=delay_load)


def hf_vision_config_and_state(spec: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(HF vision config, state dict of the matching HF vision model) of a tower spec."""
    model = load_vision_tower(spec).to_hf_vision_model()
    return model.config, model.state_dict()
