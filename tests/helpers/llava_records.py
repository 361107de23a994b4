"""Tiny LLaVA-format datasets: solid-colour images, LCS-558K-style caption records and
mix665k-style instruction records."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}


def write_images(folder: Path, n: int) -> list[tuple[str, str]]:
    """``n`` solid-colour PNGs of alternating landscape/portrait shape; returns (file, colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        size = (40, 24) if i % 2 else (24, 40)
        Image.new("RGB", size, COLOURS[colour]).save(folder / f"{i}.png")
        out.append((f"{i}.png", colour))
    return out


def caption_records(images: list[tuple[str, str]]) -> list[dict]:
    """LCS-558K-style records: one image, a generic question, the colour caption."""
    return [{"id": f"cap{i}", "image": name, "conversations": [
        {"from": "human", "value": "Describe the picture.\n<image>"},
        {"from": "gpt", "value": f"a {colour} square."}]} for i, (name, colour) in enumerate(images)]


def instruction_records(images: list[tuple[str, str]], n_text: int) -> list[dict]:
    """mix665k-style records: two-round conversations about each image plus text-only samples."""
    recs = [{"id": f"ins{i}", "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": f"It is {colour}."},
        {"from": "human", "value": "How many shapes are there?"}, {"from": "gpt", "value": "There is one."}]}
        for i, (name, colour) in enumerate(images)]
    recs += [{"id": f"txt{i}", "conversations": [{"from": "human", "value": "Answer yes or no: is the sky dark?"},
                                                 {"from": "gpt", "value": "yes."}]} for i in range(n_text)]
    return recs


def write_json(path: Path, records: list) -> Path:
    """``records`` as a JSON file at ``path``."""
    path.write_text(json.dumps(records))
    return path


def fixed_batch(records: Path, images: Path, spec, processor, template: str = "v1") -> dict:
    """Every record of the JSON file ``records`` (images under ``images``) checked, encoded with
    conversation ``template`` and collated into one batch (``spec``: a ``TokenSpec``)."""
    from llava_integration.conversation import get_template
    from llava_integration.data import LlavaCollator, LlavaDataset, check_samples

    checked = check_samples(json.loads(records.read_text()), images, get_template(template), spec, 2048)
    ds = LlavaDataset(checked, get_template(template), spec, processor.image_processor, images, "pad")
    return LlavaCollator(spec.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
