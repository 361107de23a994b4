"""Image transforms (no torchvision): eval squash-resize, train augmentation, HSV maths."""

from __future__ import annotations

import colorsys
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clips_tower.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    hsv_to_rgb,
    image_transform,
    pil_to_tensor,
    rgb_to_hsv,
    sample_crop,
)

RES = 24
MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


def random_image(w=53, h=37, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def normalise_by_hand(img: Image.Image) -> torch.Tensor:
    """/255 then (x - mean) / std in float32, channels first."""
    a = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(((a - MEAN) / STD).transpose(2, 0, 1).copy())


def unnormalise(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(1, 2, 0) * STD + MEAN


# ---------------------------------------------------------------- eval
def test_eval_matches_hand_computation():
    img = random_image()
    out = EvalTransform(RES)(img)
    assert out.shape == (3, RES, RES) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, normalise_by_hand(img.resize((RES, RES), Image.Resampling.BILINEAR)))


def _modes() -> dict[str, Image.Image]:
    rgb = random_image(19, 11, seed=1)
    pal = rgb.quantize(16)
    pal.info["transparency"] = 0
    u16 = np.random.default_rng(2).integers(0, 65536, (11, 19), dtype=np.uint16)
    return {
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
        "LA": rgb.convert("LA"),
        "P+transparency": pal,
        "RGBA": rgb.convert("RGBA"),
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "I;16": Image.fromarray(u16),
        "I": Image.fromarray(u16.astype(np.int32)),
        "F": Image.fromarray(np.random.default_rng(3).uniform(0, 255, (11, 19)).astype(np.float32)),
        "1x1": Image.new("RGB", (1, 1), (200, 10, 30)),
    }


@pytest.mark.parametrize("name", list(_modes()))
def test_eval_any_mode(name):
    img = _modes()[name]
    out = EvalTransform(RES)(img)
    assert out.shape == (3, RES, RES) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    t = pil_to_tensor(img)
    assert t.shape == (3, img.height, img.width) and 0 <= t.min() and t.max() <= 1


def test_sixteen_bit_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((4, 4), 100 * 257, dtype=np.uint16))
    assert img.mode.startswith("I;16")
    assert torch.allclose(pil_to_tensor(img), torch.full((3, 4, 4), 100 / 255))


