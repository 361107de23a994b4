"""Writing webdataset shards: numbered ``.tar`` files of ``<key>.<ext>`` members, plus ``sizes.json``.

Each shard is written to a temporary name and renamed when complete, and ``sizes.json`` (shard
file name -> sample count, the layout open_clip reads) is written atomically at the end, so an
interrupted write never leaves a half shard under a final name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Mapping

from clips_tower.io import atomic_write_json

SIZES_FILE = "sizes.json"


class ShardWriter:
    """Write samples ``(key, {ext: bytes})`` into ``out_dir/{prefix}{index:05d}.tar``.

    ``shard_size`` samples per shard. Use as a context manager; :attr:`sizes` maps shard file
    names to counts and is written to ``sizes.json`` on exit.
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 10000, prefix: str = "") -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.prefix = shard_size, prefix
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._name = ""

    def _open_next(self) -> None:
        self._close()
        self._name = f"{self.prefix}{len(self.sizes):05d}.tar"
        self._tmp = self.out_dir / f".{self._name}.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.sizes[self._name] = 0

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.out_dir / self._name)
            self._tar = None

    def write(self, key: str, fields: Mapping[str, bytes]) -> None:
        """Add one sample; ``fields`` maps extensions (``"jpg"``, ``"json"``) to file bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits on them)")
        if self._tar is None or self.sizes[self._name] >= self.shard_size:
            self._open_next()
        for ext, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # reproducible archives
            self._tar.addfile(info, io.BytesIO(data))
        self.sizes[self._name] += 1

    def close(self) -> dict[str, int]:
        """Finish the last shard and write ``sizes.json``; returns the sizes."""
        self._close()
        atomic_write_json(self.out_dir / SIZES_FILE, self.sizes)
        return self.sizes

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)


def write_shards(samples: Iterable[tuple[str, Mapping[str, bytes]]], out_dir: str | Path, shard_size: int = 10000,
                 prefix: str = "") -> dict[str, int]:
    """Write every ``(key, fields)`` sample into shards; returns ``{shard name: count}``."""
    with ShardWriter(out_dir, shard_size, prefix) as w:
        for key, fields in samples:
            w.write(key, fields)
    return w.sizes


def json_bytes(obj) -> bytes:
    """Compact UTF-8 JSON of ``obj`` (the ``.json`` member of a sample)."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")
