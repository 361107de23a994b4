"""Zero-shot image<->text retrieval: exact ranks in bounded memory, recall@K, and the eval driver.

Tie rule (pessimistic, deterministic): a candidate whose score EQUALS the correct item's score
is ranked ahead of it. So the rank of the correct item is the number of wrong candidates scoring
``>=`` it, and a hit at K means fewer than K wrong candidates score ``>=`` the correct one. A
degenerate model (e.g. all embeddings equal) therefore scores ~0, never a lucky 100.

- text->image: each caption has exactly one correct image (its own).
- image->text: an image has several correct captions; the hit counts if ANY of them is in the
  top K, i.e. the rank of its best-scoring correct caption is used.

Scores are plain dot products of the given embeddings (pass unit-norm ones for cosine). They are
computed in float32, one block of query rows at a time (``chunk_size`` rows; by default sized so
a block holds about :data:`CHUNK_ELEMENTS` scores), so memory stays bounded for any set size: a
5k x 25k COCO run never holds the full score matrix. Ranks are counts, not top-K lists, so they
are exact for every K and independent of the block size.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import torch

from .data import BadEntriesError, BadEntry, RetrievalDataset
from .embedding import embed_images, embed_texts

# Scores per block of query rows. A block costs ~9 bytes per score (float32 score, bool
# comparison, int32 count), so 4M scores keep the ranking's working memory under ~100 MiB
# (85 MiB peak measured for 5k images x 25k captions).
CHUNK_ELEMENTS = 1 << 22
KS = (1, 5, 10)


def _rows_per_chunk(gallery_size: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, CHUNK_ELEMENTS // max(1, gallery_size))


def _check_embeddings(**embs: torch.Tensor) -> None:
    for name, e in embs.items():
        if e.ndim != 2:
            raise ValueError(f"{name} must be [rows, dim], got shape {list(e.shape)}")
        if not torch.isfinite(e).all():
            # NaN compares false with everything, which would silently rank every item first.
            raise ValueError(f"{name} holds NaN/inf values")


def target_ranks(query_emb: torch.Tensor, gallery_emb: torch.Tensor, target: torch.Tensor,
                 chunk_size: int | None = None) -> torch.Tensor:
    """Rank of each query's single correct gallery item (0 = first), pessimistic ties.

    query_emb [Q,E], gallery_emb [G,E], target LongTensor [Q] (index into the gallery).
    Returns LongTensor [Q]: the number of other gallery items scoring >= the correct one.
    """
    _check_embeddings(query_emb=query_emb, gallery_emb=gallery_emb)
    target = torch.as_tensor(target, dtype=torch.long)
    if target.shape != (query_emb.shape[0],):
        raise ValueError(f"target must be [{query_emb.shape[0]}], got {list(target.shape)}")
    if len(target) and (target.min() < 0 or target.max() >= gallery_emb.shape[0]):
        raise ValueError(f"target indices must lie in [0, {gallery_emb.shape[0]})")
    gallery = gallery_emb.float().T.contiguous()
    step = _rows_per_chunk(gallery_emb.shape[0], chunk_size)
    ranks = torch.empty(query_emb.shape[0], dtype=torch.long)
    for start in range(0, query_emb.shape[0], step):
        scores = query_emb[start:start + step].float() @ gallery  # [c,G]
        rows = torch.arange(scores.shape[0])
        cols = target[start:start + step]
        correct = scores[rows, cols].clone()
        scores[rows, cols] = float("-inf")  # exclude the correct item itself from the count
        ranks[start:start + step] = (scores >= correct[:, None]).sum(dim=1, dtype=torch.int32)
        del scores  # free this block before the next one is allocated
    return ranks


def multi_target_ranks(query_emb: torch.Tensor, gallery_emb: torch.Tensor, gallery_query_index: torch.Tensor,
                       chunk_size: int | None = None) -> torch.Tensor:
    """Rank of each query's BEST correct gallery item when a query owns several, pessimistic ties.

    query_emb [Q,E] (images), gallery_emb [G,E] (captions), gallery_query_index LongTensor [G]
    (the query that owns each gallery item; every query must own at least one).
    Returns LongTensor [Q]: the number of wrong gallery items scoring >= the query's best correct one.
    """
    _check_embeddings(query_emb=query_emb, gallery_emb=gallery_emb)
    owner = torch.as_tensor(gallery_query_index, dtype=torch.long)
    q = query_emb.shape[0]
    if owner.shape != (gallery_emb.shape[0],):
        raise ValueError(f"gallery_query_index must be [{gallery_emb.shape[0]}], got {list(owner.shape)}")
    if len(owner) and (owner.min() < 0 or owner.max() >= q):
        raise ValueError(f"gallery_query_index must lie in [0, {q})")
    if torch.bincount(owner, minlength=q).min() == 0:
        raise ValueError("every query needs at least one correct gallery item")
    gallery = gallery_emb.float().T.contiguous()
    step = _rows_per_chunk(gallery_emb.shape[0], chunk_size)
    ranks = torch.empty(q, dtype=torch.long)
    for start in range(0, q, step):
        scores = query_emb[start:start + step].float() @ gallery  # [c,G]
        cols = torch.nonzero((owner >= start) & (owner < start + step)).squeeze(1)  # correct items of this block
        rows = owner[cols] - start
        best = torch.full((scores.shape[0],), float("-inf")).scatter_reduce(0, rows, scores[rows, cols], "amax")
        scores[rows, cols] = float("-inf")  # the query's correct items never count against it
        ranks[start:start + step] = (scores >= best[:, None]).sum(dim=1, dtype=torch.int32)
        del scores  # free this block before the next one is allocated
    return ranks


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """``{k: percentage of ranks < k}`` for ranks LongTensor [Q]."""
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image_index: torch.Tensor,
                    chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text ranks LongTensor [N], text->image ranks LongTensor [M]); see the module tie rule.

    image_emb [N,E], text_emb [M,E], text_image_index LongTensor [M] (caption -> its image).
    """
    i2t = multi_target_ranks(image_emb, text_emb, text_image_index, chunk_size)
    t2i = target_ranks(text_emb, image_emb, text_image_index, chunk_size)
    return i2t, t2i


