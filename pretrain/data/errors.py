"""Bad samples: the one vocabulary of reasons, the exception that carries one, and the shared checks.

Every data reader of the project reports an unusable sample (or eval entry) under one of
:data:`REASONS`: pretraining (:mod:`.sources`, :mod:`.decode`; skipped and counted), the eval sets
(:mod:`eval.data`, :mod:`eval.classification`, :mod:`eval.captioning`; listed, or dropped with
``skip_bad``) and the LLaVA data check (:mod:`llava_integration.data`). So a count in a training
summary, an eval result file and a LLaVA data report means the same thing. This module imports
nothing heavy (PIL only inside :func:`image_header_problem`), so every package may use it.

:data:`IMAGE_EXTENSIONS` is the one list of file extensions read as images (tar members, folder
listings), in the order a sample with several image members picks from.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import IO, Iterable, Mapping

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

UNREADABLE_SHARD = "unreadable_shard"
MALFORMED_RECORD = "malformed_record"
NOT_UTF8 = "not_utf8"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
NO_SENTENCE = "no_sentence"
CAPTION_TOO_LONG = "caption_too_long"
UNKNOWN_LABEL = "unknown_label"
MALFORMED_CONVERSATION = "malformed_conversation"
IMAGE_PLACEHOLDER_MISMATCH = "image_placeholder_mismatch"
LABEL_MISMATCH = "label_mismatch"
TOO_LONG = "too_long"

# Every reason a sample can be bad for (the keys of the counts in logs, summaries and results).
REASONS = (
    UNREADABLE_SHARD,            # a shard/file could not be opened or its archive is corrupt
    MALFORMED_RECORD,            # the sample's JSON (wds member, JSONL line, record) does not parse or lacks a field
    NOT_UTF8,                    # caption metadata is not valid UTF-8
    MISSING_IMAGE,               # no image member / column / file
    UNREADABLE_IMAGE,            # image bytes PIL cannot decode (zero-byte, corrupt, truncated)
    IMAGE_TOO_LARGE,             # more pixels than PIL's decompression-bomb limit (checked before decoding)
    MISSING_CAPTION,             # a caption that is needed is absent or not a string
    EMPTY_CAPTION,               # ... is empty or whitespace
    NO_SENTENCE,                 # the synthetic caption holds no sentence to sample
    CAPTION_TOO_LONG,            # a caption longer than data.max_caption_chars (tokenizing it would stall a worker)
    UNKNOWN_LABEL,               # a classification label that is not one of the class names (eval)
    MALFORMED_CONVERSATION,      # LLaVA: roles do not alternate, or the template cannot render the turns
    IMAGE_PLACEHOLDER_MISMATCH,  # LLaVA: <image> placeholders and images disagree
    LABEL_MISMATCH,              # LLaVA: the rendered text and its tokens disagree on the answer spans
    TOO_LONG,                    # LLaVA: more tokens than model_max_length
)


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`REASONS`, ``key`` names the sample."""

    def __init__(self, reason: str, key: str, detail: str = "") -> None:
        check_reason(reason)
        super().__init__(f"{reason}: {key}{' (' + detail + ')' if detail else ''}")
        self.reason, self.key, self.detail = reason, key, detail


def check_reason(reason: str) -> str:
    """``reason`` if it is one of :data:`REASONS`, else ``ValueError`` (a bug in a reader)."""
    if reason not in REASONS:
        raise ValueError(f"unknown bad-sample reason {reason!r}; known: {REASONS}")
    return reason


def add_counts(total: Counter, counts: Mapping[str, int] | Iterable[Mapping[str, int]]) -> Counter:
    """Add one or several ``{reason: n}`` mappings into ``total`` (in place); returns it."""
    for c in [counts] if isinstance(counts, Mapping) else counts:
        total.update({k: int(v) for k, v in c.items() if v})
    return total


def caption_problem(value: object) -> str | None:
    """``None`` for a usable caption (a non-blank string), else its reason
    (``missing_caption`` for an absent/non-string value, ``empty_caption`` for a blank one)."""
    if not isinstance(value, str):
        return MISSING_CAPTION
    if not value.strip():
        return EMPTY_CAPTION
    return None


def image_header_problem(image: str | Path | IO[bytes]) -> tuple[str, str] | None:
    """``None`` if ``image`` (a file path, or an open binary stream) starts with an image header
    PIL reads, else ``(reason, detail)``: ``missing_image`` for no such file, ``unreadable_image``
    otherwise. Cheap: the pixels are not decoded (a truncated file passes; decoding finds it)."""
    from PIL import Image

    if isinstance(image, (str, Path)) and not Path(image).is_file():
        return MISSING_IMAGE, ""
    try:
        with Image.open(image) as im:  # reads the header only
            im.size
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        return UNREADABLE_IMAGE, f"{type(e).__name__}: {e}"
    return None
