"""The training stream: shards split by node and worker, shuffled, decoded and batched in workers.

Every data-loader worker of every rank is a *logical worker* ``g`` of ``G = world x max(1,
num_workers)``. Worker ``g`` reads, for epoch ``e``:

- epoch mode: the shard permutation of ``(seed, e)`` taken every G-th from ``g`` (when there are
  fewer shards than workers, every worker reads all shards and keeps every G-th sample instead);
- resampled mode: ``max(1, shards // G)`` shards drawn with replacement from ``(seed, e, g)``;

through a shuffle buffer seeded by ``(seed, e, g)``, then decodes and batches the records itself.
The stream is infinite: after its share of epoch ``e`` a worker continues with ``e + 1``.

Resuming is exact: each batch carries its worker's *cursor* ``(epoch, position)`` (records of that
epoch consumed so far, bad ones included); a restarted worker regenerates the same shuffled
record order and skips ``position`` records without decoding them. The DataLoader takes batches
from its workers round-robin, so the trainer also remembers which worker comes next and the new
loader starts its rotation there (``rotate``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import SampleProcessor, collate
from .errors import BadSample

log = logging.getLogger(__name__)
_LOGGED_BAD_PER_WORKER = 5


@dataclass(frozen=True)
class StreamConfig:
    """How the stream is cut: ``batch_size`` per micro-batch of this rank, ``shuffle_buffer``
    records, ``resampled`` shards, this process's ``rank`` of ``world``, loader ``num_workers``."""

    seed: int
    batch_size: int
    shuffle_buffer: int = 1000
    resampled: bool = False
    rank: int = 0
    world: int = 1
    num_workers: int = 0

    @property
    def workers_per_rank(self) -> int:
        """Logical workers per rank (the main process counts as one when ``num_workers`` is 0)."""
        return max(1, self.num_workers)

    @property
    def total_workers(self) -> int:
        """Logical workers over all ranks (G)."""
        return self.world * self.workers_per_rank


def shard_plan(num_shards: int, epoch: int, worker: int, workers: int, seed: int, resampled: bool):
    """Shards worker ``worker`` of ``workers`` reads in ``epoch``.

    Returns ``(shard indices, stride, offset)``: keep the records whose running index ``j`` over
    those shards has ``j % stride == offset`` (stride 1 unless shards are fewer than workers).
    """
    if resampled:
        rng = np.random.default_rng([seed, epoch, worker, 1])
        return rng.integers(0, num_shards, size=max(1, num_shards // workers)).tolist(), 1, 0
    order = np.random.default_rng([seed, epoch, 0]).permutation(num_shards).tolist()
    if num_shards >= workers:
        return order[worker::workers], 1, 0
    return order, workers, worker


def shuffled(items: Iterator, buffer: int, rng: np.random.Generator) -> Iterator:
    """Buffer shuffle: fill ``buffer`` items, then emit a random one and put the next in its place."""
    if buffer <= 1:
        yield from items
        return
    buf = []
    for item in items:
        if len(buf) < buffer:
            buf.append(item)
            continue
        j = int(rng.integers(buffer))
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)):
        yield buf[j]


class TrainStream(IterableDataset):
    """Infinite iterable of training batches (dicts, see :func:`~.decode.collate`) plus bookkeeping:

    ``worker`` (logical id), ``epoch``, ``position`` (the worker's cursor after this batch) and
    ``bad`` (``{reason: count}`` of samples this worker skipped since its previous batch).

    Args:
        source: a data source (:mod:`.sources`).
        processor: the :class:`~.decode.SampleProcessor`.
        tokenizer: used to pack word pieces in :func:`~.decode.collate`.
        cfg: the :class:`StreamConfig`.
        cursors: ``{logical worker: (epoch, position)}`` to resume from (missing = start).
        rotate: which of this rank's workers produces the first batch.
    """

    def __init__(self, source, processor: SampleProcessor, tokenizer, cfg: StreamConfig,
                 cursors: dict[int, tuple[int, int]] | None = None, rotate: int = 0) -> None:
        super().__init__()
        self.source, self.processor, self.tokenizer, self.cfg = source, processor, tokenizer, cfg
        self.cursors, self.rotate = dict(cursors or {}), rotate

    def logical_worker(self, loader_worker: int) -> int:
        """Logical id of this rank's DataLoader worker ``loader_worker``."""
        w = self.cfg.workers_per_rank
        return self.cfg.rank * w + (loader_worker + self.rotate) % w

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            torch.set_num_threads(1)  # workers decode; the trainer's threads do the maths
        g = self.logical_worker(info.id if info is not None else 0)
        epoch, position = self.cursors.get(g, (0, 0))
        return self._batches(g, epoch, position)

    def records(self, worker: int, epoch: int) -> Iterator:
        """The shuffled records (and source-level BadSamples) of ``worker`` for ``epoch``."""
        cfg = self.cfg
        shards, stride, offset = shard_plan(len(self.source.shards), epoch, worker, cfg.total_workers, cfg.seed, cfg.resampled)

        def raw():
            j = 0
            for s in shards:
                for rec in self.source.read(self.source.shards[s]):
                    if j % stride == offset:
                        yield rec
                    j += 1

        return shuffled(raw(), cfg.shuffle_buffer, np.random.default_rng([cfg.seed, epoch, worker, 2]))

    def _batches(self, worker: int, epoch: int, skip: int) -> Iterator[dict]:
        pending, bad, logged = [], Counter(), 0
        while True:
            seen = good = 0
            for position, rec in enumerate(self.records(worker, epoch), start=1):
                if position <= skip:
                    continue
                seen += 1
                try:
                    if isinstance(rec, BadSample):
                        raise rec
                    pending.append(self.processor(rec, epoch))
                    good += 1
                except BadSample as b:
                    bad[b.reason] += 1
                    if logged < _LOGGED_BAD_PER_WORKER:
                        logged += 1
                        log.warning("skipping bad sample (worker %d): %s", worker, b)
                    continue
                if len(pending) == self.cfg.batch_size:
                    batch = collate(pending, self.tokenizer)
                    batch.update(worker=worker, epoch=epoch, position=position, bad=dict(bad))
                    yield batch
                    pending, bad = [], Counter()
            if skip == 0 and seen == 0:
                raise RuntimeError(f"data worker {worker} got no samples in epoch {epoch}: the dataset is empty "
                                   f"or has fewer samples than the {self.cfg.total_workers} data workers")
            if skip == 0 and seen and not good:
                raise RuntimeError(f"data worker {worker}: every sample of epoch {epoch} was bad ({dict(bad)})")
            epoch, skip = epoch + 1, 0


def make_loader(stream: TrainStream, prefetch_factor: int = 2, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` (batches are built in the workers, so ``batch_size=None``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the Rust pool must not be forked
    n = stream.cfg.num_workers
    return DataLoader(stream, batch_size=None, num_workers=n, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if n > 0 else None, persistent_workers=False)