def metrics_from_ranks(i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """``i2t_R@k``, ``t2i_R@k`` (percent) for each k and ``mean_recall`` (their mean)."""
    out = {f"i2t_R@{k}": v for k, v in recall_at_k(i2t, ks).items()}
    out |= {f"t2i_R@{k}": v for k, v in recall_at_k(t2i, ks).items()}
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image_index: torch.Tensor,
                      ks: Sequence[int] = KS, chunk_size: int | None = None) -> dict[str, float]:
    """Recall@K both ways from embeddings: image_emb [N,E], text_emb [M,E], text_image_index [M].

    Returns ``{"i2t_R@1": ..., "t2i_R@10": ..., "mean_recall": ...}`` in percent (paper style).
    """
    return metrics_from_ranks(*retrieval_ranks(image_emb, text_emb, text_image_index, chunk_size), ks)


def topk_similar(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best gallery items per query, in bounded memory (e.g. captions for an image).

    query_emb [Q,E], gallery_emb [G,E] -> (scores float32 [Q,k'], indices LongTensor [Q,k']) with
    k' = min(k, G), best first; equal scores are ordered by gallery index (a stable sort).
    """
    _check_embeddings(query_emb=query_emb, gallery_emb=gallery_emb)
    k = min(k, gallery_emb.shape[0])
    gallery = gallery_emb.float().T.contiguous()
    step = _rows_per_chunk(gallery_emb.shape[0], chunk_size)
    scores, indices = [], []
    for start in range(0, query_emb.shape[0], step):
        s, i = torch.sort(query_emb[start:start + step].float() @ gallery, dim=1, descending=True, stable=True)
        scores.append(s[:, :k])
        indices.append(i[:, :k])
    return torch.cat(scores), torch.cat(indices)


@dataclasses.dataclass
class RetrievalResult:
    """Metrics plus what produced them: ranks LongTensor [N] / [M] (for recall curves), the bad
    entries skipped (at load and while decoding) and wall times in seconds."""

    metrics: dict[str, float]
    i2t_ranks: torch.Tensor
    t2i_ranks: torch.Tensor
    skipped: list[BadEntry]
    timings: dict[str, float]


def run_retrieval(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    dataset: RetrievalDataset,
    *,
    transform: Callable | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    num_workers: int = 0,
    chunk_size: int | None = None,
) -> RetrievalResult:
    """Embed every image and caption of ``dataset`` and rank both ways (see :func:`evaluate_retrieval`)."""
    if transform is None:
        import clips_tower

        transform = clips_tower.image_transform(model.config, train=False)
    t0 = time.perf_counter()
    images = embed_images(model, dataset.images, transform, batch_size=batch_size, device=device,
                          autocast_dtype=autocast_dtype, num_workers=num_workers, progress=progress)
    if images.failed and not skip_bad:
        raise BadEntriesError(dataset.source, images.failed)
    keep = torch.nonzero(images.ok).squeeze(1).tolist()
    dataset = dataset.subset(keep, images.failed)
    t1 = time.perf_counter()
    texts, text_image_index = dataset.flat_captions()
    text_emb = embed_texts(model, tokenizer, texts, batch_size=batch_size, device=device,
                           autocast_dtype=autocast_dtype, progress=progress)
    t2 = time.perf_counter()
    i2t, t2i = retrieval_ranks(images.emb[keep], text_emb, text_image_index, chunk_size)
    t3 = time.perf_counter()
    metrics = metrics_from_ranks(i2t, t2i)
    metrics |= {"num_images": len(dataset), "num_captions": len(texts), "skipped": len(dataset.skipped)}
    return RetrievalResult(metrics, i2t, t2i, dataset.skipped,
                           {"embed_images_s": t1 - t0, "embed_texts_s": t2 - t1, "rank_s": t3 - t2})


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    dataset: RetrievalDataset,
    **options: Any,
) -> dict[str, float]:
    """Zero-shot retrieval of a CLIPS model on ``dataset``; ``options`` are :func:`run_retrieval`'s.

    ``transform`` defaults to the model's eval transform; ``autocast_dtype`` (e.g. torch.bfloat16)
    runs the towers under autocast. Images that fail to decode raise :class:`BadEntriesError`
    listing all of them, unless ``skip_bad`` (then they and their captions are left out).
    Returns ``i2t_R@{1,5,10}``, ``t2i_R@{1,5,10}``, ``mean_recall`` (percent), ``num_images``,
    ``num_captions`` and ``skipped`` (bad entries dropped at load and while decoding). The
    model's train/eval mode is restored afterwards.
    """
    return run_retrieval(model, tokenizer, dataset, **options).metrics

