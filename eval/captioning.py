"""Captioner evaluation: generate full synthetic captions from image + web caption, score them.

Input: JSONL, one ``{"image": path, "web_caption": str, "synthetic_caption": str}`` per line
(paths relative to ``image_root``, default the file's folder). ``synthetic_caption`` is the
reference; leave it out on every line to only generate.

Generation is the captioner's single forward pass (argmax at each of the 128 queries, cut at the
first ``[eos]``). With references, it also reports:

- ``token_acc``: percent of supervised target positions where the argmax equals the reference
  token, and ``perplexity``: exp of the mean cross-entropy there; both from
  ``model(images, {"web": ids}, target_ids)``'s ``caption_logits`` / ``caption_labels``.
- ``bleu4``: corpus BLEU-4 (sacrebleu, 13a tokenisation) of the generated captions against the
  references as the tokenizer sees them (lower-cased, word pieces joined, cut to 128 target
  tokens), so a perfect captioner scores 100.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pretrain.data.errors import caption_problem

from .data import BadEntriesError, BadEntry, FileImage, check_image, read_jsonl_entries
from .embedding import inference, iter_image_batches


@dataclasses.dataclass
class CaptionDataset:
    """``images[i]`` with web caption ``web[i]`` and reference synthetic caption ``references[i]``
    (``references`` is None when the file has none)."""

    images: list[FileImage]
    web: list[str]
    references: list[str] | None
    source: str
    skipped: list[BadEntry] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_caption_dataset(path: str | Path, image_root: str | Path | None = None, *, skip_bad: bool = False,
                         check_images: bool = True) -> CaptionDataset:
    """Read a captioning JSONL (see module doc). Bad lines (invalid JSON, missing image, empty web
    caption, a missing reference while other lines have one) raise :class:`BadEntriesError`
    listing every one, unless ``skip_bad`` drops them into ``skipped``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption dataset not found: {path}")
    root = Path(image_root) if image_root else path.parent
    rows = read_jsonl_entries(path)
    has_refs = any(isinstance(obj, dict) and "synthetic_caption" in obj for _, obj in rows)
    problems, images, web, refs = [], [], [], []
    for entry, obj in rows:
        if isinstance(obj, BadEntry):
            problems.append(obj)
            continue
        fields = ("web_caption", "synthetic_caption") if has_refs else ("web_caption",)
        bad = [(k, reason) for k in fields if (reason := caption_problem(obj.get(k)))]
        if bad:
            k, reason = bad[0]
            problems.append(BadEntry(entry, reason, f"{k} {obj.get(k)!r:.80}"))
            continue
        image = FileImage(root / obj["image"])
        bad_image = check_image(image) if check_images else None
        if bad_image:
            problems.append(bad_image)
            continue
        images.append(image)
        web.append(obj["web_caption"].strip())
        refs.append(obj["synthetic_caption"].strip() if has_refs else None)
    if problems and not skip_bad:
        raise BadEntriesError(str(path), problems)
    if not images:
        raise ValueError(f"{path}: no usable entries ({len(problems)} bad)")
    return CaptionDataset(images, web, refs if has_refs else None, str(path), problems)


@dataclasses.dataclass
class CaptionResult:
    """``metrics`` (see :func:`run_captioning`), one output ``rows`` dict per captioned image
    (``image``, ``web_caption``, ``generated``, and ``reference`` when there are references), and
    the bad entries skipped."""

    metrics: dict[str, float]
    rows: list[dict]
    skipped: list[BadEntry]


def run_captioning(
    model: torch.nn.Module,
    tokenizer,
    dataset: CaptionDataset,
    *,
    transform: Callable | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    num_workers: int = 0,
) -> CaptionResult:
    """Caption every image of ``dataset`` conditioned on its web caption.

    ``tokenizer`` is a :class:`clips_tower.CLIPSTokenizer`. Metrics: ``num_images``, ``skipped``
    and, with references, ``token_acc`` (percent), ``perplexity``, ``bleu4``, ``num_tokens``.
    Undecodable images raise :class:`BadEntriesError` unless ``skip_bad``.
    """
    if getattr(model, "captioner", None) is None:
        raise ValueError("this model has no captioner (e.g. a released encoder-only checkpoint); nothing to evaluate")
    if transform is None:
        import clips_tower

        transform = clips_tower.image_transform(model.config, train=False)
    failed: list[BadEntry] = []
    rows, correct, nll, tokens = [], 0, 0.0, 0
    batches = iter_image_batches(dataset.images, transform, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress, failed=failed)
    with inference(model, device, autocast_dtype):
        for idx, pixels in batches:
            pixels = pixels.to(device)
            web_ids = tokenizer([dataset.web[i] for i in idx]).to(device)
            generated = tokenizer.batch_decode(model.generate_caption_ids(pixels, web_ids).cpu())
            for i, text in zip(idx, generated):
                rows.append({"image": dataset.images[i].name, "web_caption": dataset.web[i], "generated": text})
            if dataset.references is None:
                continue
            targets = tokenizer.encode_targets([dataset.references[i] for i in idx])
            out = model(pixels, {"web": web_ids}, target_ids=targets.to(device))
            logits, labels = out["caption_logits"].float(), out["caption_labels"]
            correct += int((logits.argmax(dim=-1) == labels).sum())
            nll += float(F.cross_entropy(logits, labels, reduction="sum"))
            tokens += labels.numel()
            # The reference as the captioner can write it: lower-cased word pieces, <= 128 targets.
            for row, ref, target in zip(rows[-len(idx):], (dataset.references[i] for i in idx), targets):
                row["reference"] = ref
                row["reference_tokenized"] = tokenizer.decode(target)
    if failed and not skip_bad:
        raise BadEntriesError(dataset.source, failed)
    skipped = dataset.skipped + failed
    metrics: dict[str, float] = {"num_images": len(rows), "skipped": len(skipped)}
    if dataset.references is not None:
        import sacrebleu

        bleu = sacrebleu.corpus_bleu([r["generated"] for r in rows], [[r["reference_tokenized"] for r in rows]])
        metrics |= {"token_acc": 100.0 * correct / tokens, "perplexity": math.exp(nll / tokens),
                    "bleu4": bleu.score, "num_tokens": tokens}
    return CaptionResult(metrics, rows, skipped)


def write_captions_jsonl(rows: Sequence[dict], path: str | Path) -> None:
    """Write caption rows as JSONL atomically."""
    from clips_tower.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
