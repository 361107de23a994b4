"""Turn generated scenes into files: webdataset shards, JSONL + image folder, parquet, eval splits.

Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its own random generator), so any subset or
order of samples is reproducible and the same scene can be written in every format.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clips_tower.io import atomic_path, atomic_write_json, atomic_write_text

from ..data.shards import json_bytes, write_shards
from .captions import reference_captions, synthetic_caption, web_caption
from .config import DEFAULT_WORLD, WorldConfig
from .render import render_scene
from .scenes import Scene, sample_scene

WEB_KEY = "org_caption"
SYNTHETIC_KEY = "re_caption"


@dataclass(frozen=True)
class SyntheticSample:
    """One generated sample: key, scene, image, web and synthetic captions."""

    key: str
    scene: Scene
    image: Image.Image
    web: str
    synthetic: str


def generate_sample(index: int, seed: int = 0, image_size: int = 64, max_objects: int = 3,
                    world: WorldConfig = DEFAULT_WORLD) -> SyntheticSample:
    """Sample ``index`` of the dataset with ``seed`` (deterministic, independent of other samples),
    with the label/caption rates of ``world``.

    Scene, captions and pixel noise draw from separate streams, so the captions do not depend on
    ``image_size``.
    """
    scene = sample_scene(np.random.default_rng([seed, index, 0]), max_objects, world.label_rate)
    text_rng = np.random.default_rng([seed, index, 1])
    web = web_caption(scene, text_rng, world)
    image = render_scene(scene, image_size, np.random.default_rng([seed, index, 2]))
    return SyntheticSample(f"{seed:04d}{index:08d}", scene, image, web, synthetic_caption(scene, text_rng, world))


def encode_image(image: Image.Image, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Image bytes in ``fmt`` (``jpg``, ``png`` or ``webp``)."""
    buf = io.BytesIO()
    image.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], **({"quality": quality} if fmt != "png" else {}))
    return buf.getvalue()


def encode_image_base64(image: Image.Image) -> str:
    """Lossless PNG of ``image`` (RGB) as base64 text: the ``"image"`` field of a self-contained
    JSON record (the lmms-eval task files of :mod:`.tasks`)."""
    return base64.b64encode(encode_image(image.convert("RGB"), "png")).decode("ascii")


def _samples(n: int, seed: int, image_size: int, start: int = 0, world: WorldConfig = DEFAULT_WORLD):
    return (generate_sample(i, seed, image_size, world=world) for i in range(start, start + n))


def write_webdataset(out_dir: str | Path, n: int, seed: int = 0, shard_size: int = 1000, image_size: int = 64,
                     start: int = 0, world: WorldConfig = DEFAULT_WORLD) -> dict[str, int]:
    """``n`` samples as shards of ``jpg`` + ``json`` (``org_caption``/``re_caption``); returns sizes."""
    records = ((s.key, {"jpg": encode_image(s.image), "json": json_bytes({WEB_KEY: s.web, SYNTHETIC_KEY: s.synthetic})})
               for s in _samples(n, seed, image_size, start, world))
    return write_shards(records, out_dir, shard_size)


def write_jsonl(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64, start: int = 0) -> Path:
    """``n`` samples as ``images/<key>.jpg`` + ``captions.jsonl`` (``image`` relative path + captions)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for s in _samples(n, seed, image_size, start):
        with atomic_path(out_dir / "images" / f"{s.key}.jpg") as tmp:
            tmp.write_bytes(encode_image(s.image))
        lines.append(json.dumps({"key": s.key, "image": f"images/{s.key}.jpg", WEB_KEY: s.web, SYNTHETIC_KEY: s.synthetic}))
    atomic_write_text(out_dir / "captions.jsonl", "\n".join(lines) + "\n")
    return out_dir / "captions.jsonl"


def write_parquet(path: str | Path, n: int, seed: int = 0, image_size: int = 64, start: int = 0) -> Path:
    """``n`` samples as one parquet file: ``key``, ``image`` (struct of ``bytes``/``path``, as HF
    ``datasets`` stores images), ``org_caption``, ``re_caption``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(_samples(n, seed, image_size, start))
    table = pa.table({
        "key": [s.key for s in rows],
        "image": [{"bytes": encode_image(s.image), "path": None} for s in rows],
        WEB_KEY: [s.web for s in rows],
        SYNTHETIC_KEY: [s.synthetic for s in rows],
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_retrieval_split(out_dir: str | Path, n: int, seed: int = 1, image_size: int = 64,
                          captions_per_image: int = 5, world: WorldConfig = DEFAULT_WORLD) -> Path:
    """A Karpathy-style eval split: ``images/*.jpg`` + ``dataset.json`` (``{"images": [{"filepath":
    "images", "filename", "split": "test", "sentences": [{"raw": ...}] x5}]}``, COCO's layout:
    images at ``<json folder>/filepath/filename``); returns the JSON path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 3])
        s = generate_sample(i, seed, image_size, world=world)
        name = f"{s.key}.jpg"
        with atomic_path(out_dir / "images" / name) as tmp:
            tmp.write_bytes(encode_image(s.image))
        entries.append({"filepath": "images", "filename": name, "split": "test", "imgid": i,
                        "sentences": [{"raw": c} for c in reference_captions(s.scene, rng, captions_per_image)]})
    atomic_write_json(out_dir / "dataset.json", {"images": entries})
    return out_dir / "dataset.json"
