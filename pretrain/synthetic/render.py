"""Draw a :class:`~.scenes.Scene` with PIL: flat background with faint seeded noise, filled shapes,
the label band (if any) along the bottom edge on top."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scenes import BACKGROUNDS, COLOURS, LABEL_BAND, LABELS, SIZES, Scene, SceneObject


def _polygon(obj: SceneObject, side: int) -> list[tuple[float, float]] | None:
    cx, cy, r = obj.x * side, obj.y * side, SIZES[obj.size] * side
    if obj.shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if obj.shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return None


def render_scene(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """RGB image ``size x size`` of ``scene``; ``rng`` adds +-6 levels of pixel noise (None: none)."""
    bg = np.empty((size, size, 3), dtype=np.float32)
    bg[:] = BACKGROUNDS[scene.background]
    if rng is not None:
        bg += rng.uniform(-6, 6, size=bg.shape)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        poly = _polygon(obj, size)
        if poly is not None:
            draw.polygon(poly, fill=fill)
            continue
        cx, cy, r = obj.x * size, obj.y * size, SIZES[obj.size] * size
        box = (cx - r, cy - r, cx + r, cy + r)
        (draw.ellipse if obj.shape == "circle" else draw.rectangle)(box, fill=fill)
    if scene.label is not None:  # a banner on top, as a watermark or a product strip is (object centres stay above it)
        draw.rectangle((0, round(size * (1 - LABEL_BAND)), size, size), fill=LABELS[scene.label])
    return img
