"""A stock transformers image processor that reproduces CLIPS' eval preprocessing.

CLIPS evaluates with a "squash" resize to ``res x res`` (PIL bilinear), ``/255`` and ImageNet
mean/std (``clips_tower.image_transform(config, train=False)``). transformers'
``CLIPImageProcessor`` does the same with ``size = crop_size = res`` and no centre crop. We build
the PIL backend explicitly (``CLIPImageProcessorPil``): its resize is PIL's, so it matches the
CLIPS transform to float rounding. It is saved as ``"image_processor_type": "CLIPImageProcessor"``,
so any transformers >= 5 loads it; where torchvision is installed ``AutoImageProcessor`` picks the
torchvision backend (antialiased tensor resize, slightly different pixels) unless
``backend="pil"`` is passed.
"""

from __future__ import annotations

from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from clips_tower.config import CLIPSConfig

# CLIPS interpolation names -> PIL resampling codes (PIL.Image.Resampling values, as HF stores them).
_RESAMPLE_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _squash(res: int) -> dict:
    return {"size": {"height": res, "width": res}, "do_center_crop": False}


def _shortest(res: int) -> dict:
    return {"size": {"shortest_edge": res}, "do_center_crop": True}


# CLIPS resize modes (config.preprocess.resize_mode) -> image-processor settings.
_RESIZE_MODES = {"squash": _squash, "shortest": _shortest}


def clips_image_processor(config: CLIPSConfig) -> CLIPImageProcessorPil:
    """A ``CLIPImageProcessorPil`` equal to ``clips_tower.image_transform(config, train=False)``.

    Takes a :class:`CLIPSConfig` (reads ``vision.image_size`` and ``preprocess``); the processor
    maps PIL images to ``pixel_values`` ``[B, 3, res, res]`` float32.
    """
    pp, res = config.preprocess, config.vision.image_size
    try:
        resize = _RESIZE_MODES[pp.resize_mode](res)
        resample = _RESAMPLE_CODES[pp.interpolation.lower()]
    except KeyError as e:
        raise ValueError(f"{config.name}: preprocess setting {e.args[0]!r} has no image-processor equivalent") from None
    return CLIPImageProcessorPil(
        do_resize=True,
        resample=resample,
        crop_size={"height": res, "width": res},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(pp.mean),
        image_std=list(pp.std),
        do_convert_rgb=True,
        **resize,
    )
