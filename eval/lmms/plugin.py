"""The ``lmms_eval.models`` entry point that makes ``--model clips_llava`` resolvable.

lmms-eval 0.7.3 builds its model registry from its own table plus every entry point of group
``lmms_eval.models`` (``@register_model`` alone does not reach its CLI); an entry point may be a
callable returning a ``ModelManifest``. pyproject.toml declares
``clips_llava = "eval.lmms.plugin:manifest"``; the adapter module itself is imported only when
the model is requested.
"""

from __future__ import annotations

MODEL_NAME = "clips_llava"
ADAPTER_CLASS = "eval.lmms.adapter.ClipsLlava"


def manifest():
    """The ``lmms_eval.models.registry_v2.ModelManifest`` of ``clips_llava`` (a simple model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=ADAPTER_CLASS)
