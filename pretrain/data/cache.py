"""An in-memory shard cache for small datasets read for many epochs (``data.memory_cache_mib``).

Reading a tar shard and decoding its JPEGs is about half of a tiny model's training step (the
``clips demo`` model: 9.2 of 20 s over 150 steps at batch 64, one thread, cProfile), and a demo
run reads its 4000 pairs ten times. :class:`MemoryCachedSource` wraps any source: the first full
read of a local shard keeps its records with the images already decoded, later reads of that
shard (later epochs, and later runs in the same process: the cache is process-wide, keyed by the
file's path, size and modification time) replay them. Sample randomness (captions, augmentation)
is drawn after the cache, so a cached run's batches equal an uncached run's.

Only local files are cached (``pipe:`` and URLs stream as before); a shard is kept only after it
was read to its end, and only while the cache holds less than its budget of decoded pixels.
Records whose image does not decode are kept undecoded, so each epoch still skips and counts them
by the same reason.
"""

from __future__ import annotations

import os
from typing import Iterator

from .errors import BadSample
from .sources import RawRecord, decode_image, is_local, read_image_bytes

# (path, size, mtime_ns) -> records of the shard; the bytes of decoded pixels held
_SHARDS: dict[tuple[str, int, int], list[RawRecord | BadSample]] = {}
_held = [0]


def _decoded(rec: RawRecord | BadSample) -> tuple[RawRecord | BadSample, int]:
    """The record with its image decoded and the pixel bytes it holds; a record whose image does
    not decode is kept as read, so the processor raises (and counts) exactly what it would uncached."""
    if isinstance(rec, BadSample):
        return rec, 0
    try:
        img = decode_image(read_image_bytes(rec), rec.key)
    except BadSample:
        return rec, len(rec.image or b"")
    return RawRecord(key=rec.key, meta=rec.meta, decoded=img), img.width * img.height * len(img.getbands())


def clear() -> None:
    """Drop every cached shard of this process."""
    _SHARDS.clear()
    _held[0] = 0


class MemoryCachedSource:
    """A source (``shards``, ``read``, ``num_samples``) that replays its local shards from memory
    after their first read, up to ``budget_mib`` MiB of decoded pixels in this process."""

    def __init__(self, source, budget_mib: int) -> None:
        if budget_mib <= 0:
            raise ValueError(f"data.memory_cache_mib must be positive to cache, got {budget_mib}")
        self.source, self.budget = source, budget_mib * 2**20
        self.shards = source.shards

    def num_samples(self) -> int | None:
        """The wrapped source's sample count."""
        return self.source.num_samples()

    def read(self, url: str) -> Iterator[RawRecord | BadSample]:
        """Records of one shard: from memory when cached, else from the wrapped source (decoded
        here, and kept once the shard has been read to its end and fits the budget)."""
        if not is_local(url):
            yield from self.source.read(url)
            return
        try:
            st = os.stat(url)
            ident = (os.path.abspath(url), st.st_size, st.st_mtime_ns)
        except OSError:  # missing shard: the wrapped source reports it
            yield from self.source.read(url)
            return
        if ident in _SHARDS:
            yield from _SHARDS[ident]
            return
        records, size = [], 0
        for rec in self.source.read(url):
            rec, n = _decoded(rec)
            records.append(rec)
            size += n
            yield rec
        if _held[0] + size <= self.budget:
            _SHARDS[ident] = records
            _held[0] += size
