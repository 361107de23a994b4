"""The CLIPS ("clips" mode) text tokenizer: bert-base-uncased WordPiece with CLIPS's own packing.

Word pieces come from the ``tokenizers`` Rust library (BERT normaliser: clean text, split Chinese
characters, lower-case, strip accents; BERT pre-tokeniser; WordPiece with ``[UNK]``). No
post-processor is attached: the special ids are placed by :meth:`CLIPSTokenizer.pack` and
:meth:`CLIPSTokenizer.pack_targets`, which is what makes this the CLIPS layout and not BERT's:

- encoder row (``context_length`` = 80 ids): ``[bos] + pieces + [eos]`` padded with 0 or cut to 79
  ids (on overflow the 79th id becomes ``[eos]``), then ``[CLS]`` at the last position (79), which
  the text tower pools.
- decoder target (``target_length`` = 128 ids): ``[bos] + pieces + [eos]`` padded with 0 or cut to
  128 ids (on overflow the last id becomes ``[eos]``).

``[bos]``/``[eos]`` are the vocab entries ``[unused0]``/``[unused1]`` (ids 1 and 2).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from .io import atomic_write_text

logger = logging.getLogger(__name__)

PAD_ID: int = 0
BOS_ID: int = 1
EOS_ID: int = 2
UNK_ID: int = 100
CLS_ID: int = 101

# Entries the packing code relies on: id -> token expected in the vocab file.
_REQUIRED_ENTRIES = {PAD_ID: "[PAD]", BOS_ID: "[unused0]", EOS_ID: "[unused1]", UNK_ID: "[UNK]", CLS_ID: "[CLS]"}
_CONFIG_NAME = "tokenizer_config.json"
_VOCAB_NAME = "vocab.txt"
_HF_TOKENIZER_NAME = "tokenizer.json"
# Shipped as package data (Apache-2.0, see the NOTICE.md beside it): no download, no extra package.
PACKAGED_VOCAB = Path(__file__).parent / "vocab" / "bert-base-uncased" / _VOCAB_NAME


class CLIPSTokenizer:
    """bert-base-uncased WordPiece tokenizer producing CLIPS encoder rows and captioner targets.

    Args:
        vocab_file: a bert-base-uncased style ``vocab.txt`` (one token per line, line number = id).
        context_length: encoder row length (80 for every released CLIPS model).
        target_length: captioner target length (128).

    Calling the tokenizer on a string or a list of strings returns a ``LongTensor [B,
    context_length]``; :meth:`encode_targets` returns ``[B, target_length]``. Literal special
    strings in the text (e.g. ``"[CLS]"``) are tokenized as ordinary text, so captions can never
    inject control ids.
    """

    def __init__(self, vocab_file: str | Path, context_length: int = 80, target_length: int = 128) -> None:
        self._init(_read_vocab_txt(Path(vocab_file)), str(vocab_file), context_length, target_length)

    @classmethod
    def from_vocab(
        cls, vocab: Sequence[str], source: str = "<vocab>", context_length: int = 80, target_length: int = 128
    ) -> "CLIPSTokenizer":
        """Build from an in-memory token list (index = id); ``source`` names it in error messages."""
        self = cls.__new__(cls)
        self._init(list(vocab), source, context_length, target_length)
        return self

    def _init(self, vocab: list[str], source: str, context_length: int, target_length: int) -> None:
        _validate_vocab(vocab, source)
        # [bos], at least one piece slot, [eos], [CLS] / [bos], [eos]: anything shorter is meaningless.
        if int(context_length) < 3:
            raise ValueError(f"context_length must be >= 3 ([bos], [eos], [CLS]); got {context_length}")
        if int(target_length) < 2:
            raise ValueError(f"target_length must be >= 2 ([bos], [eos]); got {target_length}")
        self.context_length = int(context_length)
        self.target_length = int(target_length)
        self.source = source
        self._itos = vocab
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # BERT's decoder: glue '##' pieces to the previous one and tidy spaces before punctuation.
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        self._tok = tok

    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        """Entries in the vocab (30522 for bert-base-uncased; the model's embedding table may be larger)."""
        return len(self._itos)

    def wordpieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text, without any special token (``len(texts)`` lists)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def pack(self, pieces: Sequence[Sequence[int]]) -> torch.LongTensor:
        """Encoder rows ``LongTensor [B, context_length]``: ``[bos] pieces [eos] 0... [CLS]``."""
        rows = _pack(pieces, self.context_length - 1, self.context_length)
        rows[:, -1] = CLS_ID
        return torch.from_numpy(rows)

    def pack_targets(self, pieces: Sequence[Sequence[int]]) -> torch.LongTensor:
        """Captioner targets ``LongTensor [B, target_length]``: ``[bos] pieces [eos] 0...``."""
        return torch.from_numpy(_pack(pieces, self.target_length, self.target_length))

    def __call__(self, texts: str | Sequence[str]) -> torch.LongTensor:
        """Encoder rows ``LongTensor [B, context_length]`` (a single string gives ``[1, L]``)."""
        return self.pack(self.wordpieces(texts))

    def encode_targets(self, texts: str | Sequence[str]) -> torch.LongTensor:
        """Captioner targets ``LongTensor [B, target_length]`` (a single string gives ``[1, T]``)."""
        return self.pack_targets(self.wordpieces(texts))

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one row of ids (``[L]``): pad/bos/[CLS] dropped, stops at the first [eos].

        Ids outside the vocab (the embedding/logit table has 32000 rows for 30522 entries) are
        skipped. '##' pieces are joined to the previous piece as BERT's decoder does.
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode expects one row of ids, got shape {tuple(ids.shape)}; use batch_decode")
            ids = ids.tolist()
        tokens = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID, CLS_ID) or not 0 <= i < len(self._itos):
                continue
            tokens.append(self._itos[i])
        return self._tok.decoder.decode(tokens)

    def batch_decode(self, rows: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        """Texts of ``[B, L]`` rows (a 2-D tensor/array or a list of id sequences)."""
        return [self.decode(r) for r in rows]

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path) -> None:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` into ``directory`` (atomic writes)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / _VOCAB_NAME, "".join(t + "\n" for t in self._itos))
        config = {
            "mode": "clips",
            "context_length": self.context_length,
            "target_length": self.target_length,
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "cls_id": CLS_ID,
            "lowercase": True,
        }
        atomic_write_text(directory / _CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    def __repr__(self) -> str:
        return (
            f"CLIPSTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
            f"target_length={self.target_length}, source={self.source!r})"
        )


def _pack(pieces: Sequence[Sequence[int]], max_len: int, width: int) -> np.ndarray:
    """``[bos] + pieces + [eos]`` cut to ``max_len`` ids (last forced to [eos]) in ``[B, width]`` zeros.

    Vectorised: the kept pieces of all rows are flattened once and scattered with one fancy index.
    """
    n = len(pieces)
    body = max_len - 2  # piece slots between [bos] and [eos]
    keep = np.fromiter((min(len(p), body) for p in pieces), dtype=np.int64, count=n)
    total = int(keep.sum())
    flat = np.fromiter(
        itertools.chain.from_iterable(p[:k] for p, k in zip(pieces, keep.tolist())), dtype=np.int64, count=total
    )
    out = np.zeros((n, width), dtype=np.int64)
    out[:, 0] = BOS_ID
    row = np.repeat(np.arange(n), keep)
    starts = np.cumsum(keep) - keep
    col = np.arange(total) - np.repeat(starts, keep) + 1
    out[row, col] = flat
    out[np.arange(n), keep + 1] = EOS_ID
    return out


# ---------------------------------------------------------------------- vocab files
def _read_vocab_txt(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"vocab file not found: {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")  # not splitlines(): it would also split on rare unicode separators
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _vocab_from_hf_json(path: Path) -> list[str]:
    """Token list (index = id) of an HF ``tokenizer.json`` whose model is WordPiece."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read HF tokenizer.json ({e})") from e
    model = data.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(f"{path}: tokenizer model is {model.get('type')!r}, CLIPS needs a WordPiece (BERT) vocab")
    mapping: dict[str, int] = model.get("vocab") or {}
    vocab = [None] * len(mapping)
    for tok, idx in mapping.items():
        if not 0 <= idx < len(vocab) or vocab[idx] is not None:
            raise ValueError(f"{path}: WordPiece vocab ids are not a contiguous 0..{len(vocab) - 1} range (at {tok!r})")
        vocab[idx] = tok
    norm = data.get("normalizer") or {}
    if norm.get("type") == "BertNormalizer" and norm.get("lowercase") is False:
        logger.warning("%s: tokenizer is cased; CLIPS always lower-cases (bert-base-uncased)", path)
    return vocab


def _validate_vocab(vocab: list[str], source: str) -> None:
    problems = []
    for idx, want in _REQUIRED_ENTRIES.items():
        got = vocab[idx] if idx < len(vocab) else "<missing: vocab has only %d entries>" % len(vocab)
        if got != want:
            problems.append(f"id {idx} should be {want!r} but is {got!r}")
    if problems:
        raise ValueError(f"{source}: not a bert-base-uncased style vocab: " + "; ".join(problems))
    if len(set(vocab)) != len(vocab):
        seen: dict[str, int] = {}
        for i, t in enumerate(vocab):
            if t in seen:
                raise ValueError(f"{source}: duplicate token {t!r} at ids {seen[t]} and {i}")
            seen[t] = i


# ---------------------------------------------------------------------- loading
def default_vocab_path() -> Path:
    """The bert-base-uncased ``vocab.txt`` to use when none is given.

    ``$CLIPS_VOCAB`` (a vocab.txt, or a folder holding one) when set, else the copy shipped inside
    this package (:data:`PACKAGED_VOCAB`).
    """
    env = os.environ.get("CLIPS_VOCAB")
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            p = p / _VOCAB_NAME
        if not p.is_file():
            raise FileNotFoundError(f"$CLIPS_VOCAB points to {env!r}, which is not a vocab.txt file")
        return p
    if not PACKAGED_VOCAB.is_file():  # only a broken install (package data left out) gets here
        raise FileNotFoundError(f"the packaged bert-base-uncased vocab is missing ({PACKAGED_VOCAB}): reinstall "
                                f"clips-toolkit, or pass a vocab.txt / HF tokenizer folder to load_tokenizer")
    return PACKAGED_VOCAB


def load_tokenizer(path_or_vocab: str | Path | None = None, **overrides: Any) -> CLIPSTokenizer:
    """Load a :class:`CLIPSTokenizer`.

    ``path_or_vocab`` may be: ``None`` (:func:`default_vocab_path`); a ``vocab.txt`` file; an HF
    ``tokenizer.json`` file; a folder holding ``vocab.txt`` (plus the ``tokenizer_config.json``
    written by :meth:`CLIPSTokenizer.save`, whose lengths are used); a folder holding only an HF
    WordPiece ``tokenizer.json``; or any other folder (e.g. an official open_clip checkpoint,
    whose tokenizer is bert-base-uncased), which falls back to the default vocab.
    ``overrides`` (``context_length``, ``target_length``) win over a saved config.
    """
    unknown = set(overrides) - {"context_length", "target_length"}
    if unknown:
        raise TypeError(f"load_tokenizer got unexpected overrides {sorted(unknown)}")
    lengths: dict[str, int] = {}
    if path_or_vocab is None:
        vocab_path = default_vocab_path()
        return _build(_read_vocab_txt(vocab_path), str(vocab_path), lengths, overrides)
    path = Path(path_or_vocab).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    if path.is_file():
        if path.suffix == ".json":
            return _build(_vocab_from_hf_json(path), str(path), lengths, overrides)
        return _build(_read_vocab_txt(path), str(path), lengths, overrides)

    lengths = _saved_lengths(path / _CONFIG_NAME)
    if (path / _VOCAB_NAME).is_file():
        return _build(_read_vocab_txt(path / _VOCAB_NAME), str(path / _VOCAB_NAME), lengths, overrides)
    if (path / _HF_TOKENIZER_NAME).is_file():
        hf_json = path / _HF_TOKENIZER_NAME
        return _build(_vocab_from_hf_json(hf_json), str(hf_json), lengths, overrides)
    _check_open_clip_tokenizer(path)
    vocab_path = default_vocab_path()
    logger.info("%s holds no vocab.txt or tokenizer.json; using the bert-base-uncased vocab at %s", path, vocab_path)
    return _build(_read_vocab_txt(vocab_path), str(vocab_path), lengths, overrides)


def _build(vocab: list[str], source: str, lengths: dict[str, int], overrides: dict[str, Any]) -> CLIPSTokenizer:
    kw = {**lengths, **{k: v for k, v in overrides.items() if v is not None}}
    return CLIPSTokenizer.from_vocab(vocab, source, **kw)


def _saved_lengths(config_path: Path) -> dict[str, int]:
    """Lengths from a ``tokenizer_config.json`` written by :meth:`CLIPSTokenizer.save`.

    A config without a ``mode`` key is an HF tokenizer config (its ``model_max_length`` is BERT's
    512, not ours) and is ignored; one with a different mode or different special ids is an error.
    """
    if not config_path.is_file():
        return {}
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: cannot read tokenizer config ({e})") from e
    if "mode" not in cfg:
        return {}
    if cfg["mode"] != "clips":
        raise ValueError(f"{config_path}: tokenizer mode is {cfg['mode']!r}; only 'clips' is supported")
    want = {"pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "cls_id": CLS_ID}
    bad = {k: cfg[k] for k, v in want.items() if k in cfg and cfg[k] != v}
    if bad:
        raise ValueError(f"{config_path}: special ids {bad} differ from the CLIPS layout {want}")
    return {k: int(cfg[k]) for k in ("context_length", "target_length") if k in cfg}


def _check_open_clip_tokenizer(folder: Path) -> None:
    """Warn when an open_clip config names a tokenizer other than bert-base-uncased."""
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        return
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    name = ((cfg.get("model_cfg") or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if name and "bert-base-uncased" not in name:
        logger.warning("%s names tokenizer %r; CLIPS uses bert-base-uncased", cfg_path, name)


def check_tokenizer_fits(tokenizer: CLIPSTokenizer, config, source: str = "tokenizer") -> None:
    """Raise ``ValueError`` when ``tokenizer`` cannot feed a model of ``config`` (a
    :class:`~clips_tower.config.CLIPSConfig`): more token ids than the text embedding table, encoder
    rows of another length than the text context, or (with a captioner) targets of another length
    than its queries. ``source`` names the tokenizer (its folder or file) in the message."""
    problems = []
    if tokenizer.vocab_size > config.text.vocab_size:
        problems.append(f"vocab size {tokenizer.vocab_size} > model text.vocab_size {config.text.vocab_size}")
    if tokenizer.context_length != config.text.context_length:
        problems.append(f"context_length {tokenizer.context_length} != model text.context_length "
                        f"{config.text.context_length}")
    if config.captioner is not None and tokenizer.target_length != config.captioner.num_queries:
        problems.append(f"target_length {tokenizer.target_length} != model captioner.num_queries "
                        f"{config.captioner.num_queries}")
    if problems:
        raise ValueError(f"{source} does not match model {config.name!r}: " + "; ".join(problems))
