"""Token-reduction strategies: which part of a synthetic caption the text encoder sees.

Each strategy maps ``(caption, tokenizer, budget K, rng) -> word-piece ids`` (no special tokens;
``tokenizer.pack`` adds them and truncates to the encoder length):

- ``truncate``: the first K word pieces;
- ``random``: K word pieces drawn without replacement, kept in their original order;
- ``block``: one contiguous run of K word pieces at a uniformly random start;
- ``subcaption`` (CLIPS default): the caption split into sentences on runs of ``.`` or ``!``,
  empty pieces dropped, ONE sentence chosen uniformly; K is not used (the encoder length truncates);
- ``full``: every word piece (the "full synthetic caption" baseline).

A caption shorter than K comes back whole. Randomness comes only from ``rng``, which
:func:`sample_rng` derives from (seed, epoch, sample key), so a sample's text is reproducible and
changes from epoch to epoch.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable

import numpy as np

_SENTENCE_END = re.compile(r"[.!]+")


class NoSentenceError(ValueError):
    """The caption holds no sentence (only punctuation/whitespace): the sample cannot be used."""


def split_sentences(caption: str) -> list[str]:
    """Sentences of ``caption``: split on runs of ``.``/``!``, stripped, empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(caption) if s.strip()]


def _key_int(key: str | int) -> int:
    """A stable 64-bit integer for a sample key (Python's ``hash`` is salted per process)."""
    if isinstance(key, int):
        return key
    return int.from_bytes(hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest(), "little")


def sample_rng(seed: int, epoch: int, key: str | int, stream: int = 0) -> np.random.Generator:
    """Generator for one sample: a function of (seed, epoch, key) only, independent of worker/order.

    ``stream`` separates independent uses (e.g. 0 = caption sampling, 1 = image augmentation).
    """
    return np.random.default_rng([seed, epoch, _key_int(key), stream])


def truncate(caption: str, tokenizer, budget: int, rng: np.random.Generator) -> list[int]:
    """First ``budget`` word pieces."""
    return tokenizer.wordpieces([caption])[0][:budget]


def random_tokens(caption: str, tokenizer, budget: int, rng: np.random.Generator) -> list[int]:
    """``budget`` word pieces chosen without replacement, in their original order."""
    pieces = tokenizer.wordpieces([caption])[0]
    if len(pieces) <= budget:
        return pieces
    keep = np.sort(rng.choice(len(pieces), size=budget, replace=False))
    return [pieces[i] for i in keep]


def block(caption: str, tokenizer, budget: int, rng: np.random.Generator) -> list[int]:
    """``budget`` consecutive word pieces starting at a uniform position in ``[0, n - budget]``."""
    pieces = tokenizer.wordpieces([caption])[0]
    if len(pieces) <= budget:
        return pieces
    start = int(rng.integers(0, len(pieces) - budget + 1))
    return pieces[start:start + budget]


def subcaption(caption: str, tokenizer, budget: int, rng: np.random.Generator) -> list[int]:
    """Word pieces of one uniformly chosen sentence (``budget`` unused: the encoder truncates)."""
    sentences = split_sentences(caption)
    if not sentences:
        raise NoSentenceError(f"no sentence in caption {caption[:80]!r}")
    return tokenizer.wordpieces([sentences[int(rng.integers(len(sentences)))]])[0]


def full(caption: str, tokenizer, budget: int, rng: np.random.Generator) -> list[int]:
    """Every word piece (the encoder truncates to its length)."""
    return tokenizer.wordpieces([caption])[0]


Strategy = Callable[[str, object, int, np.random.Generator], list]

STRATEGIES: dict[str, Strategy] = {
    "truncate": truncate,
    "random": random_tokens,
    "block": block,
    "subcaption": subcaption,
    "full": full,
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered under ``name`` (error lists the valid names)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown caption sampling strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
