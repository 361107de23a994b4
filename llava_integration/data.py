"""LLaVA training data: the JSON schema, up-front checks, image loading, tokenisation with label
masking, the collator and the modality-length grouping sampler.

Schema (LLaVA's ``blip_laion_cc_sbu_558k.json`` / ``llava_v1_5_mix665k.json``): a JSON list (or
JSONL) of ``{"id", "image" (path relative to --image_folder; a list for several images; absent for
text-only), "conversations": [{"from": "human"|"gpt", "value": str}, ...]}``.

Every sample is checked before any compute (:func:`check_samples`): schema and role alternation,
``<image>`` placeholders vs images, image files (present and readable), label masking (every
token is either context or answer) and length against ``model_max_length``. Problems are
reported per reason with sample ids; the policy ``error`` stops, ``skip`` drops those samples.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pretrain.data.errors import (IMAGE_PLACEHOLDER_MISMATCH, LABEL_MISMATCH, MALFORMED_CONVERSATION,  # noqa: F401
                                  MALFORMED_RECORD, MISSING_IMAGE, TOO_LONG, UNREADABLE_IMAGE, image_header_problem)

from .conversation import (ConversationError, Rendered, Template, count_image_placeholders,
                           validate_turns)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
POLICIES = ("error", "skip")
# Problem reasons (the project's one bad-sample vocabulary), checked in this order: a sample is
# reported under its first problem: MALFORMED_RECORD, MALFORMED_CONVERSATION,
# IMAGE_PLACEHOLDER_MISMATCH, MISSING_IMAGE / UNREADABLE_IMAGE, LABEL_MISMATCH, TOO_LONG.


class DataCheckError(ValueError):
    """The data check found problems and the policy is ``error``; the message is the report."""


class LabelMaskError(ValueError):
    """The rendered conversation and its tokenisation disagree on where an answer starts or ends."""


# ----------------------------------------------------------------------------- records

def load_records(path: str | Path) -> list[dict]:
    """Read a LLaVA data file: a JSON list, or JSON Lines (``.jsonl``). Returns the raw records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data_path {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, found {type(records).__name__}")
    return records


def sample_id(record: Any, index: int) -> str:
    """The record's ``id`` (as a string), or ``#<index>`` when it has none."""
    if isinstance(record, dict) and "id" in record:
        return str(record["id"])
    return f"#{index}"


def image_paths(record: dict) -> list[str]:
    """The record's image paths (``[]`` for text-only samples)."""
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


# ----------------------------------------------------------------------------- images

def expand_to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square canvas of the longer side, image centred (LLaVA's ``expand2square``)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), background)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _pad(img: Image.Image, image_processor: Any) -> Image.Image:
    # Pad with the processor's mean colour so the padding normalises to ~0, as LLaVA does.
    return expand_to_square(img, tuple(int(round(x * 255)) for x in image_processor.image_mean))


ASPECT_MODES: dict[str, Callable[[Image.Image, Any], Image.Image]] = {
    "pad": _pad,
    "square": lambda img, image_processor: img,  # the processor resizes straight to its square size
}


def load_image(path: str | Path, image_processor: Any, aspect: str = "pad") -> torch.Tensor:
    """Read an image file and preprocess it: ``FloatTensor [3, H, W]`` (H, W: the processor's crop)."""
    if aspect not in ASPECT_MODES:
        raise ValueError(f"unknown --image_aspect_ratio {aspect!r}; choose from {sorted(ASPECT_MODES)}")
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e}") from None
    img = ASPECT_MODES[aspect](img, image_processor)
    return image_processor(images=[img], return_tensors="pt")["pixel_values"][0]


def _image_problem(path: Path) -> str | None:
    """``None`` if ``path`` is a readable image, else the problem reason."""
    problem = image_header_problem(path)
    return problem[0] if problem else None


def image_seq_length(processor: Any) -> int:
    """Image tokens per ``<image>`` for an HF ``LlavaProcessor`` (same formula as the processor:
    patches of the processed image, plus extra tokens, minus CLS for the ``default`` strategy)."""
    probe = processor.image_processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
    h, w = probe.shape[-2:]
    n = (h // processor.patch_size) * (w // processor.patch_size) + processor.num_additional_image_tokens
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


# ----------------------------------------------------------------------------- tokenisation

@dataclass(frozen=True)
class TokenSpec:
    """What tokenisation needs: the tokenizer, the image token id, and image tokens per image."""

    tokenizer: Any
    image_token_id: int
    image_seq_len: int

    @classmethod
    def from_processor(cls, processor: Any) -> "TokenSpec":
        """From an HF ``LlavaProcessor``."""
        if not getattr(processor.tokenizer, "is_fast", False):
            raise ValueError("LLaVA training needs a fast tokenizer (character offsets locate the answers)")
        return cls(processor.tokenizer, int(processor.image_token_id), image_seq_length(processor))


@dataclass
class Encoded:
    """``input_ids`` and ``labels`` (``-100`` on context and image tokens) of one sample, image
    placeholders expanded to ``image_seq_len`` image tokens each."""

    input_ids: list[int]
    labels: list[int]


def _mask_labels(ids: Sequence[int], offsets: Sequence[tuple[int, int]], rendered: Rendered,
                 sid: str, tokenizer: Any) -> list[int]:
    """Labels from character offsets: a token trains iff its characters lie inside a target span.

    Some byte-level tokenizers trim leading spaces from offsets (``trim_offsets``); a token's span
    is therefore extended back over whitespace to the previous token's end. A token with
    characters on both sides of a boundary, an answer character no token covers, or an answer
    with no token at all is a :class:`LabelMaskError` naming the sample.
    """
    text = rendered.text
    is_target = np.zeros(len(text) + 1, dtype=bool)
    for s, e in rendered.targets:
        is_target[s:e] = True
    covered = np.zeros(len(text), dtype=bool)
    labels, prev_end = [], 0
    for tok, (s, e) in zip(ids, offsets):
        if prev_end < s and text[prev_end:s].isspace():
            s = prev_end
        inside = int(is_target[s:e].sum())
        if e <= s or inside == 0:
            labels.append(IGNORE_INDEX)
        elif inside == e - s:
            labels.append(int(tok))
            covered[s:e] = True
        else:
            raise LabelMaskError(f"sample {sid}: token {tokenizer.convert_ids_to_tokens(int(tok))!r} spans the "
                                 f"answer boundary at characters {s}..{e} ({text[s:e]!r}); this template does not "
                                 f"tokenise cleanly with this tokenizer")
        prev_end = max(prev_end, e)
    for s, e in rendered.targets:
        missed = [c for c, cov in zip(text[s:e], covered[s:e]) if not cov and not c.isspace()]
        if missed or not covered[s:e].any():
            raise LabelMaskError(f"sample {sid}: answer {text[s:e]!r} is not covered by answer tokens "
                                 f"(tokenisation does not match the rendered text)")
    return labels


def _expand_images(ids: list[int], labels: list[int], spec: TokenSpec, n_images: int, sid: str) -> Encoded:
    found = ids.count(spec.image_token_id)
    if found != n_images:
        raise LabelMaskError(f"sample {sid}: {n_images} image(s) but the tokenised text holds {found} image "
                             f"token(s) (is <image> a special token of this tokenizer?)")
    out_ids, out_labels = [], []
    for tok, lab in zip(ids, labels):
        if tok == spec.image_token_id:
            out_ids += [tok] * spec.image_seq_len
            out_labels += [IGNORE_INDEX] * spec.image_seq_len
        else:
            out_ids.append(tok)
            out_labels.append(lab)
    return Encoded(out_ids, out_labels)


def encode_batch(rendered: Sequence[Rendered], n_images: Sequence[int], sample_ids: Sequence[str],
                 spec: TokenSpec) -> list[Encoded | LabelMaskError]:
    """Tokenise rendered conversations in one tokenizer call and mask their labels.

    Returns one :class:`Encoded` per sample, or the :class:`LabelMaskError` that sample raised
    (so a check pass can report every bad sample).
    """
    if not rendered:
        return []
    add_special = {r.add_special_tokens for r in rendered}
    if len(add_special) != 1:
        raise ValueError("one batch must come from one template")
    enc = spec.tokenizer([r.text for r in rendered], add_special_tokens=add_special.pop(),
                         return_offsets_mapping=True)
    out: list[Encoded | LabelMaskError] = []
    for r, n, sid, ids, offsets in zip(rendered, n_images, sample_ids, enc["input_ids"], enc["offset_mapping"]):
        try:
            labels = _mask_labels(ids, offsets, r, sid, spec.tokenizer)
            out.append(_expand_images(list(ids), labels, spec, n, sid))
        except LabelMaskError as e:
            out.append(e)
    return out


def encode_sample(record: dict, template: Template, spec: TokenSpec, sid: str) -> Encoded:
    """Render and tokenise one record; raises :class:`ConversationError` / :class:`LabelMaskError`."""
    rendered = template.render(record["conversations"], spec.tokenizer)
    result = encode_batch([rendered], [len(image_paths(record))], [sid], spec)[0]
    if isinstance(result, Exception):
        raise result
    return result


# ----------------------------------------------------------------------------- checks

@dataclass
class CheckReport:
    """Result of :func:`check_samples`: totals and, per problem reason, ``(sample id, detail)``."""

    total: int = 0
    kept: int = 0
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, sid: str, detail: str) -> None:
        """Record one bad sample."""
        self.problems[reason].append((sid, detail))

    @property
    def counts(self) -> dict[str, int]:
        """Number of bad samples per reason."""
        return {k: len(v) for k, v in self.problems.items()}

    def summary(self, show: int = 5) -> str:
        """Human-readable report: counts per reason with the first ``show`` sample ids and details."""
        lines = [f"data check: {self.total} samples, {sum(self.counts.values())} with problems"]
        for reason, items in self.problems.items():
            lines.append(f"  {reason}: {len(items)} sample(s)")
            lines += [f"    id={sid}: {detail}" for sid, detail in items[:show]]
            if len(items) > show:
                lines.append(f"    ... and {len(items) - show} more (see data_check.json)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable form (written as ``data_check.json`` beside the run)."""
        return {"total": self.total, "kept": self.kept, "counts": self.counts,
                "problems": {k: [{"id": s, "detail": d} for s, d in v] for k, v in self.problems.items()}}


@dataclass
class CheckedData:
    """Samples that passed the check: records, their positions in the data file, ids and signed
    lengths (``+`` with images, ``-`` text-only; the absolute value is the token count with image
    tokens expanded)."""

    records: list[dict]
    indices: list[int]
    ids: list[str]
    lengths: list[int]
    report: CheckReport


def _schema_problem(record: Any) -> tuple[str, str] | None:
    if not isinstance(record, dict) or "conversations" not in record:
        return MALFORMED_RECORD, "a sample must be an object with 'conversations'"
    image = record.get("image")
    if image is not None and not (isinstance(image, str) or
                                  (isinstance(image, list) and all(isinstance(p, str) for p in image))):
        return MALFORMED_RECORD, "'image' must be a path or a list of paths"
    try:
        validate_turns(record["conversations"])
    except ConversationError as e:
        return MALFORMED_CONVERSATION, str(e)
    n_img, n_ph = len(image_paths(record)), count_image_placeholders(record["conversations"])
    if n_img != n_ph:
        return IMAGE_PLACEHOLDER_MISMATCH, f"{n_img} image(s) but {n_ph} <image> placeholder(s)"
    return None


def check_samples(records: Sequence[Any], image_folder: str | Path | None, template: Template, spec: TokenSpec,
                  model_max_length: int, policy: str = "error", batch_size: int = 512,
                  workers: int = 8) -> CheckedData:
    """Check every sample before training (see the module docstring for the checks).

    Returns the samples that passed with their lengths; with ``policy="error"`` any problem raises
    :class:`DataCheckError` carrying the report instead.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown bad-sample policy {policy!r}; choose from {POLICIES}")
    report = CheckReport(total=len(records))
    ok: list[int] = []
    ids = [sample_id(r, i) for i, r in enumerate(records)]
    for i, r in enumerate(records):
        problem = _schema_problem(r)
        if problem:
            report.add(problem[0], ids[i], problem[1])
        else:
            ok.append(i)

    with_images = [i for i in ok if image_paths(records[i])]
    if with_images and image_folder is None:
        raise ValueError(f"{len(with_images)} samples have images but --image_folder is not set")
    paths = [(i, Path(image_folder, p)) for i in with_images for p in image_paths(records[i])]
    bad_image: dict[int, tuple[str, str]] = {}
    with ThreadPoolExecutor(workers) as pool:  # header reads are I/O bound
        for (i, p), reason in zip(paths, tqdm(pool.map(_image_problem, [p for _, p in paths]), total=len(paths),
                                              desc="checking images", unit="img", disable=not paths)):
            if reason and i not in bad_image:
                bad_image[i] = (reason, str(p))
    for i, (reason, p) in sorted(bad_image.items()):
        report.add(reason, ids[i], p)
    ok = [i for i in ok if i not in bad_image]

    lengths: dict[int, int] = {}
    for start in tqdm(range(0, len(ok), batch_size), desc="checking tokenisation", unit="batch", disable=len(ok) < 10 * batch_size):
        chunk, rendered = [], []
        for i in ok[start:start + batch_size]:
            try:
                rendered.append(template.render(records[i]["conversations"], spec.tokenizer))
                chunk.append(i)
            except ConversationError as e:
                report.add(MALFORMED_CONVERSATION, ids[i], str(e))
        encoded = encode_batch(rendered, [len(image_paths(records[i])) for i in chunk], [ids[i] for i in chunk], spec)
        for i, enc in zip(chunk, encoded):
            if isinstance(enc, LabelMaskError):
                report.add(LABEL_MISMATCH, ids[i], str(enc))
            elif len(enc.input_ids) > model_max_length:
                report.add(TOO_LONG, ids[i], f"{len(enc.input_ids)} tokens > model_max_length {model_max_length}")
            else:
                lengths[i] = len(enc.input_ids) if image_paths(records[i]) else -len(enc.input_ids)

    kept = sorted(lengths)
    report.kept = len(kept)
    if report.problems:
        if policy == "error":
            raise DataCheckError(report.summary() + "\n(pass --on_bad_sample skip to train without these samples)")
        log.warning("%s\nskipping them (--on_bad_sample skip)", report.summary())
    if not kept:
        raise DataCheckError(f"no usable samples in {report.total}\n{report.summary()}")
    return CheckedData([records[i] for i in kept], kept, [ids[i] for i in kept], [lengths[i] for i in kept], report)


# ----------------------------------------------------------------------------- dataset

class LlavaDataset(torch.utils.data.Dataset):
    """Checked LLaVA samples, tokenised lazily.

    ``__getitem__`` returns ``{"input_ids": LongTensor [L], "labels": LongTensor [L]}`` plus, for
    samples with images, ``"pixel_values": FloatTensor [n_img, 3, H, W]`` (or, with a feature
    cache, ``"image_features": [n_img, N, D]`` read from it instead of running the tower).
    """

    def __init__(self, data: CheckedData, template: Template, spec: TokenSpec, image_processor: Any,
                 image_folder: str | Path | None, image_aspect_ratio: str = "pad", feature_cache: Any = None) -> None:
        if image_aspect_ratio not in ASPECT_MODES:
            raise ValueError(f"unknown --image_aspect_ratio {image_aspect_ratio!r}; choose from {sorted(ASPECT_MODES)}")
        self.data, self.template, self.spec = data, template, spec
        self.image_processor, self.image_folder = image_processor, image_folder
        self.image_aspect_ratio, self.feature_cache = image_aspect_ratio, feature_cache

    def __len__(self) -> int:
        return len(self.data.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Signed token lengths (``+`` image samples, ``-`` text-only), for the grouping sampler."""
        return self.data.lengths

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        record, sid = self.data.records[i], self.data.ids[i]
        enc = encode_sample(record, self.template, self.spec, sid)
        item = {"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels)}
        paths = image_paths(record)
        if paths and self.feature_cache is not None:
            item["image_features"] = torch.stack([self.feature_cache[p] for p in paths])
        elif paths:
            item["pixel_values"] = torch.stack([load_image(Path(self.image_folder, p), self.image_processor,
                                                           self.image_aspect_ratio) for p in paths])
        return item


@dataclass
class LlavaCollator:
    """Right-pads a list of :class:`LlavaDataset` items into a batch.

    Returns ``input_ids``/``labels``/``attention_mask`` ``[B, L]`` (labels padded with -100) and,
    if any sample has images, ``pixel_values [sum n_img, 3, H, W]`` or ``image_features
    [sum n_img, N, D]`` in sample order (HF LLaVA fills image tokens in reading order).
    """

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n], labels[b, :n], mask[b, :n] = it["input_ids"], it["labels"], 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        for key in ("pixel_values", "image_features"):
            parts = [it[key] for it in items if key in it]
            if parts:
                batch[key] = torch.cat(parts)
        return batch


# ----------------------------------------------------------------------------- sampler

class ModalityLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """LLaVA's ``group_by_modality_length``: every global batch holds samples of one modality
    (image or text-only) and similar length, except one mixed batch of leftovers at the end.

    ``lengths``: signed lengths (``+`` image samples, ``-`` text-only). ``batch_size``: samples per
    device step; ``world_size`` devices take consecutive ``batch_size`` slices of each global batch.
    The order is a deterministic function of ``seed`` and the epoch (:meth:`set_epoch`), so every
    rank draws the same one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0) -> None:
        if any(n == 0 for n in lengths):
            raise ValueError("sample lengths must be non-zero (the sign marks the modality)")
        self.lengths, self.batch_size, self.world_size = list(lengths), batch_size, world_size
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        size = self.batch_size * self.world_size
        full, leftovers = [], []
        for modality in (1, -1):
            idx = [i for i, n in enumerate(self.lengths) if (n > 0) == (modality > 0)]
            rng.shuffle(idx)
            groups = [sorted(idx[k:k + size], key=lambda i: -abs(self.lengths[i])) for k in range(0, len(idx), size)]
            if groups and len(groups[-1]) < size:
                leftovers += groups.pop()
            full += groups
        rng.shuffle(full)
        if leftovers:
            full.append(sorted(leftovers, key=lambda i: -abs(self.lengths[i])))
        return iter([i for g in full for i in g])


__all__ = [
    "ASPECT_MODES", "CheckReport", "CheckedData", "DataCheckError", "Encoded", "IGNORE_INDEX", "LabelMaskError",
    "LlavaCollator", "LlavaDataset", "ModalityLengthGroupedSampler", "TokenSpec", "check_samples", "encode_batch",
    "encode_sample", "expand_to_square", "image_paths", "image_seq_length", "load_image", "load_records", "sample_id",
]
