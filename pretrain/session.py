"""Building one stage of a run: the model at the stage's resolution (fresh, initialised from
``model.init_from``, or restored from a checkpoint), its objective, engine and data stream.

    builder = SessionBuilder(cfg, init_distributed())
    session = builder.build(0, ckpt=None, ckpt_state=None, state=RunState())
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

import clips_tower
from clips_tower.checkpoint import WEIGHTS_FILE, check_state_dict, resolve_checkpoint
from clips_tower.flops import model_flops
from clips_tower.tokenizer import check_tokenizer_fits

from .checkpointing import MODEL_DIR, RunState
from .config import PretrainConfig
from .data.decode import SampleProcessor
from .data.cache import MemoryCachedSource
from .data.sources import SourceOptions, open_source
from .data.stream import StreamConfig, TrainStream, make_loader
from .distributed import DistInfo
from .engines import ENGINES, Engine
from .losses import CLIPSLoss
from .objective import CLIPSObjective
from .optim import stage_lr_factors
from .recipes import PREFIX_TEXT, build_recipe

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One stage's live objects: the objective, its engine and (unless built ``with_data=False``)
    the iterator over collated micro-batches; ``flops_fn`` maps caption tokens per sample to
    training FLOPs per sample."""

    stage: int
    image_size: int
    micro_batch_size: int
    accum_steps: int
    objective: CLIPSObjective
    engine: Engine
    batches: Iterator[dict] | None
    flops_fn: Callable[[float], float]


