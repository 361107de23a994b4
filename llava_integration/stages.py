"""The two LLaVA training stages as data.

A :class:`Stage` says which modules learn, the default conversation template, which modules get
their own learning rate, what the run saves, and the LLaVA-1.5 recipe values its command starts
from (any flag the user passes overrides them). :mod:`llava_integration.train` runs any stage.

Module keys (see :data:`MODULE_PATHS`): ``projector``, ``language_model``, ``vision_tower``;
LLaVA-NeXT's ``--mm_tunable_parts`` names for them are :data:`TUNABLE_PARTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# Where each trainable part lives in transformers 5.x's LlavaForConditionalGeneration.
MODULE_PATHS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "projector": ("model.multi_modal_projector",),
    "language_model": ("model.language_model", "lm_head"),
    "vision_tower": ("model.vision_tower",),
})
# LLaVA-NeXT's --mm_tunable_parts / --lora_target names -> module keys.
TUNABLE_PARTS: Mapping[str, str] = MappingProxyType({
    "mm_vision_tower": "vision_tower",
    "mm_mlp_adapter": "projector",
    "mm_language_model": "language_model",
})


@dataclass(frozen=True)
class Stage:
    """One training stage.

    - ``trainable``: module keys whose weights learn by default (``--mm_tunable_parts`` replaces
      them, ``--tune_mm_mlp_adapter`` narrows them to the projector, as in LLaVA; with
      ``--lora_enable`` the parts named by ``--lora_target`` learn through LoRA adapters).
    - ``tunable``: the module keys this stage may train at all: what its saved artefact holds.
    - ``template``: the conversation template unless ``--version`` names another.
    - ``lr_flags``: module key -> training flag holding that module's learning rate (used when
      the flag is set; otherwise ``--learning_rate``).
    - ``save``: ``"projector"`` (the projector alone, safetensors) or ``"llava"`` (an HF LLaVA
      folder, or a LoRA adapter).
    - ``recipe``: flag -> value, LLaVA-1.5's settings for this stage; the command line starts from
      these, so ``clips llava <stage> --data_path ... --output_dir ...`` follows the recipe.
    - ``feature_cache``: whether the stage may train from cached tower features (frozen tower,
      no augmentation).
    """

    name: str
    trainable: tuple[str, ...]
    tunable: tuple[str, ...]
    template: str
    save: str
    lr_flags: Mapping[str, str] = field(default_factory=dict)
    recipe: Mapping[str, str] = field(default_factory=dict)
    feature_cache: bool = False
    help: str = ""

    def recipe_argv(self) -> list[str]:
        """``recipe`` as command-line flags (prepended to the user's, which therefore win)."""
        return [a for k, v in self.recipe.items() for a in (f"--{k}", v)]


PRETRAIN = Stage(
    name="pretrain",
    help="stage 1: projector pretraining on image-caption pairs (template plain, LCS-558K format)",
    trainable=("projector",),
    tunable=("projector",),  # saves only the projector
    template="plain",
    save="projector",
    lr_flags={"projector": "mm_projector_lr"},
    feature_cache=True,
    recipe={
        "learning_rate": "1e-3", "weight_decay": "0.0", "warmup_ratio": "0.03", "lr_scheduler_type": "cosine",
        "num_train_epochs": "1", "per_device_train_batch_size": "32", "save_strategy": "steps",
        "save_steps": "24000", "save_total_limit": "1", "logging_steps": "1", "report_to": "none",
    },
)

FINETUNE = Stage(
    name="finetune",
    help="stage 2: visual instruction tuning of LLM + projector, optionally the tower (template v1, mix665k format)",
    trainable=("projector", "language_model"),
    tunable=("projector", "language_model", "vision_tower"),
    template="v1",
    save="llava",
    lr_flags={"projector": "mm_projector_lr", "vision_tower": "mm_vision_tower_lr"},
    recipe={
        "image_aspect_ratio": "pad", "group_by_modality_length": "True",
        "learning_rate": "2e-5", "weight_decay": "0.0", "warmup_ratio": "0.03", "lr_scheduler_type": "cosine",
        "num_train_epochs": "1", "per_device_train_batch_size": "16", "save_strategy": "steps",
        "save_steps": "50000", "save_total_limit": "1", "logging_steps": "1", "report_to": "none",
    },
)

STAGES: Mapping[str, Stage] = MappingProxyType({s.name: s for s in (PRETRAIN, FINETUNE)})


def get_stage(name: str) -> Stage:
    """The stage registered under ``name``."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; choose from {sorted(STAGES)}") from None
