"""Per-sample work done in the data-loader workers: decode, check, augment, sample captions, batch.

:class:`SampleProcessor` turns a :class:`~.sources.RawRecord` into a :class:`Sample` (image tensor +
word pieces per text name + target pieces) or raises :class:`~.errors.BadSample`;
:func:`collate` packs samples into a training batch. All randomness of a sample comes from
``sample_rng(seed, epoch, key)``, so a sample looks the same whichever worker or position it lands on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch

from ..recipes import Captions, Recipe
from ..sampling import NoSentenceError, sample_rng
from .errors import CAPTION_TOO_LONG, MALFORMED_RECORD, MISSING_CAPTION, NO_SENTENCE, NOT_UTF8, BadSample, caption_problem
from .sources import RawRecord, decode_image, read_image_bytes  # noqa: F401  (decode_image: its historical home)

TEXT_STREAM, IMAGE_STREAM = 0, 1


@dataclass
class Sample:
    """A decoded training sample: ``image`` [3,H,W], word pieces per text name, target pieces."""

    key: str
    image: torch.Tensor
    texts: dict[str, list[int]]
    target: list[int] | None


def read_caption(meta: dict, field: str, key: str, max_chars: int | None = None) -> str:
    """``meta[field]`` if it is a usable caption (a non-blank string of at most ``max_chars``),
    else :class:`BadSample` (``missing_caption``, ``empty_caption``, ``caption_too_long``)."""
    value = meta.get(field)
    reason = caption_problem(value)
    if reason:
        raise BadSample(reason, key, f"{field!r} is {type(value).__name__}" if reason == MISSING_CAPTION else field)
    if max_chars and len(value) > max_chars:
        raise BadSample(CAPTION_TOO_LONG, key, f"{field!r} has {len(value)} characters > {max_chars}")
    return value


def parse_meta(record: RawRecord) -> dict:
    """The record's caption metadata as a dict (JSON bytes are parsed; raises :class:`BadSample`)."""
    meta = record.meta
    if meta is None:
        raise BadSample(MISSING_CAPTION, record.key, "no caption metadata")
    if isinstance(meta, (bytes, bytearray)):
        try:
            meta = json.loads(bytes(meta).decode("utf-8"))
        except UnicodeDecodeError:
            raise BadSample(NOT_UTF8, record.key) from None
        except json.JSONDecodeError as e:
            raise BadSample(MALFORMED_RECORD, record.key, str(e)) from None
    if not isinstance(meta, dict):
        raise BadSample(MALFORMED_RECORD, record.key, f"metadata is {type(meta).__name__}, not an object")
    return meta


class SampleProcessor:
    """RawRecord -> :class:`Sample` for one recipe.

    Args:
        recipe: the configured :class:`~pretrain.recipes.Recipe`.
        tokenizer: a :class:`~clips_tower.tokenizer.CLIPSTokenizer`.
        transform: ``(PIL image, numpy Generator) -> [3,H,W]`` (the seeded training augmentation).
        seed: the run seed; with the epoch and the key it seeds the sample's randomness.
        web_key / synthetic_key: caption field names (Recap-DataComp-1B: ``org_caption``/``re_caption``).
        max_caption_chars: longer captions are skipped as ``caption_too_long`` (None: no limit).
    """

    def __init__(self, recipe: Recipe, tokenizer, transform: Callable, seed: int, web_key: str = "org_caption",
                 synthetic_key: str = "re_caption", max_caption_chars: int | None = None) -> None:
        self.recipe, self.tokenizer, self.transform, self.seed = recipe, tokenizer, transform, seed
        self.web_key, self.synthetic_key, self.max_caption_chars = web_key, synthetic_key, max_caption_chars

    def __call__(self, record: RawRecord, epoch: int) -> Sample:
        """Decode and sample one record (raises :class:`BadSample`)."""
        key = record.key
        meta = parse_meta(record)
        needs = self.recipe.needs
        captions = Captions(
            web=read_caption(meta, self.web_key, key, self.max_caption_chars) if "web" in needs else None,
            synthetic=read_caption(meta, self.synthetic_key, key, self.max_caption_chars) if "synthetic" in needs else None,
        )
        try:
            sampled = self.recipe(captions, self.tokenizer, sample_rng(self.seed, epoch, key, TEXT_STREAM))
        except NoSentenceError as e:
            raise BadSample(NO_SENTENCE, key, str(e)) from None
        img = record.decoded if record.decoded is not None else decode_image(read_image_bytes(record), key)
        pixels = self.transform(img, sample_rng(self.seed, epoch, key, IMAGE_STREAM))
        return Sample(key, pixels, sampled.texts, sampled.target)


def collate(samples: list[Sample], tokenizer) -> dict:
    """Samples -> ``{"images": [B,3,H,W], "texts": {name: [B,80]}, "targets": [B,128] | None, "keys": [B]}``."""
    names = list(samples[0].texts)
    return {
        "images": torch.stack([s.image for s in samples]),
        "texts": {n: tokenizer.pack([s.texts[n] for s in samples]) for n in names},
        "targets": tokenizer.pack_targets([s.target for s in samples]) if samples[0].target is not None else None,
        "keys": [s.key for s in samples],
    }
