"""Frozen-tower feature cache for stage 1.

In projector pretraining the vision tower is frozen and images are not augmented, so the
projector's input for an image never changes: it is computed once and stored in a memory-mapped
``.npy`` file (fp16/bf16/fp32), and training reads rows instead of running the tower.

Layout of a cache folder: ``features.npy`` (``[n_images, N, D]``; bf16 stored as int16 bit
patterns, numpy has no bf16), ``index.json`` (image paths in row order, dtype, and the key that
ties the cache to one tower + preprocessing). Building writes ``features.npy.partial`` and a
``progress.json`` after every batch, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clips_tower.io import atomic_write_json

from .data import load_image

log = logging.getLogger(__name__)

FEATURES, INDEX, PROGRESS = "features.npy", "index.json", "progress.json"
# name -> (numpy storage dtype, torch dtype)
DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.int16, torch.bfloat16),
    "float32": (np.float32, torch.float32),
}


class FeatureCacheError(ValueError):
    """A cache folder is incomplete, corrupt, or was built for another tower or preprocessing."""


@contextlib.contextmanager
def _projector_bypassed(model: nn.Module) -> Iterator[None]:
    inner = model.model
    projector = inner.multi_modal_projector
    inner.multi_modal_projector = nn.Identity()
    try:
        yield
    finally:
        inner.multi_modal_projector = projector


@torch.no_grad()
def tower_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector's input for ``pixel_values [B, 3, H, W]``: ``[B, N, D]``.

    Computed by HF's own ``get_image_features`` with the projector swapped for the identity, so
    layer selection and CLS dropping are exactly what the live model does.
    """
    tower = model.model.vision_tower
    param = next(tower.parameters())
    with _projector_bypassed(model):
        feats = model.model.get_image_features(pixel_values=pixel_values.to(param.device, param.dtype)).pooler_output
    return torch.stack(list(feats))


def cache_key(model: nn.Module, image_processor: Any, image_aspect_ratio: str) -> dict:
    """What a cache depends on: tower weights (sha256), layer/strategy, preprocessing, aspect mode."""
    from .towers import full_parameters

    digest = hashlib.sha256()
    with full_parameters(model.model.vision_tower):  # under ZeRO-3 every rank must enter
        for name, tensor in sorted(model.model.vision_tower.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    cfg = model.config
    return {
        "tower_sha256": digest.hexdigest(),
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "image_processor": json.loads(image_processor.to_json_string()),
        "image_aspect_ratio": image_aspect_ratio,
    }


@dataclass
class _ImageFiles(torch.utils.data.Dataset):
    paths: Sequence[str]
    folder: Path
    image_processor: Any
    aspect: str

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.folder / self.paths[i], self.image_processor, self.aspect)


class FeatureCache:
    """Read access to a built cache: ``cache[image_path] -> Tensor [N, D]`` in the cache dtype."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        index_path = self.dir / INDEX
        if not index_path.is_file() or not (self.dir / FEATURES).is_file():
            raise FeatureCacheError(f"{self.dir}: not a complete feature cache (missing {INDEX} or {FEATURES})")
        self.index = json.loads(index_path.read_text())
        self.rows = {p: i for i, p in enumerate(self.index["images"])}
        self.torch_dtype = DTYPES[self.index["dtype"]][1]
        self._array: np.ndarray | None = None  # opened lazily, once per data-loader worker

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        """The memory-mapped ``[n_images, N, D]`` storage array."""
        if self._array is None:
            self._array = np.load(self.dir / FEATURES, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, image: str) -> torch.Tensor:
        try:
            row = self.rows[image]
        except KeyError:
            raise FeatureCacheError(f"{self.dir}: image {image!r} is not in the cache") from None
        return torch.from_numpy(np.array(self.array[row])).view(self.torch_dtype)

    def check_key(self, key: dict) -> None:
        """Raise :class:`FeatureCacheError` naming the fields where this cache's key differs."""
        diff = sorted(k for k in set(key) | set(self.index["key"]) if key.get(k) != self.index["key"].get(k))
        if diff:
            raise FeatureCacheError(f"{self.dir} was built for a different setup ({', '.join(diff)} differ); "
                                    f"delete it or point --feature_cache elsewhere")


