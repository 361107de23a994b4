"""Generated zero-shot eval sets: coloured shapes on grey in Karpathy layout (COCO or Flickr),
and a copy with every kind of bad entry."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square")


def scene(colour: str, shape: str, size: int = 40) -> Image.Image:
    """A coloured shape on a grey background."""
    img = Image.new("RGB", (size, size), (200, 200, 200))
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLOURS[colour])
    return img


def scenes(n: int) -> list[tuple[str, str]]:
    """(colour, shape) of ``n`` scenes, cycling through the colours, then the shapes."""
    return [(list(COLOURS)[i % 4], SHAPES[(i // 4) % 2]) for i in range(n)]


def write_karpathy(root: Path, n_test: int = 6, per_image: int = 5, dataset: str = "coco", n_train: int = 2) -> Path:
    """A Karpathy-format split file with generated images (COCO layout: image_root/val2014/...;
    Flickr layout: image_root/<file>). Returns the JSON path."""
    entries = []
    for i, (c, s) in enumerate(scenes(n_test + n_train)):
        filename = f"img_{i:04d}.jpg"
        folder = root / "val2014" if dataset == "coco" else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        scene(c, s).save(folder / filename)
        entry = {"filename": filename, "split": "test" if i < n_test else "train", "imgid": i,
                 "sentences": [{"raw": f"a {c} {s} on grey, view {k}.", "tokens": []} for k in range(per_image)]}
        if dataset == "coco":
            entry["filepath"] = "val2014"
        entries.append(entry)
    path = root / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"dataset": dataset, "images": entries}))
    return path


def corrupt_set(tmp_path: Path) -> Path:
    """A 6-image Karpathy set with one missing image, one undecodable image, one empty caption and
    one image without captions; returns its JSON path."""
    path = write_karpathy(tmp_path, n_test=6, per_image=3)
    data = json.loads(path.read_text())
    (tmp_path / "val2014" / "img_0001.jpg").unlink()                       # missing image
    (tmp_path / "val2014" / "img_0002.jpg").write_bytes(b"not an image")   # undecodable header
    data["images"][3]["sentences"][1]["raw"] = "   "                        # one empty caption
    data["images"][4]["sentences"] = []                                    # no captions at all
    path.write_text(json.dumps(data))
    return path
