"""Save a vision tower (any spec of :func:`~llava_integration.towers.load_vision_tower`) as a stock
transformers vision model folder: ``clips llava export-vit``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from clips_tower.io import atomic_dir, atomic_write_json

from .towers import load_vision_tower

log = logging.getLogger(__name__)


def export_vision_tower(tower: str, out_dir: str | Path) -> Path:
    """Save a tower (any spec of :func:`~llava_integration.towers.load_vision_tower`) as a stock
    transformers vision model folder plus its image processor; returns ``out_dir``.

    A CLIPS tower becomes a ``ViTModel`` (``AutoModel.from_pretrained(out_dir)`` loads it);
    HF CLIP/SigLIP towers are re-saved as their vision model. ``clips_export.json`` records the source.
    """
    start = time.perf_counter()
    vt = load_vision_tower(tower)
    model = vt.to_hf_vision_model()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        vt.image_processor.save_pretrained(tmp)
        atomic_write_json(tmp / "clips_export.json", {"tower": tower, "kind": vt.kind,
                                                       "hf_class": type(model).__name__})
    log.info("exported %s tower %s as %s to %s in %.1f s", vt.kind, tower, type(model).__name__, out_dir,
             time.perf_counter() - start)
    return Path(out_dir)
