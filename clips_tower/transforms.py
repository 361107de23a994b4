"""Image transforms for CLIPS without torchvision (PIL + numpy + torch only).

- :class:`EvalTransform`: RGB conversion, "squash" resize to ``res x res`` (PIL bilinear, which is
  what torchvision's ``Resize((res, res))`` does on PIL images), ``/255``, mean/std normalisation.
- :class:`TrainTransform`: torchvision-style ``RandomResizedCrop(scale=(0.4, 1))``, colour jitter
  (applied with probability 0.8, random order) and random grayscale (p 0.2), then normalisation.
  All randomness comes from a ``numpy.random.Generator`` passed per call, so a sample is
  reproducible from a seed in any data-loader worker.

Pixel maths runs on float32 ``[H, W, 3]`` numpy arrays in ``[0, 1]``; the result is converted to a
``FloatTensor [3, H, W]`` at the end.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .config import IMAGENET_MEAN, IMAGENET_STD

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale and PIL's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _resample(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; choose from {sorted(_RESAMPLE)}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> ``RGB``.

    Palette images with transparency go through RGBA (PIL warns otherwise). 16/32-bit integer and
    float grayscale images are rescaled to 8 bits first, because PIL's own conversion clips them
    at 255 and would turn most 16-bit images white.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
            a = a / 257.0  # 16-bit range 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _to_array(img: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` float32 in ``[0, 1]`` of an RGB image."""
    return np.asarray(img, dtype=np.float32) / 255


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> ``FloatTensor [3, H, W]`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(_to_array(to_rgb(img)).transpose(2, 0, 1)))


class _Normalize:
    """``[H, W, 3]`` float array in [0, 1] -> normalised ``FloatTensor [3, H, W]``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0; got {mean}, {std}")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, a: np.ndarray) -> torch.Tensor:
        a = (a - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class EvalTransform:
    """Eval preprocessing: PIL image (any mode) -> ``FloatTensor [3, image_size, image_size]``.

    ``resize_mode="squash"`` (CLIPS default) resizes straight to ``res x res`` ignoring the aspect
    ratio; ``"shortest"`` resizes the short side to ``res`` then centre-crops (torchvision
    ``Resize(res) + CenterCrop(res)``), offered for other open_clip preprocess configs.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        resize_mode: str = "squash",
    ) -> None:
        if resize_mode not in ("squash", "shortest"):
            raise ValueError(f"unsupported resize_mode {resize_mode!r}; use 'squash' or 'shortest'")
        self.image_size = int(image_size)
        self.resample = _resample(interpolation)
        self.resize_mode = resize_mode
        self.normalize = _Normalize(mean, std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img, res = to_rgb(img), self.image_size
        if self.resize_mode == "squash":
            img = img.resize((res, res), self.resample)
        else:
            w, h = img.size
            # torchvision: short side -> res, long side -> int(res * long / short).
            nw, nh = (res, int(res * h / w)) if w <= h else (int(res * w / h), res)
            img = img.resize((nw, nh), self.resample)
            top, left = int(round((nh - res) / 2.0)), int(round((nw - res) / 2.0))
            img = img.crop((left, top, left + res, top + res))
        return self.normalize(_to_array(img))


def sample_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Random-resized-crop box ``(top, left, h, w)`` with torchvision's ``get_params`` semantics.

    Area fraction is uniform in ``scale``, aspect ``w/h`` log-uniform in ``ratio``; after
    ``attempts`` boxes that do not fit, a centre crop clamped to ``ratio`` is returned.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in [0, 1] -> ``[..., 3]`` HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = np.moveaxis(rgb, -1, 0).copy()  # contiguous planes: ~3x faster ufuncs than strided views
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    delta = maxc - minc
    gray = delta == 0
    # Divide by 1 where the pixel is gray (or black) so no NaN appears; s and h are 0 there.
    s = delta / np.where(gray, 1, maxc)
    d = np.where(gray, 1, delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = np.where(gray, 0, (h / 6) % 1.0)
    return np.stack([h, s, maxc], -1).astype(rgb.dtype, copy=False)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``[..., 3]`` HSV in [0, 1] -> ``[..., 3]`` RGB in [0, 1] (inverse of :func:`rgb_to_hsv`)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6)
    f = h * 6 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1 - s), 0, 1)
    q = np.clip(v * (1 - s * f), 0, 1)
    t = np.clip(v * (1 - s * (1 - f)), 0, 1)
    # Sector i of the hue circle picks which of (v, q, p, t) lands in each channel.
    choices = np.stack([v, q, p, t], -1)
    table = np.array([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])
    return np.take_along_axis(choices, table[i], -1).astype(hsv.dtype, copy=False)


def _gray(a: np.ndarray) -> np.ndarray:
    """Luma ``[H, W, 1]`` of ``[H, W, 3]``."""
    return (a @ _LUMA)[..., None]


def _blend(a: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    return np.clip(factor * a + (1 - factor) * other, 0, 1)


class TrainTransform:
    """Training augmentation: ``(PIL image, rng) -> FloatTensor [3, image_size, image_size]``.

    RandomResizedCrop(``scale``, ``ratio``) -> resize to ``res`` -> with probability ``p_jitter``
    ColorJitter(``brightness``, ``contrast``, ``saturation``, ``hue``; the four in random order, as
    torchvision) -> grayscale with probability ``p_gray`` -> normalise. ``rng`` is a
    ``numpy.random.Generator`` (or an int seed); ``None`` uses fresh OS entropy.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
        p_jitter: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        p_gray: float = 0.2,
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; got {scale}, {ratio}")
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError("brightness/contrast/saturation must be >= 0 and hue in [0, 0.5]")
        if not (0 <= p_jitter <= 1 and 0 <= p_gray <= 1):
            raise ValueError(f"probabilities must be in [0, 1]; got p_jitter={p_jitter}, p_gray={p_gray}")
        self.image_size = int(image_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.resample = _resample(interpolation)
        self.p_jitter, self.p_gray = p_jitter, p_gray
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.normalize = _Normalize(mean, std)

    def crop_params(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` for an image of PIL ``size`` ``(W, H)``; see :func:`sample_crop`."""
        return sample_crop(size[0], size[1], rng, self.scale, self.ratio)

    def jitter(self, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour jitter of ``[H, W, 3]`` in [0, 1]: the four adjustments in a random order.

        Factors are always drawn (a strength of 0 draws the identity factor) so the random stream
        does not depend on which strengths are zero.
        """
        order = rng.permutation(4)
        b = rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = rng.uniform(-self.hue, self.hue)
        for k in order:
            if k == 0 and self.brightness:
                a = np.clip(a * b, 0, 1)
            elif k == 1 and self.contrast:
                a = _blend(a, float(_gray(a).mean()), c)
            elif k == 2 and self.saturation:
                a = _blend(a, _gray(a), s)
            elif k == 3 and self.hue:
                hsv = rgb_to_hsv(a)
                hsv[..., 0] = (hsv[..., 0] + h) % 1.0
                a = hsv_to_rgb(hsv)
        return a.astype(np.float32, copy=False)

    def __call__(self, img: Image.Image, rng: np.random.Generator | int | None = None) -> torch.Tensor:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        img = to_rgb(img)
        top, left, h, w = self.crop_params(img.size, rng)
        # Crop then resize (not resize(box=...)): PIL's box resampling reads pixels outside the box.
        img = img.crop((left, top, left + w, top + h)).resize((self.image_size,) * 2, self.resample)
        a = _to_array(img)
        if rng.random() < self.p_jitter:
            a = self.jitter(a, rng)
        if rng.random() < self.p_gray:
            a = np.repeat(_gray(a), 3, axis=-1)
        return self.normalize(a)


def image_transform(config: Any, train: bool = False, **aug_overrides: Any) -> Callable:
    """The eval (or, with ``train=True``, training) transform for a ``CLIPSConfig``.

    Reads ``config.vision.image_size`` and ``config.preprocess`` (``mean``, ``std``,
    ``interpolation``, ``resize_mode``; ImageNet/bilinear/squash when absent). ``aug_overrides``
    are :class:`TrainTransform` arguments (``scale``, ``p_jitter``, ...); train only.
    """
    res = config.vision.image_size
    pp = getattr(config, "preprocess", None)
    mean = tuple(getattr(pp, "mean", IMAGENET_MEAN))
    std = tuple(getattr(pp, "std", IMAGENET_STD))
    interpolation = getattr(pp, "interpolation", "bilinear")
    if train:
        return TrainTransform(res, mean, std, interpolation=interpolation, **aug_overrides)
    if aug_overrides:
        raise TypeError(f"augmentation overrides {sorted(aug_overrides)} only apply with train=True")
    return EvalTransform(res, mean, std, interpolation, getattr(pp, "resize_mode", "squash"))