class _Unaugmented:
    """Eval preprocessing with the training transform's ``(image, rng)`` signature."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image, rng):
        return self.transform(image)


class SessionBuilder:
    """Builds the :class:`Session` of each stage of ``cfg`` on this process (``dist``); holds what
    stages share: the recipe, the model config, the tokenizer, the learning-rate schedule and the
    training data source (opened with the first data stream)."""

    def __init__(self, cfg: PretrainConfig, dist: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist
        captioner = cfg.recipe.captioner if cfg.loss.caption_weight > 0 else False
        self.recipe = build_recipe(cfg.recipe.name, cfg.recipe.strategy, cfg.recipe.tokens, cfg.recipe.web_fraction,
                                   captioner, cfg.recipe.text_weights)
        self.base_config = clips_tower.get_model_config(cfg.model.name)
        if self.recipe.captioner and self.base_config.captioner is None:
            raise ValueError(f"recipe {self.recipe.name!r} trains the captioner but model {cfg.model.name!r} has none")
        # Encoder rows and captioner targets must be as long as the model's text context and queries.
        self.tokenizer = clips_tower.load_tokenizer(
            context_length=self.base_config.text.context_length,
            target_length=self.base_config.captioner.num_queries if self.base_config.captioner else None)
        check_tokenizer_fits(self.tokenizer, self.base_config, f"tokenizer {self.tokenizer.source}")
        self.lr_factor = stage_lr_factors(cfg.stages, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule,
                                          cfg.optim.min_lr_ratio)
        self.source = None  # opened with the first data stream
        self.dataset_size: int | None = None  # data.num_samples, or counted from sizes.json / footers

    def batch_layout(self, stage: int) -> tuple[int, int]:
        """(micro-batch size per rank, accumulation steps) of ``stage``; they must divide the global batch."""
        t, w = self.cfg.train, self.dist.world
        micro = self.cfg.stages[stage].micro_batch_size or t.micro_batch_size or t.global_batch_size // w
        if micro < 1 or t.global_batch_size % (micro * w):
            raise ValueError(f"train.global_batch_size {t.global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro} x {w} ranks")
        return micro, t.global_batch_size // (micro * w)

    def image_size(self, stage: int) -> int:
        """Training resolution of ``stage``."""
        return self.cfg.stages[stage].image_size or self.base_config.vision.image_size

    def _make_model(self, image_size: int, ckpt: Path | None) -> clips_tower.CLIPS:
        use_cap = self.recipe.captioner
        if ckpt is not None:
            return clips_tower.load_model(ckpt / "model", image_size=image_size, captioner=use_cap)
        torch.manual_seed(self.cfg.train.seed)  # identical initialisation on every rank
        model = clips_tower.create_model(self.base_config, image_size=image_size, captioner=use_cap)
        init = self.cfg.model.init_from
        if init:
            src = clips_tower.load_model(init, image_size=image_size, captioner=use_cap).state_dict()
            expected = {k: v.shape for k, v in model.state_dict().items()}
            fresh_captioner = not any(k.startswith("captioner.") for k in src)  # e.g. open_clip weights
            if fresh_captioner:
                expected = {k: v for k, v in expected.items() if not k.startswith("captioner.")}
            check_state_dict(src, expected, f"model.init_from={init} ({resolve_checkpoint(init)[2]}) for model "
                                            f"{self.base_config.name!r}")
            model.load_state_dict(src, strict=False)
            log.info("initialised from %s%s", init, " (fresh captioner)" if fresh_captioner else "")
        return model

    def processor(self, image_size: int) -> SampleProcessor:
        """The per-sample pipeline (decode, augment at ``image_size``, sample captions) of this run."""
        d = self.cfg.data
        mcfg = self.base_config.with_image_size(image_size)
        a = d.augment
        if a.enabled:
            transform = clips_tower.image_transform(mcfg, train=True, scale=a.scale, ratio=a.ratio, p_jitter=a.p_jitter,
                                                    brightness=a.brightness, contrast=a.contrast,
                                                    saturation=a.saturation, hue=a.hue, p_gray=a.p_gray)
        else:
            transform = _Unaugmented(clips_tower.image_transform(mcfg, train=False))
        return SampleProcessor(self.recipe, self.tokenizer, transform, self.cfg.train.seed, d.web_key, d.synthetic_key,
                               d.max_caption_chars)

    def _loader(self, image_size: int, micro: int, state: RunState):
        cfg, d = self.cfg, self.cfg.data
        if self.source is None:
            self.source = open_source(d.train, d.format, SourceOptions(
                image_exts=d.image_exts, image_column=d.image_column, key_column=d.key_column, image_root=d.image_root,
                caption_columns=(d.web_key, d.synthetic_key)))
            if d.memory_cache_mib:
                self.source = MemoryCachedSource(self.source, d.memory_cache_mib)
            self.dataset_size = d.num_samples or self.source.num_samples()
            log.info("training data: %d shards, %s samples", len(self.source.shards), self.dataset_size or "unknown")
        scfg = StreamConfig(cfg.train.seed, micro, d.shuffle_buffer, d.resampled, self.dist.rank, self.dist.world,
                            d.num_workers)
        stream = TrainStream(self.source, self.processor(image_size), self.tokenizer, scfg, state.cursors,
                             state.next_worker)
        return iter(make_loader(stream, d.prefetch_factor, pin_memory=self.dist.device.type == "cuda"))

    def build(self, stage: int, ckpt: Path | None, ckpt_state: dict | None, state: RunState,
                      with_data: bool = True) -> Session:
        """Model, engine and data stream for ``stage``, restored from ``ckpt`` when given
        (``with_data=False``: no data stream, for benchmarks that feed batches themselves)."""
        cfg, dev = self.cfg, self.dist.device
        image_size = self.image_size(stage)
        micro, accum = self.batch_layout(stage)
        model = self._make_model(image_size, ckpt)
        model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        model.set_attn_impl(cfg.model.attn_impl)
        loss = CLIPSLoss(self.recipe.text_weights, cfg.loss.contrastive, cfg.loss.contrastive_weight,
                         cfg.loss.caption_weight, cfg.loss.siglip_bias_init)
        if ckpt_state is not None and ckpt_state.get("loss"):
            loss.load_state_dict(ckpt_state["loss"])
        objective = CLIPSObjective(model, loss, self.dist.rank, self.dist.world, cfg.loss.local_loss,
                                   cfg.loss.max_logit_scale, PREFIX_TEXT, cfg.loss.caption_negatives).to(dev)
        if cfg.model.compile:
            model.compile()
        engine = ENGINES[cfg.dist.strategy](
            objective, strategy=cfg.dist.strategy, device=dev, world=self.dist.world, optim_cfg=cfg.optim,
            lr_factor=self.lr_factor, precision=cfg.train.precision, grad_clip=cfg.train.grad_clip,
            max_logit_scale=cfg.loss.max_logit_scale, micro_batch_size=micro, accum_steps=accum,
            zero_stage=cfg.dist.zero_stage, deepspeed_config=cfg.dist.deepspeed_config)
        if ckpt_state is not None:
            resized = ckpt_state["image_size"] != image_size
            engine.load_state_dict(ckpt_state, ckpt, model.config.vision.grid_size if resized else None)
        mcfg = model.config
        num_texts = len(self.recipe.text_weights)

        def flops_fn(caption_tokens: float) -> float:
            return model_flops(mcfg, num_texts, self.recipe.captioner, round(caption_tokens),
                               cfg.train.global_batch_size).train

        log.info("stage %d (%s): %d px, %d steps, micro-batch %d x %d ranks x %d accumulation = %d",
                 stage, cfg.stages[stage].name or "-", image_size, cfg.stages[stage].steps, micro, self.dist.world,
                 accum, cfg.train.global_batch_size)
        batches = self._loader(image_size, micro, state) if with_data else None
        return Session(stage, image_size, micro, accum, objective, engine, batches, flops_fn)

    def check_checkpoint_fits(self, ckpt: Path, image_size: int) -> None:
        """Raise :class:`~clips_tower.checkpoint.CheckpointError` (naming every key, the file and both
        shapes) when checkpoint ``ckpt`` holds another model than this config's, at ``image_size``;
        only the weights file's header is read, before anything is built."""
        from safetensors import safe_open

        weights = ckpt / MODEL_DIR / WEIGHTS_FILE
        cfg = self.base_config.with_image_size(image_size)
        if not self.recipe.captioner:
            cfg = cfg.without_captioner()
        with torch.device("meta"):
            expected = {k: v.shape for k, v in clips_tower.CLIPS(cfg).state_dict().items()}
        with safe_open(str(weights), framework="pt") as f:
            found = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        check_state_dict(found, expected, f"train.resume checkpoint {weights} (model {self.cfg.model.name!r})")
