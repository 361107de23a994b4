"""Plug CLIPS towers into the original LLaVA code base (PyPI ``llava-torch``, import name ``llava``).

``register()`` replaces ``build_vision_tower`` in ``llava.model.multimodal_encoder.builder`` and in
``llava.model.llava_arch`` (which imported it by name): a tower string with a kind prefix of
:data:`~llava_integration.towers.TOWER_KINDS` (``clips:<checkpoint or named model>``,
``clip:<HF folder>``, ``siglip:<HF folder>``; ``--vision_tower`` of LLaVA's ``train.py``,
``mm_vision_tower`` of a saved config) builds that tower kind (e.g.
:class:`~llava_integration.towers.CLIPSVisionTower`); anything else goes to LLaVA's own builder
unchanged. As in LLaVA, the tower's weights are always (re)loaded from
``config.mm_vision_tower``, never from the LLaVA checkpoint.

Nothing imports ``llava`` unless ``register()`` is called::

    from llava_integration.original_llava import register
    register()
    # ... then use llava as usual, e.g. llava.train.train.train()
"""

from __future__ import annotations

from typing import Any

from .towers import TOWER_KINDS, VisionTower, spec_prefix

# Modules that hold a name ``build_vision_tower`` to patch.
_PATCHED_MODULES = ("llava.model.multimodal_encoder.builder", "llava.model.llava_arch")
_ORIGINAL_ATTR = "_clips_original_builder"


def build_clips_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> VisionTower:
    """LLaVA-style builder for a prefixed tower spec (the class its prefix names): reads ``mm_vision_tower`` (or ``vision_tower``),
    ``mm_vision_select_layer`` (required, as LLaVA) and ``mm_vision_select_feature`` (default
    ``patch``) from ``vision_tower_cfg``; ``delay_load`` is passed through."""
    spec = _tower_name(vision_tower_cfg)
    delay_load = kwargs.pop("delay_load", False) and not getattr(vision_tower_cfg, "unfreeze_mm_vision_tower", False)
    if kwargs:
        raise TypeError(f"unexpected arguments for a CLIPS tower: {sorted(kwargs)}")
    kind = spec_prefix(spec)
    if kind is None:
        raise ValueError(f"vision tower {spec!r} has no kind prefix ({', '.join(k + ':' for k in TOWER_KINDS)})")
    return TOWER_KINDS[kind](
        spec,
        select_layer=vision_tower_cfg.mm_vision_select_layer,
        select_feature=getattr(vision_tower_cfg, "mm_vision_select_feature", "patch"),
        delay_load=delay_load,
    )


def _tower_name(cfg: Any) -> str | None:
    return getattr(cfg, "mm_vision_tower", getattr(cfg, "vision_tower", None))


def _make_builder(original):
    def build_vision_tower(vision_tower_cfg, **kwargs):
        name = _tower_name(vision_tower_cfg)
        if isinstance(name, str) and spec_prefix(name) is not None:
            return build_clips_vision_tower(vision_tower_cfg, **kwargs)
        return original(vision_tower_cfg, **kwargs)

    setattr(build_vision_tower, _ORIGINAL_ATTR, original)
    return build_vision_tower


def register() -> None:
    """Route prefixed tower names (``clips:``, ``clip:``, ``siglip:``) to this project's towers in the
    installed ``llava`` package (idempotent).

    Raises ``ImportError`` with install instructions when ``llava`` is not installed.
    """
    import importlib

    try:
        modules = [importlib.import_module(name) for name in _PATCHED_MODULES]
    except ImportError as e:
        raise ImportError(
            f"the original LLaVA package is not importable ({e}); install it with "
            "`pip install llava-torch==1.2.2.post1 --no-deps` (its pins would replace torch/transformers)"
        ) from e
    for module in modules:
        current = module.build_vision_tower
        if not hasattr(current, _ORIGINAL_ATTR):
            module.build_vision_tower = _make_builder(current)


def unregister() -> None:
    """Restore LLaVA's own ``build_vision_tower`` wherever :func:`register` replaced it."""
    import sys

    for name in _PATCHED_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module.build_vision_tower, _ORIGINAL_ATTR):
            module.build_vision_tower = getattr(module.build_vision_tower, _ORIGINAL_ATTR)
