"""Retrieval eval sets: image references plus every caption of each image.

Three on-disk formats, picked by :func:`detect_format` (or ``fmt=``):

- ``karpathy``: the Karpathy split files ``dataset_coco.json`` / ``dataset_flickr30k.json``
  (``{"dataset": "coco", "images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``);
  images live at ``image_root/filepath/filename`` (COCO) or ``image_root/filename`` (Flickr30k).
- ``jsonl``: one ``{"image": path, "captions": [str, ...]}`` object per line, paths relative to
  ``image_root`` (default: the file's folder).
- ``wds``: webdataset tar shards (a ``.tar``, a brace pattern ``shards-{000..009}.tar`` or a
  folder of ``.tar`` files); a sample is the members sharing a key: one image (``.jpg``, ``.png``,
  ...) and its captions, either ``.txt`` (one caption per non-empty line) or ``.json``
  (``{"captions": [...]}``). Images are read lazily straight from the tar at their byte offset.

Every entry is checked when the set is loaded: image present and its header decodable, every
caption a non-empty string, at least one caption per image. Problems raise
:class:`BadEntriesError` naming every bad entry, because a metric over a silently shrunken set is
wrong; ``skip_bad=True`` drops them instead (a bad caption alone, or a bad image with its
captions) and records them in :attr:`RetrievalDataset.skipped`. Images whose pixels fail to decode
later (e.g. truncated files) are handled the same way by the evaluation pass.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import torch
from PIL import Image

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
CAPTION_EXTENSIONS = frozenset({"txt", "json"})


@dataclasses.dataclass(frozen=True)
class BadEntry:
    """One unusable entry of an eval set: ``entry`` names it (file:line, image path, shard:key),
    ``reason`` is a short category used for counting, ``detail`` the underlying error."""

    entry: str
    reason: str
    detail: str = ""

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


def _open_loaded(fp) -> Image.Image:
    with Image.open(fp) as img:  # closes the file; the decoded pixels stay usable
        img.load()  # decode now so a truncated file fails here, inside the caller's error handling
        return img


@dataclasses.dataclass(frozen=True)
class FileImage:
    """An image file on disk."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self) -> Image.Image:
        """The decoded PIL image (any mode; transforms convert to RGB)."""
        return _open_loaded(self.path)

    def check(self) -> None:
        """Raise if the file is missing or its header is not an image (cheap: no pixel decode)."""
        with Image.open(self.path):
            pass


@dataclasses.dataclass(frozen=True)
class TarMemberImage:
    """An image stored in a tar shard at byte ``offset`` (``size`` bytes), read without untarring."""

    shard: Path
    key: str
    offset: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.key}"

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"shard truncated: read {len(data)} of {self.size} bytes")
        return data

    def open(self) -> Image.Image:
        """The decoded PIL image."""
        return _open_loaded(io.BytesIO(self.read_bytes()))

    def check(self) -> None:
        """Raise if the member's bytes are not an image header."""
        with Image.open(io.BytesIO(self.read_bytes())):
            pass


ImageRef = Union[FileImage, TarMemberImage]


def check_image(image: ImageRef) -> BadEntry | None:
    """``None`` if the image exists and its header decodes, else the problem (no pixel decode)."""
    try:
        image.check()
    except FileNotFoundError:
        return BadEntry(image.name, "missing image")
    except Exception as e:  # PIL raises many types for undecodable data; each is a bad entry
        return BadEntry(image.name, "unreadable image", f"{type(e).__name__}: {e}")
    return None


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
        return [], [BadEntry(entry, "no captions", f"expected a non-empty list, got {captions!r:.80}")]
    good, problems = [], []
    for k, c in enumerate(captions):
        if isinstance(c, str) and c.strip():
            good.append(c.strip())
        else:
            problems.append(BadEntry(f"{entry} caption {k}", "bad caption", f"{c!r:.80}"))
    if not good:
        problems.append(BadEntry(entry, "no captions", "every caption is bad"))
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
            records.append(_Record(entry, None, [], BadEntry(entry, "malformed entry", "missing 'filename'")))
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


