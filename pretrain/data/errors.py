"""Bad samples: one exception type carrying a reason from a fixed list, counted instead of fatal."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

# Every reason a sample can be skipped for (the keys of the counts in logs and run summaries).
REASONS = (
    "unreadable_shard",   # a shard/file could not be opened or its archive is corrupt
    "bad_metadata",       # the sample's JSON (wds .json member, JSONL line) does not parse
    "not_utf8",           # caption metadata is not valid UTF-8
    "missing_image",      # no image member / column / file
    "undecodable_image",  # image bytes PIL cannot decode (zero-byte, corrupt, truncated)
    "image_too_large",    # more pixels than PIL's decompression-bomb limit (checked before decoding)
    "missing_caption",    # a caption the recipe needs is absent or not a string
    "empty_caption",      # ... is empty or whitespace
    "no_sentence",        # the synthetic caption holds no sentence to sample
    "caption_too_long",   # a caption longer than data.max_caption_chars (tokenizing it would stall a worker)
)


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`REASONS`, ``key`` names the sample."""

    def __init__(self, reason: str, key: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; known: {REASONS}")
        super().__init__(f"{reason}: {key}{' (' + detail + ')' if detail else ''}")
        self.reason, self.key, self.detail = reason, key, detail


def add_counts(total: Counter, counts: Mapping[str, int] | Iterable[Mapping[str, int]]) -> Counter:
    """Add one or several ``{reason: n}`` mappings into ``total`` (in place); returns it."""
    for c in [counts] if isinstance(counts, Mapping) else counts:
        total.update({k: int(v) for k, v in c.items() if v})
    return total
