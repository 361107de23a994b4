"""``clips data shard``: JSONL / parquet (+ image files) -> webdataset shards with ``sizes.json``.

Every image is read and decoded once, so the shards hold only usable samples; what is skipped is
counted by reason (:data:`~.errors.REASONS`). Images keep their encoded bytes (jpg/png/webp) and are
re-encoded as JPEG only when their format is something else. The ``.json`` member holds the two
captions under the same keys as the input (and the original ``key``).
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .decode import parse_meta, read_caption
from .errors import BadSample
from .shards import ShardWriter, json_bytes
from .sources import SourceOptions, decode_image, open_source, read_image_bytes

log = logging.getLogger(__name__)
_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class ShardReport:
    """What :func:`shard_dataset` did: shard sizes, samples written, skipped counts by reason."""

    sizes: dict[str, int]
    written: int
    skipped: dict[str, int]


def _sample_key(key: str, index: int) -> str:
    """A webdataset-safe key: no '.' or '/' (they separate key and extension in tar members)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    return safe or f"{index:09d}"


def shard_dataset(input_spec: str, out_dir: str | Path, *, fmt: str | None = None, options: SourceOptions = SourceOptions(),
                  web_key: str = "org_caption", synthetic_key: str = "re_caption", shard_size: int = 10000,
                  progress: bool = True) -> ShardReport:
    """Convert ``input_spec`` (JSONL/parquet files, brace patterns allowed) into shards in ``out_dir``.

    ``options`` says where images and keys live (see :class:`~.sources.SourceOptions`); samples
    without a decodable image or without both captions as non-empty strings are skipped.
    """
    from tqdm.auto import tqdm

    source = open_source(input_spec, fmt, options)
    if source.suffix == ".tar":
        raise ValueError(f"{input_spec} is already webdataset shards")
    skipped: Counter = Counter()
    written = 0
    seen_keys: set[str] = set()
    with ShardWriter(out_dir, shard_size) as writer:
        bar = tqdm(desc="sharding", unit="sample", disable=not progress)
        for shard in source.shards:
            for i, rec in enumerate(source.read(shard)):
                bar.update(1)
                try:
                    if isinstance(rec, BadSample):
                        raise rec
                    meta = parse_meta(rec)
                    captions = {k: read_caption(meta, k, rec.key) for k in (web_key, synthetic_key)}
                    data = read_image_bytes(rec)
                    img = decode_image(data, rec.key)
                except BadSample as b:
                    skipped[b.reason] += 1
                    log.debug("skip %s", b)
                    continue
                ext = _KEEP_FORMATS.get(img.format or "")
                if ext is None:  # e.g. BMP/GIF/TIFF: store as JPEG
                    buf = io.BytesIO()
                    img.convert("RGB").save(buf, format="JPEG", quality=95)
                    data, ext = buf.getvalue(), "jpg"
                key = _sample_key(rec.key, written)
                if key in seen_keys:
                    key = f"{key}_{written}"
                seen_keys.add(key)
                writer.write(key, {ext: data, "json": json_bytes({"key": rec.key, **captions})})
                written += 1
        bar.close()
    if skipped:
        log.warning("skipped %d samples: %s", sum(skipped.values()), dict(skipped))
    return ShardReport(writer.sizes, written, dict(sorted(skipped.items())))
