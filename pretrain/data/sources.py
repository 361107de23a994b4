"""Data sources: where raw training records come from.

A source splits its data into *shards* (tar files, parquet files, JSONL files) and reads one shard
as a stream of :class:`RawRecord` (bytes and strings, not yet decoded; decoding happens in the
data-loader workers, see :mod:`.decode`). Registered formats:

- ``wds``: webdataset tar shards: ``<key>.<image ext>`` (:data:`~.errors.IMAGE_EXTENSIONS`) +
  ``<key>.json`` holding the captions;
- ``parquet``: rows with an image column (bytes, an HF-datasets ``{"bytes", "path"}`` struct, or a
  path) and caption columns;
- ``jsonl``: one JSON object per line with an image path and the captions, plus an image folder.

Shard lists are written as open_clip/webdataset accept them: local paths, brace patterns
(``shards/{00000..00099}.tar``), several lists joined by ``::``, ``pipe:CMD`` URLs (e.g.
``pipe:aws s3 cp s3://bucket/x.tar -``), or a folder (all files of the format inside).

:func:`expand_urls` and :func:`read_tar_samples` are the project's one shard layer: the eval
readers (:mod:`eval.data`) use them too, so eval reads every shard spec training reads.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand
from PIL import Image

from .errors import (IMAGE_EXTENSIONS, IMAGE_TOO_LARGE, MALFORMED_RECORD, MISSING_IMAGE, NOT_UTF8, UNREADABLE_IMAGE,
                     UNREADABLE_SHARD, BadSample)
from .shards import SIZES_FILE

log = logging.getLogger(__name__)


@dataclass
class RawRecord:
    """One sample as a source reads it: ``key``; the image as ``image`` bytes or an ``image_path``
    (or, from the in-memory cache of :mod:`.cache`, already ``decoded``); the caption metadata as
    ``meta`` (JSON bytes to parse, or an already-parsed dict)."""

    key: str
    image: bytes | None = None
    image_path: str | None = None
    meta: bytes | dict | None = None
    decoded: Image.Image | None = None


@dataclass(frozen=True)
class SourceOptions:
    """Where each field lives. ``image_exts``/``meta_ext``: tar member extensions (wds);
    ``image_column``/``key_column``: parquet columns or JSONL keys; ``image_root``: folder image
    paths are relative to (default: the parquet/JSONL file's folder); ``caption_columns``: the
    caption fields to keep (parquet columns / JSONL keys)."""

    image_exts: tuple[str, ...] = IMAGE_EXTENSIONS
    meta_ext: str = "json"
    image_column: str = "image"
    key_column: str = "key"
    image_root: str | None = None
    caption_columns: tuple[str, ...] = ("org_caption", "re_caption")


def expand_urls(spec: str, suffix: str) -> list[str]:
    """Expand a shard spec (``::``-joined brace patterns, folders, ``pipe:`` URLs) into a list.

    A folder expands to its files ending in ``suffix``, sorted.
    """
    urls: list[str] = []
    for part in spec.split("::"):
        for url in braceexpand(part.strip()):
            if not url:
                continue
            p = Path(url)
            if "://" not in url and not url.startswith("pipe:") and p.is_dir():
                found = sorted(str(f) for f in p.iterdir() if f.name.endswith(suffix) and not f.name.startswith("."))
                if not found:
                    raise FileNotFoundError(f"folder {url} holds no *{suffix} files")
                urls.extend(found)
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"shard spec {spec!r} expands to no shards")
    return urls


def is_local(url: str) -> bool:
    """True for a plain file path (not ``pipe:`` nor a ``scheme://`` URL)."""
    return "://" not in url and not url.startswith("pipe:")


def read_tar_samples(url: str) -> Iterator[dict | BadSample]:
    """The samples of one tar shard (local path, ``pipe:`` or any URL ``webdataset.gopen`` opens)
    as webdataset groups them: ``{"__key__": key, "__url__": url, <ext>: bytes, ...}`` (extensions
    lower-cased). A corrupt or unreadable archive ends the shard with one ``unreadable_shard``."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:  # stop reading this shard, report it once
        errors.append(exn)
        return False

    streams = url_opener([{"url": url}], handler=handler)
    yield from group_by_keys(tar_file_expander(streams, handler=handler), handler=handler)
    for exn in errors:
        log.warning("cannot read shard %s: %s", url, exn)
        yield BadSample(UNREADABLE_SHARD, url, str(exn)[:200])


# ----------------------------------------------------------------------- webdataset
class WebDatasetSource:
    """Tar shards (local, ``pipe:`` or any URL ``webdataset.gopen`` opens) of samples grouped by key."""

    suffix = ".tar"

    def __init__(self, urls: str, options: SourceOptions = SourceOptions()) -> None:
        self.shards = expand_urls(urls, self.suffix)
        self.image_exts, self.meta_ext = tuple(e.lower() for e in options.image_exts), options.meta_ext

    def read(self, url: str) -> Iterator[RawRecord | BadSample]:
        """Records of one shard; a corrupt or unreadable archive yields one ``unreadable_shard``."""
        for sample in read_tar_samples(url):
            if isinstance(sample, BadSample):
                yield sample
                continue
            image = next((sample[e] for e in self.image_exts if e in sample), None)
            yield RawRecord(key=sample["__key__"], image=image, meta=sample.get(self.meta_ext))

    def num_samples(self) -> int | None:
        """Samples in these shards from ``sizes.json`` (open_clip layout) or, per shard, from
        img2dataset's ``<shard>_stats.json`` (``successes``); None when a shard has neither."""
        total, cache = 0, {}
        for url in self.shards:
            if not is_local(url):
                return None
            path = Path(url)
            if path.parent not in cache:
                f = path.parent / SIZES_FILE
                cache[path.parent] = json.loads(f.read_text()) if f.is_file() else {}
            n = cache[path.parent].get(path.name)
            stats = path.with_name(f"{path.stem}_stats.json")
            if n is None and stats.is_file():
                n = json.loads(stats.read_text()).get("successes")
            if n is None:
                return None
            total += int(n)
        return total


# ----------------------------------------------------------------------- parquet
class ParquetSource:
    """Parquet files (e.g. Recap-DataComp-1B with images filled in): one row per sample.

    The image column holds bytes, a ``{"bytes", "path"}`` struct (HF ``datasets.Image``), or a
    path (relative to ``image_root``, default the parquet file's folder). A ``key`` column names
    samples when present; otherwise ``<file stem>/<row>``.
    """

    suffix = ".parquet"

    def __init__(self, urls: str, options: SourceOptions = SourceOptions()) -> None:
        self.shards = expand_urls(urls, self.suffix)
        self.image_column, self.key_column = options.image_column, options.key_column
        self.image_root, self.caption_columns = options.image_root, options.caption_columns

    def read(self, url: str) -> Iterator[RawRecord | BadSample]:
        """Records of one parquet file, read in row batches (only the needed columns)."""
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(url)
        except Exception as e:  # pyarrow raises several error types for a bad file
            yield BadSample(UNREADABLE_SHARD, url, str(e)[:200])
            return
        names = set(pf.schema_arrow.names)
        if self.image_column not in names:
            raise KeyError(f"{url}: no image column {self.image_column!r}; columns are {sorted(names)}")
        columns = [c for c in (self.key_column, self.image_column, *self.caption_columns) if c in names]
        root = Path(self.image_root) if self.image_root else Path(url).parent
        row = 0
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            for rec in batch.to_pylist():
                key = str(rec[self.key_column]) if rec.get(self.key_column) is not None else f"{Path(url).stem}/{row}"
                row += 1
                image = rec.get(self.image_column)
                if isinstance(image, dict):
                    image = image.get("bytes") or image.get("path")
                meta = {c: rec.get(c) for c in self.caption_columns}
                if isinstance(image, str):
                    yield RawRecord(key=key, image_path=str(root / image), meta=meta)
                else:
                    yield RawRecord(key=key, image=image, meta=meta)

    def num_samples(self) -> int:
        """Row count from the parquet footers."""
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(u).metadata.num_rows for u in self.shards)


# ----------------------------------------------------------------------- jsonl
class JsonlSource:
    """JSONL files, one object per line: an image path (``image_column``, relative to
    ``image_root``, default the JSONL file's folder) and the caption keys."""

    suffix = ".jsonl"

    def __init__(self, urls: str, options: SourceOptions = SourceOptions()) -> None:
        self.shards = expand_urls(urls, self.suffix)
        self.image_column, self.key_column, self.image_root = options.image_column, options.key_column, options.image_root

    def read(self, url: str) -> Iterator[RawRecord | BadSample]:
        """Records of one JSONL file; undecodable lines become ``not_utf8``/``malformed_record``."""
        root = Path(self.image_root) if self.image_root else Path(url).parent
        try:
            f = open(url, "rb")
        except OSError as e:
            yield BadSample(UNREADABLE_SHARD, url, str(e))
            return
        empty = True
        with f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                empty = False
                key = f"{Path(url).stem}/{i}"
                try:
                    obj = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    yield BadSample(NOT_UTF8, key)
                    continue
                except json.JSONDecodeError as e:
                    yield BadSample(MALFORMED_RECORD, key, str(e))
                    continue
                if not isinstance(obj, dict):
                    yield BadSample(MALFORMED_RECORD, key, "line is not a JSON object")
                    continue
                key = str(obj.get(self.key_column, key))
                path = obj.get(self.image_column)
                yield RawRecord(key=key, image_path=str(root / path) if isinstance(path, str) else None, meta=obj)
        if empty:  # counted like an empty tar or parquet file, so a lost upload shows in the summary
            yield BadSample(UNREADABLE_SHARD, url, "empty file")

    def num_samples(self) -> int:
        """Non-empty lines over all files (files are read once)."""
        total = 0
        for u in self.shards:
            with open(u, "rb") as f:
                total += sum(1 for line in f if line.strip())
        return total


SOURCES: dict[str, type] = {"wds": WebDatasetSource, "parquet": ParquetSource, "jsonl": JsonlSource}


def detect_format(spec: str) -> str:
    """Format name from a shard spec: ``.tar``/``pipe:`` -> wds, ``.parquet``, ``.jsonl``/``.json``."""
    first = next(iter(braceexpand(spec.split("::")[0].strip())))
    if first.startswith("pipe:") or first.endswith(".tar"):
        return "wds"
    if first.endswith(".parquet"):
        return "parquet"
    if first.endswith((".jsonl", ".json")):
        return "jsonl"
    p = Path(first)
    if p.is_dir():
        for fmt, cls in SOURCES.items():
            if any(f.name.endswith(cls.suffix) for f in p.iterdir()):
                return fmt
    raise ValueError(f"cannot tell the data format of {spec!r}; set data.format to one of {sorted(SOURCES)}")


def open_source(spec: str, fmt: str | None = None, options: SourceOptions = SourceOptions()):
    """Build the source for shard spec ``spec``; ``fmt`` None detects the format from the names."""
    fmt = fmt or detect_format(spec)
    try:
        cls = SOURCES[fmt]
    except KeyError:
        raise KeyError(f"unknown data format {fmt!r}; choose from {sorted(SOURCES)}") from None
    return cls(spec, options)


def read_image_bytes(record: RawRecord) -> bytes:
    """The record's image bytes, reading ``image_path`` when needed (raises :class:`BadSample`)."""
    if record.image is not None:
        return bytes(record.image)
    if record.image_path is None:
        raise BadSample(MISSING_IMAGE, record.key)
    try:
        with open(record.image_path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadSample(MISSING_IMAGE, record.key, str(e)) from None


def decode_image(data: bytes, key: str) -> Image.Image:
    """Decode image bytes fully (truncated files fail here, not later); raises :class:`BadSample`.

    The pixel count is checked from the header, before any pixel is decoded, against PIL's
    ``Image.MAX_IMAGE_PIXELS`` (raise it there for datasets of huge images): PIL itself only warns
    between one and two times that limit and would allocate the whole image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and similar warnings are not errors here
            img = Image.open(io.BytesIO(data))
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise BadSample(IMAGE_TOO_LARGE, key, f"{img.width}x{img.height} pixels > {limit}")
            img.load()
        return img
    except Image.DecompressionBombError as e:  # PIL's own check (over twice the limit) fires in open()
        raise BadSample(IMAGE_TOO_LARGE, key, str(e)) from None
    except BadSample:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        raise BadSample(UNREADABLE_IMAGE, key, f"{type(e).__name__}: {e}") from None
