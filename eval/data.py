"""Retrieval eval sets: image references plus every caption of each image.

Three on-disk formats, picked by :func:`detect_format` (or ``fmt=``):

- ``karpathy``: the Karpathy split files ``dataset_coco.json`` / ``dataset_flickr30k.json``
  (``{"dataset": "coco", "images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``);
  images live at ``image_root/filepath/filename`` (COCO) or ``image_root/filename`` (Flickr30k).
- ``jsonl``: one ``{"image": path, "captions": [str, ...]}`` object per line, paths relative to
  ``image_root`` (default: the file's folder).
- ``wds``: webdataset tar shards, any spec training reads (:func:`pretrain.data.sources.expand_urls`:
  a ``.tar``, a brace pattern ``shards-{000..009}.tar``, a folder of ``.tar`` files, lists joined
  by ``::``, ``pipe:CMD`` streams, URLs), read by the same webdataset reader as training
  (:func:`pretrain.data.sources.read_tar_samples`); a sample is the members sharing a key: one
  image (an extension of :data:`IMAGE_EXTENSIONS`) and its captions, either ``.txt`` (one caption
  per non-empty line) or ``.json`` (``{"captions": [...]}``). The encoded image bytes are kept in
  memory (a stream cannot be re-read), decoded on access: about 0.8 GB for COCO's 5k test images.

Every entry is checked when the set is loaded: image present and its header decodable, every
caption a non-empty string, at least one caption per image. Problems raise
:class:`BadEntriesError` naming every bad entry, because a metric over a silently shrunken set is
wrong; ``skip_bad=True`` drops them instead (a bad caption alone, or a bad image with its
captions) and records them in :attr:`RetrievalDataset.skipped`. Images whose pixels fail to decode
later (e.g. truncated files) are handled the same way by the evaluation pass. Reasons are the
project's one bad-sample vocabulary (:data:`pretrain.data.errors.REASONS`: ``missing_image``,
``unreadable_image``, ``missing_caption``, ``empty_caption``, ``malformed_record``, ...).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import torch
from PIL import Image

from pretrain.data.errors import (IMAGE_EXTENSIONS, MALFORMED_RECORD, MISSING_CAPTION, MISSING_IMAGE, NOT_UTF8,
                                  BadSample, caption_problem, check_reason, image_header_problem)
from pretrain.data.sources import decode_image, expand_urls, is_local, read_tar_samples

CAPTION_EXTENSIONS = ("txt", "json")


@dataclasses.dataclass(frozen=True)
class BadEntry:
    """One unusable entry of an eval set: ``entry`` names it (file:line, image path, shard:key),
    ``reason`` (one of :data:`pretrain.data.errors.REASONS`) is used for counting, ``detail`` the
    underlying error."""

    entry: str
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        check_reason(self.reason)

    def __str__(self) -> str:
        return f"{self.entry}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class BadEntriesError(ValueError):
    """An eval set holds unreadable images or captions; ``problems`` lists every one."""

    def __init__(self, source: str, problems: Sequence[BadEntry]) -> None:
        self.problems = list(problems)
        listing = "\n  ".join(str(p) for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} bad entr{'y' if len(self.problems) == 1 else 'ies'} "
            f"(fix them, or pass --skip-bad / skip_bad=True to drop them and count them in the result):\n  {listing}"
        )


def count_by_reason(problems: Iterable[BadEntry]) -> dict[str, int]:
    """``{reason: count}`` of bad entries, for result files."""
    return dict(Counter(p.reason for p in problems))


@dataclasses.dataclass(frozen=True)
class FileImage:
    """An image file on disk."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self) -> Image.Image:
        """The fully decoded PIL image (any mode; transforms convert to RGB); raises
        :class:`~pretrain.data.errors.BadSample` (``missing_image``, ``unreadable_image``, ``image_too_large``)."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BadSample(MISSING_IMAGE, self.name, str(e)) from None
        return decode_image(data, self.name)

    def header_problem(self) -> tuple[str, str] | None:
        """``(reason, detail)`` if the file is missing or its header is not an image, else None."""
        return image_header_problem(self.path)


@dataclasses.dataclass(frozen=True)
class TarMemberImage:
    """An image member ``key`` of tar shard ``shard`` (a path or URL), held as its encoded bytes."""

    shard: str
    key: str
    data: bytes = dataclasses.field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.key}"

    def open(self) -> Image.Image:
        """The fully decoded PIL image; raises :class:`~pretrain.data.errors.BadSample`."""
        return decode_image(self.data, self.name)

    def header_problem(self) -> tuple[str, str] | None:
        """``(reason, detail)`` if the bytes do not start with an image header, else None."""
        return image_header_problem(io.BytesIO(self.data))


ImageRef = Union[FileImage, TarMemberImage]


def check_image(image: ImageRef) -> BadEntry | None:
    """``None`` if the image exists and its header decodes, else the problem (no pixel decode)."""
    problem = image.header_problem()
    return BadEntry(image.name, *problem) if problem else None


@dataclasses.dataclass
class RetrievalDataset:
    """Images and their captions.

    ``images[i]`` is a lazy reference (``.name``, ``.open()``), ``captions[i]`` the list of its
    captions (>= 1). ``name`` is the dataset's name when the file states it (``"coco"``,
    ``"flickr30k"``), used to show the paper's numbers. ``skipped`` lists entries dropped at load
    with ``skip_bad=True``. ``dataset[i]`` decodes image ``i`` to a PIL image.
    """

    images: list[ImageRef]
    captions: list[list[str]]
    source: str
    name: str | None = None
    skipped: list[BadEntry] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} caption lists")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Image.Image:
        return self.images[i].open()

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def flat_captions(self) -> tuple[list[str], torch.Tensor]:
        """All captions in image order and ``text_image_index`` LongTensor [M] (caption -> image)."""
        texts = [c for caps in self.captions for c in caps]
        index = torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long)
        return texts, index

    def subset(self, keep: Sequence[int], dropped: Sequence[BadEntry] = ()) -> "RetrievalDataset":
        """The dataset restricted to image indices ``keep``; ``dropped`` is added to ``skipped``."""
        return RetrievalDataset([self.images[i] for i in keep], [self.captions[i] for i in keep],
                                self.source, self.name, self.skipped + list(dropped))


@dataclasses.dataclass
class _Record:
    """One parsed entry before validation (``problem`` set when parsing already failed)."""

    entry: str
    image: ImageRef | None
    captions: object  # as read; validated by _validate_records
    problem: BadEntry | None = None


def _split_captions(entry: str, captions: object) -> tuple[list[str], list[BadEntry]]:
    """(usable captions, problems): a bad caption is dropped alone; none usable drops the image."""
    if not isinstance(captions, list) or not captions:
        return [], [BadEntry(entry, MISSING_CAPTION, f"expected a non-empty list, got {captions!r:.80}")]
    good, problems = [], []
    for k, c in enumerate(captions):
        reason = caption_problem(c)
        if reason:
            problems.append(BadEntry(f"{entry} caption {k}", reason, f"{c!r:.80}"))
        else:
            good.append(c.strip())
    if not good:
        problems.append(BadEntry(entry, MISSING_CAPTION, "every caption is bad"))
    return good, problems


def _validate_records(records: Sequence[_Record], check_images: bool) -> tuple[list[_Record], list[BadEntry]]:
    """Check every record; returns (usable records with their usable captions, every problem).

    A bad caption is one problem and only that caption is dropped; a missing/undecodable image
    or an image left without captions drops the whole record.
    """
    good, problems = [], []
    for r in records:
        if r.problem:
            problems.append(r.problem)
            continue
        captions, found = _split_captions(r.entry, r.captions)
        problems.extend(found)
        if not captions:
            continue
        bad_image = check_image(r.image) if check_images else None
        if bad_image:
            problems.append(bad_image)
            continue
        good.append(dataclasses.replace(r, captions=captions))
    return good, problems


# ---------------------------------------------------------------- format readers
def _read_karpathy(path: Path, image_root: Path | None, split: str) -> tuple[list[_Record], str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a Karpathy split file (expected an object with an 'images' list)")
    root = image_root or path.parent
    records, splits = [], Counter()
    for k, item in enumerate(data["images"]):
        entry = f"{path}:images[{k}]"
        if not isinstance(item, dict) or "filename" not in item:
            records.append(_Record(entry, None, [], BadEntry(entry, MALFORMED_RECORD, "missing 'filename'")))
            continue
        splits[item.get("split")] += 1
        if item.get("split") != split:
            continue
        sentences = item.get("sentences")
        if isinstance(sentences, list):
            captions = [s.get("raw") if isinstance(s, dict) else s for s in sentences]
        else:
            captions = sentences
        image = FileImage(root / item.get("filepath", "") / item["filename"])
        records.append(_Record(f"{entry} ({item['filename']})", image, captions))
    if not records:
        raise ValueError(f"{path}: no images in split {split!r}; splits present: {dict(splits)}")
    name = data.get("dataset")
    return records, name if isinstance(name, str) else None


def read_jsonl_entries(path: Path) -> list[tuple[str, dict | BadEntry]]:
    """Every non-empty line of a JSONL eval file as ``(entry, object)`` (entry ``"file:line"``); a
    line that is not JSON, or not an object with an ``image`` path, gives a ``malformed_record``
    :class:`BadEntry` in place of the object."""
    rows: list[tuple[str, dict | BadEntry]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append((entry, BadEntry(entry, MALFORMED_RECORD, f"invalid JSON: {e}")))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                rows.append((entry, BadEntry(entry, MALFORMED_RECORD, "missing 'image' path")))
                continue
            rows.append((entry, obj))
    return rows


def _read_jsonl(path: Path, image_root: Path | None, split: str) -> tuple[list[_Record], str | None]:
    root = image_root or path.parent
    records = [_Record(entry, None, [], obj) if isinstance(obj, BadEntry)
               else _Record(entry, FileImage(root / obj["image"]), obj.get("captions"))
               for entry, obj in read_jsonl_entries(path)]
    if not records:
        raise ValueError(f"{path}: no entries")
    return records, None


def expand_shards(spec: str | Path) -> list[str]:
    """Shard URLs of a spec (:func:`pretrain.data.sources.expand_urls`: a ``.tar``, brace
    patterns, ``::`` lists, ``pipe:`` streams, URLs, a folder of ``.tar``); local shards must exist."""
    shards = expand_urls(str(spec), ".tar")
    missing = [s for s in shards if is_local(s) and not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"{spec}: shards not found: {missing}")
    return shards


def _wds_captions(data: bytes, ext: str) -> object:
    text = data.decode("utf-8")
    if ext == "txt":
        return [line for line in text.splitlines() if line.strip()]
    obj = json.loads(text)
    return obj.get("captions") if isinstance(obj, dict) else None


def _wds_record(shard: str, sample: dict) -> _Record:
    """One webdataset sample (``{"__key__", ext: bytes}``) as a record to validate."""
    entry = f"{shard}:{sample['__key__']}"
    images = [TarMemberImage(shard, sample["__key__"], sample[e]) for e in IMAGE_EXTENSIONS if e in sample]
    caps = [e for e in CAPTION_EXTENSIONS if e in sample]
    if len(images) != 1:
        return _Record(entry, None, [], BadEntry(entry, MALFORMED_RECORD, f"{len(images)} image members (expected 1)"))
    if len(caps) != 1:
        return _Record(entry, images[0], [], BadEntry(entry, MISSING_CAPTION if not caps else MALFORMED_RECORD,
                                                       f"{len(caps)} caption members (expected one .txt or .json)"))
    try:
        captions = _wds_captions(sample[caps[0]], caps[0])
    except UnicodeDecodeError as e:
        return _Record(entry, images[0], [], BadEntry(entry, NOT_UTF8, f"{caps[0]}: {e}"))
    except json.JSONDecodeError as e:
        return _Record(entry, images[0], [], BadEntry(entry, MALFORMED_RECORD, f"{caps[0]}: {e}"))
    return _Record(entry, images[0], captions)


def _read_wds(spec: str, image_root: Path | None, split: str) -> tuple[list[_Record], str | None]:
    records = []
    for shard in expand_shards(spec):
        for sample in read_tar_samples(shard):
            if isinstance(sample, BadSample):  # the archive is damaged: the set would silently shrink
                raise ValueError(f"{shard}: not a readable tar shard ({sample.detail})")
            records.append(_wds_record(shard, sample))
    if not records:
        raise ValueError(f"{spec}: the shards hold no samples")
    return records, None


Reader = Callable[["Path | str", "Path | None", str], "tuple[list[_Record], str | None]"]
FORMATS: dict[str, Reader] = {"karpathy": _read_karpathy, "jsonl": _read_jsonl, "wds": _read_wds}


def detect_format(path: str | Path) -> str:
    """``"karpathy"`` for ``.json``, ``"jsonl"`` for ``.jsonl``, ``"wds"`` for tar shards, folders,
    brace patterns, ``::`` lists and ``pipe:`` streams."""
    p = str(path)
    if p.startswith("pipe:") or "::" in p:
        return "wds"
    if p.endswith(".jsonl"):
        return "jsonl"
    if p.endswith(".json"):
        return "karpathy"
    if p.endswith(".tar") or "{" in p or Path(p).is_dir():
        return "wds"
    raise ValueError(f"{path}: cannot tell the format from the name; pass fmt= one of {sorted(FORMATS)}")


def load_retrieval_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str = "test",
    fmt: str | None = None,
    *,
    skip_bad: bool = False,
    check_images: bool = True,
) -> RetrievalDataset:
    """Read a retrieval eval set (format auto-detected unless ``fmt`` is given; see module doc).

    ``split`` selects Karpathy entries (``"test"``: 5k COCO / 1k Flickr30k images); the other
    formats hold one split per file. Every entry is validated (``check_images`` also opens each
    image header); bad entries raise :class:`BadEntriesError` listing all of them, unless
    ``skip_bad`` drops them into ``dataset.skipped``.
    """
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose from {sorted(FORMATS)}")
    source = str(path)
    if fmt != "wds":  # a shard spec stays a string: Path() would mangle "pipe:" commands and URLs
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
    records, name = FORMATS[fmt](path if fmt != "wds" else source, Path(image_root) if image_root else None, split)
    good, problems = _validate_records(records, check_images)
    if problems and not skip_bad:
        raise BadEntriesError(source, problems)
    if not good:
        raise ValueError(f"{source}: every entry is bad ({len(problems)} skipped)")
    return RetrievalDataset([r.image for r in good], [r.captions for r in good], source, name, problems)
