"""Batched image and text embedding for evaluation (eval mode, no grad, optional autocast)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pretrain.data.errors import UNREADABLE_IMAGE, BadSample

from .data import BadEntry, ImageRef


@contextlib.contextmanager
def inference(model: torch.nn.Module, device: str | torch.device, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Eval mode + no grad + optional autocast; restores the model's train/eval mode afterwards
    (the trainer calls evaluation mid-training)."""
    was_training = model.training
    model.eval()
    device_type = torch.device(device).type
    try:
        with torch.inference_mode(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            yield
    finally:
        model.train(was_training)


class _DecodedImages(Dataset):
    """Map-style dataset: index -> (index, transformed tensor [3,H,W] or None, (reason, detail) or None)."""

    def __init__(self, images: Sequence[ImageRef], transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(self.images[i].open()), None
        except BadSample as e:  # the shared image decoder's verdict (unreadable_image, image_too_large, ...)
            return i, None, (e.reason, e.detail)
        except Exception as e:  # a transform failing on odd pixels; the caller lists them all
            return i, None, (UNREADABLE_IMAGE, f"{type(e).__name__}: {e}")


def _collate(items):
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, problem) for i, t, problem in items if t is None]
    pixels = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], pixels, failed


def iter_image_batches(
    images: Sequence[ImageRef],
    transform: Callable,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    failed: list[BadEntry],
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Decode and transform ``images`` in batches (decoding in ``num_workers`` loader processes).

    Yields (indices of the decoded images, pixels [b,3,H,W]). Images that fail to decode are
    appended to ``failed`` (reason ``unreadable_image``, ``image_too_large`` or ``missing_image``)
    instead of stopping the pass, so one run lists every bad image.
    """
    loader = DataLoader(_DecodedImages(images, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    for idx, pixels, bad in tqdm(loader, desc="images", unit="batch", disable=not progress):
        failed.extend(BadEntry(images[i].name, *problem) for i, problem in bad)
        if pixels is not None:
            yield idx, pixels


@dataclasses.dataclass
class ImageEmbeddings:
    """``emb`` float32 [N,E] (rows of failed images are zero), ``ok`` bool [N], ``failed`` bad entries."""

    emb: torch.Tensor
    ok: torch.Tensor
    failed: list[BadEntry]


def embed_images(
    model: torch.nn.Module,
    images: Sequence[ImageRef],
    transform: Callable,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> ImageEmbeddings:
    """Decode, transform and embed ``images`` (unit-norm ``model.encode_image``) in batches;
    undecodable images are listed in ``failed`` (see :func:`iter_image_batches`)."""
    out, ok, failed = None, torch.zeros(len(images), dtype=torch.bool), []
    batches = iter_image_batches(images, transform, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress, failed=failed)
    with inference(model, device, autocast_dtype):
        for idx, pixels in batches:
            emb = model.encode_image(pixels.to(device), normalize=True).float().cpu()
            if out is None:
                out = torch.zeros(len(images), emb.shape[1])
            out[idx] = emb
            ok[idx] = True
    if out is None:
        raise ValueError(f"none of the {len(images)} images could be decoded; first errors: {[str(f) for f in failed[:5]]}")
    return ImageEmbeddings(out, ok, failed)


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Tokenize and embed ``texts`` in batches: float32 [M,E], unit norm."""
    if not texts:
        raise ValueError("no texts to embed")
    out = None
    with inference(model, device, autocast_dtype):
        for start in tqdm(range(0, len(texts), batch_size), desc="texts", unit="batch", disable=not progress):
            ids = tokenizer(list(texts[start:start + batch_size])).to(device)
            emb = model.encode_text(ids, normalize=True)
            if out is None:
                # One buffer for all rows: keeping many small per-batch tensors alive between the
                # large freed activations fragments the heap (measured +150 MiB RSS for 25k texts).
                out = torch.empty(len(texts), emb.shape[1])
            out[start:start + len(ids)] = emb  # copy_ casts to float32 and moves to CPU
    return out
