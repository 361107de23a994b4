"""Fault injection, data side: every kind of bad or unusual input is either used correctly or skipped
and counted by reason, and a training run over such data finishes with the counts in its summary.

(Corrupt/truncated image bytes, truncated archives, missing/empty/non-string captions, non-UTF8
metadata and an all-bad dataset are covered in ``test_pretrain_data.py``.)
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import clips_tower
from pretrain.config import config_from_dict
from pretrain.data.decode import SampleProcessor
from pretrain.data.errors import BadSample
from pretrain.data.shards import ShardWriter, json_bytes
from pretrain.data.sources import RawRecord, open_source
from pretrain.recipes import build_recipe
from pretrain.synthetic import encode_image, generate_sample
from pretrain.trainer import train
from helpers.runs import run_config

META = {"org_caption": "a small red square", "re_caption": "A red square. It is small."}


@pytest.fixture(scope="module")
def tok():
    return clips_tower.load_tokenizer()


@pytest.fixture(scope="module")
def eval_tf():
    return clips_tower.image_transform(clips_tower.get_model_config("clips-tiny"), train=False)


@pytest.fixture(scope="module")
def processor(tok, eval_tf):
    """Default caption limit (10000 characters), eval preprocessing (deterministic pixels)."""
    return SampleProcessor(build_recipe("clips"), tok, lambda img, rng: eval_tf(img), seed=0, max_caption_chars=10000)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width x height`` black pixels: a few kB on disk, ``width*height``
    pixels once decoded (written chunk by chunk, never holding the image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _reason(processor, image: bytes, meta=META) -> str:
    with pytest.raises(BadSample) as e:
        processor(RawRecord("k", image=image, meta=meta), 0)
    return e.value.reason


# ------------------------------------------------------------------ skipped and counted
def test_zero_byte_image_is_undecodable(processor):
    assert _reason(processor, b"") == "unreadable_image"


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bomb_is_refused_before_decoding(processor, side):
    """100 M pixels (PIL would only warn, then allocate it) and 400 M pixels (PIL's own error):
    both are ``image_too_large``, decided from the header (the file is ~10-50 kB)."""
    data = _png_bomb(side, side)
    assert len(data) < 100_000 and side * side > Image.MAX_IMAGE_PIXELS
    assert _reason(processor, data) == "image_too_large"


def test_caption_of_100k_characters_is_skipped_and_limit_is_configurable(tok, eval_tf, processor):
    img = encode_image(generate_sample(0).image)
    huge = "A red square. " * 7200  # 100800 characters
    assert len(huge) > 100_000
    for field in ("org_caption", "re_caption"):
        assert _reason(processor, img, {**META, field: huge}) == "caption_too_long"
    # Just under the limit is used; without a limit even the 100k caption is used (and truncated).
    ok = processor(RawRecord("k", image=img, meta={**META, "org_caption": "x" * 9999}), 0)
    assert ok.texts["web"]
    unlimited = SampleProcessor(build_recipe("clips"), tok, lambda im, rng: eval_tf(im), seed=0, max_caption_chars=None)
    s = unlimited(RawRecord("k", image=img, meta={**META, "re_caption": huge}), 0)
    assert tok.pack_targets([s.target]).shape == (1, 128)


def test_zero_byte_and_missing_shards_are_one_unreadable_shard_each(tmp_path):
    for name in ("empty.tar", "empty.jsonl", "empty.parquet"):
        (tmp_path / name).write_bytes(b"")
    for name in ("empty.tar", "empty.jsonl", "empty.parquet", "missing.tar"):
        source = open_source(str(tmp_path / name))
        out = list(source.read(source.shards[0]))
        assert len(out) == 1 and isinstance(out[0], BadSample) and out[0].reason == "unreadable_shard", (name, out)
        assert out[0].key.endswith(name)


# ------------------------------------------------------------------ unusual but valid: used, with the right pixels
def _expected(rgb: np.ndarray, eval_tf) -> torch.Tensor:
    """The eval transform of an RGB uint8 array built independently of PIL's mode conversions."""
    return eval_tf(Image.fromarray(rgb.astype(np.uint8), "RGB"))


def test_one_pixel_image_becomes_a_constant_image(processor, eval_tf):
    s = processor(RawRecord("k", image=_png(Image.new("RGB", (1, 1), (200, 40, 10))), meta=META), 0)
    assert s.image.shape == (3, 32, 32)
    assert torch.allclose(s.image, _expected(np.full((1, 1, 3), (200, 40, 10)), eval_tf), atol=1e-5)
    assert torch.allclose(s.image, s.image[:, :1, :1].expand_as(s.image), atol=1e-5)


def test_16_bit_grayscale_is_rescaled_not_clipped(processor, eval_tf):
    v = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    s = processor(RawRecord("k", image=_png(Image.fromarray(v)), meta=META), 0)
    gray8 = np.rint(v / 257.0)
    # Reference: value / 257 -> 8 bits. Plain PIL convert("RGB") would clip all but the darkest to 255.
    assert torch.allclose(s.image, _expected(np.repeat(gray8[..., None], 3, axis=2), eval_tf), atol=1e-4)


def test_palette_with_transparency_uses_palette_colours(processor, eval_tf):
    idx = (np.arange(64).reshape(8, 8) % 3).astype(np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    img = Image.fromarray(idx, "P")
    img.putpalette(colours.flatten().tolist() + [0] * (768 - 9))
    s = processor(RawRecord("k", image=_png(img, transparency=0), meta=META), 0)  # index 0 transparent
    assert torch.allclose(s.image, _expected(colours[idx], eval_tf), atol=1e-4)


def test_cmyk_jpeg_is_converted_to_rgb(processor, eval_tf):
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG", quality=100)  # pure red ink
    s = processor(RawRecord("k", image=buf.getvalue(), meta=META), 0)
    # Red = 255 - C, green = 255 - M, blue = 255 - Y (K = 0); JPEG rounding: one grey level.
    ref = _expected(np.full((16, 16, 3), (255, 0, 0)), eval_tf)
    std = torch.tensor(clips_tower.get_model_config("clips-tiny").preprocess.std).view(3, 1, 1)
    assert ((s.image - ref).abs() * std).max() <= 2 / 255


# ------------------------------------------------------------------ a run over all of it
@pytest.mark.timeout(300)
def test_run_over_every_kind_of_bad_sample_finishes_and_reports_counts(tmp_path):
    good = [generate_sample(i, seed=4, image_size=16) for i in range(6)]
    img = encode_image(good[0].image)
    pal = Image.fromarray((np.arange(256).reshape(16, 16) % 2).astype(np.uint8), "P")
    pal.putpalette([10, 200, 30, 250, 250, 250] + [0] * 762)
    unusual = {  # valid images in unusual modes: trained on, not skipped
        "one_pixel": _png(Image.new("RGB", (1, 1), (9, 9, 9))),
        "sixteen_bit": _png(Image.fromarray(np.full((16, 16), 30000, np.uint16))),
        "palette_alpha": _png(pal, transparency=1),
    }
    bad = {  # key -> (members, reason)
        "zero_byte_image": ({"jpg": b"", "json": json_bytes(META)}, "unreadable_image"),
        "bomb": ({"png": _png_bomb(10_000, 10_000), "json": json_bytes(META)}, "image_too_large"),
        "long_caption": ({"jpg": img, "json": json_bytes({**META, "re_caption": "A cat. " * 15000})}, "caption_too_long"),
        "not_utf8": ({"jpg": img, "json": '{"org_caption": "\xe9t\xe9", "re_caption": "A."}'.encode("latin-1")}, "not_utf8"),
        "empty_json": ({"jpg": img, "json": b""}, "malformed_record"),
        "no_caption_field": ({"jpg": img, "json": json_bytes({"re_caption": "A cat."})}, "missing_caption"),
    }
    with ShardWriter(tmp_path / "data", shard_size=100) as w:
        for s in good[:3]:
            w.write(s.key, {"jpg": encode_image(s.image), "json": json_bytes({"org_caption": s.web, "re_caption": s.synthetic})})
        for key, (members, _) in bad.items():
            w.write(key, members)
        for key, data in unusual.items():
            w.write(key, {"png": data, "json": json_bytes(META)})
    summary = train(config_from_dict(run_config(tmp_path, str(tmp_path / "data"))))
    # 2 steps x 3 samples = the 3 good + 3 unusual samples (the shard is read in order): every bad one
    # lies between them, so each is counted exactly once.
    expected = {}
    for _, reason in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert summary["steps"] == 2 and summary["bad_samples"] == expected
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(metrics[-1][f"bad/{r}"] == n for r, n in expected.items())