def require_frozen_tower(model: nn.Module) -> None:
    """Raise :class:`FeatureCacheError` if any vision-tower parameter of ``model`` (an HF LLaVA) can
    learn: cached features of a training tower would be stale after its first step."""
    trainable = [n for n, p in model.model.vision_tower.named_parameters() if p.requires_grad]
    if trainable:
        raise FeatureCacheError(f"the feature cache needs a frozen vision tower, but {len(trainable)} tower parameters "
                                f"train (e.g. {trainable[0]}); drop --feature_cache or mm_vision_tower from "
                                f"--mm_tunable_parts")


def build_feature_cache(model: nn.Module, images: Sequence[str], image_folder: str | Path, image_processor: Any,
                        cache_dir: str | Path, image_aspect_ratio: str = "square", dtype: str = "float16",
                        batch_size: int = 64, num_workers: int = 0) -> FeatureCache:
    """Compute the projector input of every image once and store it (see the module docstring).

    ``images``: paths relative to ``image_folder`` (duplicates are stored once). An existing
    complete cache with the same key is reused; a partial one with the same key is resumed; one
    with another key is an error. Returns the opened :class:`FeatureCache`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown feature cache dtype {dtype!r}; choose from {sorted(DTYPES)}")
    require_frozen_tower(model)
    cache_dir = Path(cache_dir)
    key = cache_key(model, image_processor, image_aspect_ratio)
    unique = list(dict.fromkeys(images))
    if (cache_dir / INDEX).is_file():
        cache = FeatureCache(cache_dir)
        cache.check_key(key)
        missing = [p for p in unique if p not in cache.rows]
        if missing:
            raise FeatureCacheError(f"{cache_dir}: {len(missing)} images are not in the cache (e.g. {missing[0]!r}); "
                                    f"it was built for other data")
        return cache

    start = time.perf_counter()
    np_dtype, torch_dtype = DTYPES[dtype]
    files = _ImageFiles(unique, Path(image_folder), image_processor, image_aspect_ratio)
    shape = (len(unique), *tower_features(model, files[0][None]).shape[1:])
    plan = {"key": key, "dtype": dtype, "shape": list(shape), "images": unique}
    partial, progress = cache_dir / (FEATURES + ".partial"), cache_dir / PROGRESS
    done = 0
    if partial.is_file() and progress.is_file():
        state = json.loads(progress.read_text())
        if state["plan"] == plan:
            done = state["done"]
            log.info("resuming feature cache %s at %d/%d images", cache_dir, done, len(unique))
    cache_dir.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=np_dtype, shape=shape)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(files, range(done, len(unique))),
                                         batch_size=batch_size, num_workers=num_workers)
    model.eval()
    for pixels in tqdm(loader, desc="caching tower features", unit="batch", initial=done // batch_size,
                       total=-(-len(unique) // batch_size)):
        feats = tower_features(model, pixels).to("cpu", torch_dtype)
        array[done:done + len(feats)] = feats.view(torch.int16).numpy() if dtype == "bfloat16" else feats.numpy()
        done += len(feats)
        array.flush()
        atomic_write_json(progress, {"plan": plan, "done": done})
    del array
    # The index is written last: its presence marks a complete cache.
    partial.replace(cache_dir / FEATURES)
    atomic_write_json(cache_dir / INDEX, {"format": 1, **plan})
    progress.unlink()
    log.info("cached tower features of %d images (%s, %s) in %s in %.1f s", len(unique), "x".join(map(str, shape[1:])),
             dtype, cache_dir, time.perf_counter() - start)
    return FeatureCache(cache_dir)


class CachedFeatureLlava(nn.Module):
    """Runs an HF ``LlavaForConditionalGeneration`` on cached tower features instead of pixels.

    ``forward(input_ids [B, L], attention_mask, labels, image_features [n_img, N, D])`` projects
    the features with the model's own projector and hands them to the model as precomputed
    encoder outputs, so everything after the tower is the native forward.
    """

    def __init__(self, llava: nn.Module) -> None:
        super().__init__()
        require_frozen_tower(llava)
        self.llava = llava
        self.config = llava.config

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Delegates to the wrapped model (the HF Trainer calls this)."""
        self.llava.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, image_features: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if image_features is not None:
            projector = self.llava.model.multi_modal_projector
            dtype = next(projector.parameters()).dtype
            projected = projector(image_features.to(dtype))
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}
        return self.llava(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