def _read_jsonl(path: Path, image_root: Path | None, split: str) -> tuple[list[_Record], str | None]:
    root = image_root or path.parent
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                records.append(_Record(entry, None, [], BadEntry(entry, "malformed entry", f"invalid JSON: {e}")))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                records.append(_Record(entry, None, [], BadEntry(entry, "malformed entry", "missing 'image' path")))
                continue
            records.append(_Record(entry, FileImage(root / obj["image"]), obj.get("captions")))
    if not records:
        raise ValueError(f"{path}: no entries")
    return records, None


# webdataset's key rule: the key is the member path up to the first dot of its base name.
_WDS_KEY = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")


def expand_shards(pattern: str | Path) -> list[Path]:
    """Shard paths of a ``.tar`` file, a brace pattern (``a-{000..009}.tar``) or a folder of ``.tar``."""
    p = Path(pattern)
    if p.is_dir():
        shards = sorted(p.glob("*.tar"))
    elif "{" in str(pattern):
        import braceexpand

        shards = [Path(s) for s in braceexpand.braceexpand(str(pattern))]
    else:
        shards = [p]
    if not shards:
        raise ValueError(f"{pattern}: no .tar shards found")
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"{pattern}: shards not found: {missing}")
    return shards


def _wds_captions(data: bytes, ext: str) -> object:
    text = data.decode("utf-8")
    if ext == "txt":
        return [line for line in text.splitlines() if line.strip()]
    obj = json.loads(text)
    return obj.get("captions") if isinstance(obj, dict) else None


def _read_wds(pattern: Path, image_root: Path | None, split: str) -> tuple[list[_Record], str | None]:
    records = []
    for shard in expand_shards(pattern):
        samples: dict[str, dict] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    match = _WDS_KEY.match(m.name)
                    if not m.isfile() or not match:
                        continue
                    key, ext = match.group(1), match.group(2).lower()
                    sample = samples.setdefault(key, {})
                    if ext in IMAGE_EXTENSIONS:
                        sample.setdefault("images", []).append(TarMemberImage(shard, key, m.offset_data, m.size))
                    elif ext in CAPTION_EXTENSIONS:
                        try:
                            sample.setdefault("captions", []).append(_wds_captions(tar.extractfile(m).read(), ext))
                        except (UnicodeDecodeError, json.JSONDecodeError) as e:
                            sample["problem"] = f"{m.name}: {type(e).__name__}: {e}"
        except tarfile.TarError as e:
            raise ValueError(f"{shard}: not a readable tar shard ({e})") from None
        for key, s in samples.items():
            entry = f"{shard}:{key}"
            images, caps = s.get("images", []), s.get("captions", [])
            problem = None
            if "problem" in s:
                problem = BadEntry(entry, "bad caption", s["problem"])
            elif len(images) != 1:
                problem = BadEntry(entry, "malformed entry", f"{len(images)} image members (expected 1)")
            elif len(caps) != 1:
                problem = BadEntry(entry, "no captions" if not caps else "malformed entry",
                                   f"{len(caps)} caption members (expected one .txt or .json)")
            records.append(_Record(entry, images[0] if images else None, caps[0] if len(caps) == 1 else [], problem))
    if not records:
        raise ValueError(f"{pattern}: the shards hold no samples")
    return records, None


Reader = Callable[[Path, "Path | None", str], "tuple[list[_Record], str | None]"]
FORMATS: dict[str, Reader] = {"karpathy": _read_karpathy, "jsonl": _read_jsonl, "wds": _read_wds}


def detect_format(path: str | Path) -> str:
    """``"karpathy"`` for ``.json``, ``"jsonl"`` for ``.jsonl``, ``"wds"`` for tar shards/folders."""
    p = str(path)
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
    path = Path(path)
    if fmt != "wds" and not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    records, name = FORMATS[fmt](path, Path(image_root) if image_root else None, split)
    good, problems = _validate_records(records, check_images)
    if problems and not skip_bad:
        raise BadEntriesError(str(path), problems)
    if not good:
        raise ValueError(f"{path}: every entry is bad ({len(problems)} skipped)")
    return RetrievalDataset([r.image for r in good], [r.captions for r in good], str(path), name, problems)