def test_pil_to_tensor_values():
    img = Image.new("RGB", (2, 1), (255, 0, 51))
    assert pil_to_tensor(img)[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_image_transform_from_config():
    cfg = SimpleNamespace(
        vision=SimpleNamespace(image_size=RES),
        preprocess=SimpleNamespace(mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear", resize_mode="squash"),
    )
    img = random_image()
    a = np.asarray(img.resize((RES, RES), Image.Resampling.BILINEAR), np.float32) / 255
    want = torch.from_numpy((a - 0.5) / 0.25).permute(2, 0, 1)
    assert torch.allclose(image_transform(cfg)(img), want, atol=1e-6)
    train = image_transform(cfg, train=True, p_gray=1.0)
    assert isinstance(train, TrainTransform) and train.p_gray == 1.0
    assert train(img, np.random.default_rng(0)).shape == (3, RES, RES)
    with pytest.raises(TypeError):
        image_transform(cfg, p_gray=1.0)


def test_image_transform_real_config():
    registry = pytest.importorskip("clips_tower.registry")
    cfg = registry.get_model_config("clips-tiny")
    out = image_transform(cfg)(random_image())
    assert out.shape == (3, cfg.vision.image_size, cfg.vision.image_size)


def test_shortest_mode():
    img = random_image(60, 30)
    out = EvalTransform(RES, resize_mode="shortest")(img)
    # torchvision Resize(24) on 60x30 -> 48x24, CenterCrop(24) -> left 12
    want = img.resize((48, 24), Image.Resampling.BILINEAR).crop((12, 0, 36, 24))
    assert torch.equal(out, normalise_by_hand(want))


# ---------------------------------------------------------------- train
def test_train_reproducible_from_seed():
    t = TrainTransform(RES)
    img = random_image(64, 48)
    a = t(img, np.random.default_rng(123))
    assert a.shape == (3, RES, RES) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, t(img, np.random.default_rng(123)))
    assert torch.equal(a, t(img, 123))
    assert not torch.equal(a, t(img, np.random.default_rng(124)))
    assert t(img).shape == (3, RES, RES)  # rng=None: fresh entropy


def test_crop_sampler_bounds():
    rng = np.random.default_rng(0)
    W, H = 400, 300
    areas, aspects = [], []
    for _ in range(3000):
        top, left, h, w = sample_crop(W, H, rng)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        areas.append(h * w / (W * H))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    # Rounding w and h to integers moves area/aspect by well under 1% at this size.
    assert areas.min() >= 0.4 * 0.99 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.99 and aspects.max() <= 4 / 3 * 1.01
    # The draws actually cover the range (uniform area, log-uniform aspect).
    assert areas.min() < 0.45 and areas.max() > 0.9
    assert aspects.min() < 0.8 and aspects.max() > 1.25
    # On a square image rejections are symmetric, so log-aspect is centred on 0 (a landscape
    # image rejects more tall crops, as torchvision does).
    sq = np.array([(lambda b: b[3] / b[2])(sample_crop(300, 300, rng)) for _ in range(3000)])
    assert abs(np.log(sq).mean()) < 0.02


def test_crop_sampler_fallback():
    # 1000x50: no 40-100% crop fits the 3/4..4/3 aspect -> centre crop clamped to aspect 4/3.
    assert sample_crop(1000, 50, np.random.default_rng(0)) == (0, 466, 50, 67)
    # 50x1000: clamped to aspect 3/4 -> w = 50, h = round(50 / 0.75) = 67.
    assert sample_crop(50, 1000, np.random.default_rng(0)) == (466, 0, 67, 50)


def test_no_jitter_equals_crop_resize_normalise():
    t = TrainTransform(RES, brightness=0, contrast=0, saturation=0, hue=0, p_jitter=1.0, p_gray=0.0)
    img = random_image(70, 45)
    for seed in range(5):
        out = t(img, np.random.default_rng(seed))
        top, left, h, w = sample_crop(70, 45, np.random.default_rng(seed))  # crop is drawn first
        want = img.crop((left, top, left + w, top + h)).resize((RES, RES), Image.Resampling.BILINEAR)
        assert torch.equal(out, normalise_by_hand(want))


def test_grayscale_has_equal_channels():
    t = TrainTransform(RES, p_jitter=0.0, p_gray=1.0)
    a = unnormalise(t(random_image(), np.random.default_rng(0)))
    np.testing.assert_allclose(a[..., 0], a[..., 1], atol=1e-5)
    np.testing.assert_allclose(a[..., 0], a[..., 2], atol=1e-5)


def test_jitter_changes_image_and_stays_in_range():
    t = TrainTransform(RES, p_jitter=1.0, p_gray=0.0)
    img = random_image()
    rng = np.random.default_rng(5)
    a = np.asarray(img.resize((RES, RES)), np.float32) / 255
    j = t.jitter(a, rng)
    assert j.shape == a.shape and j.dtype == np.float32
    assert 0 <= j.min() and j.max() <= 1 and not np.allclose(j, a)


def test_hue_only_jitter_rotates_hue():
    t = TrainTransform(RES, brightness=0, contrast=0, saturation=0, hue=0.1)
    red = np.zeros((4, 4, 3), np.float32)
    red[..., 0] = 1
    for seed in range(10):
        hsv = rgb_to_hsv(t.jitter(red, np.random.default_rng(seed)))
        shift = (hsv[..., 0] + 0.5) % 1 - 0.5  # red is hue 0; signed shift
        assert np.all(np.abs(shift) <= 0.1 + 1e-6)
        np.testing.assert_allclose(hsv[..., 1:], 1, atol=1e-6)


def test_bad_parameters():
    with pytest.raises(ValueError):
        TrainTransform(RES, scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        TrainTransform(RES, hue=0.6)
    with pytest.raises(ValueError):
        EvalTransform(RES, interpolation="magic")
    with pytest.raises(ValueError):
        EvalTransform(RES, resize_mode="longest")


# ---------------------------------------------------------------- HSV
def _pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    px = rng.random((2000, 3)).astype(np.float32)
    special = np.array(
        [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1],
         [0.2, 0.2, 0.7], [0.7, 0.7, 0.2], [0.3, 0.6, 0.6]],
        dtype=np.float32,
    )  # fmt: skip
    return np.concatenate([px, special])


def test_hsv_round_trip():
    px = _pixels()
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(px)), px, atol=1e-5)
    img = np.random.default_rng(1).random((8, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-5)


def test_hsv_matches_colorsys():
    px = _pixels()
    ours = rgb_to_hsv(px)
    ref = np.array([colorsys.rgb_to_hsv(*map(float, p)) for p in px])
    dh = np.abs(ours[:, 0] - ref[:, 0])
    np.testing.assert_allclose(np.minimum(dh, 1 - dh), 0, atol=1e-5)  # hue is circular
    np.testing.assert_allclose(ours[:, 1:], ref[:, 1:], atol=1e-5)
    back = np.array([colorsys.hsv_to_rgb(*map(float, p)) for p in ref])
    np.testing.assert_allclose(hsv_to_rgb(ref.astype(np.float32)), back, atol=1e-5)
    assert math.isclose(float(rgb_to_hsv(np.array([0, 1, 0], np.float32))[0]), 1 / 3, abs_tol=1e-6)
