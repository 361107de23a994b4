"""LLaVA-format training data from generated scenes, as LLaVA-1.5's two stages read it.

- ``captions.json`` (stage 1, LCS-558K layout): one ``<image>`` turn answered by a short
  human-style description of the scene (:func:`~.captions.reference_captions`).
- ``instruct.json`` (stage 2, mix665k layout): one multi-turn conversation per image with the
  scene's questions (:mod:`.questions`); the first turn carries ``<image>``, every question ends
  with LLaVA-1.5's short-answer prompt.

Images are written once as ``images/<key>.png`` (lossless: colours are what the questions ask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clips_tower.io import atomic_path, atomic_write_json

from .captions import reference_captions
from .questions import scene_questions
from .writers import SyntheticSample, encode_image, generate_sample

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Give a brief description of the image."


def conversation_record(sample: SyntheticSample, image: str, rng: np.random.Generator) -> dict:
    """A mix665k-style record: ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``
    with every question of :func:`~.questions.scene_questions` as one round."""
    turns = []
    for k, q in enumerate(scene_questions(sample.scene, rng)):
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q.question + SHORT_ANSWER_PROMPT},
                  {"from": "gpt", "value": q.answer}]
    return {"id": sample.key, "image": image, "conversations": turns}


def caption_record(sample: SyntheticSample, image: str, rng: np.random.Generator) -> dict:
    """An LCS-558K-style record: the ``<image>`` turn answered by one short description."""
    return {"id": sample.key, "image": image, "conversations": [
        {"from": "human", "value": f"{CAPTION_PROMPT}\n<image>"},
        {"from": "gpt", "value": reference_captions(sample.scene, rng, 1)[0]}]}


def write_instruction_data(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64,
                           start: int = 0) -> dict[str, Path]:
    """Samples ``start .. start+n-1`` of ``seed`` as ``images/*.png`` + ``captions.json`` (stage 1)
    + ``instruct.json`` (stage 2) in ``out_dir``; returns ``{"images", "captions", "instruct"}``
    paths. Image paths in the JSON are relative to ``images`` (LLaVA's ``--image_folder``)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    captions, instruct = [], []
    for i in range(start, start + n):
        sample = generate_sample(i, seed, image_size)
        name = f"{sample.key}.png"
        with atomic_path(out_dir / "images" / name) as tmp:
            tmp.write_bytes(encode_image(sample.image, "png"))
        rng = np.random.default_rng([seed, i, 4])
        captions.append(caption_record(sample, name, rng))
        instruct.append(conversation_record(sample, name, rng))
    atomic_write_json(out_dir / "captions.json", captions)
    atomic_write_json(out_dir / "instruct.json", instruct)
    return {"images": out_dir / "images", "captions": out_dir / "captions.json", "instruct": out_dir / "instruct.json"}
