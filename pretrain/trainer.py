"""The pretraining loop: stages of (model at a resolution, engine, data stream), step by step.

    from pretrain.config import load_config
    from pretrain.trainer import train
    summary = train(load_config("clips-tiny", ["--train.out_dir", "runs/tiny"]))

One optimizer step = ``accum_steps`` micro-batches of ``micro_batch_size`` samples on each of
``world`` ranks (``global_batch_size`` in total), contrasted as one batch (see
:mod:`pretrain.objective`). A stage change (e.g. 112 px -> 224 px) saves a checkpoint and rebuilds
model, engine and data stream from it, which is the same code path as resuming a killed run;
positional embeddings (and their Adam moments) are interpolated on the way.

This module holds the loop (stage building, logging, eval and checkpoint cadence); one
optimisation step is :mod:`pretrain.step`, the run state saved in checkpoints is
:mod:`pretrain.checkpointing`, and the engines (:class:`pretrain.engines.Engine`) do the wrapping,
clipping and update.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

import clips_tower
from clips_tower.checkpoint import WEIGHTS_FILE, check_state_dict, resolve_checkpoint
from clips_tower.flops import model_flops
from clips_tower.io import atomic_write_json, atomic_write_text
from clips_tower.tokenizer import check_tokenizer_fits

from . import distributed as D
from .checkpointing import (MODEL_DIR, RunState, list_checkpoints, load_trainer_state, prune_checkpoints,
                            resolve_resume, restore_run_state, run_state_dict, save_checkpoint, step_dir)
from .config import PretrainConfig
from .data.decode import SampleProcessor
from .data.errors import add_counts
from .data.sources import SourceOptions, open_source
from .data.stream import StreamConfig, TrainStream, make_loader
from .engines import ENGINES, Engine
from .losses import CLIPSLoss
from .metrics import RunLogger, matmul_tflops
from .nonfinite import NonFiniteError, NonFiniteStep, first_nonfinite_parameter
from .objective import CLIPSObjective
from .optim import stage_lr_factors
from .recipes import PREFIX_TEXT, build_recipe
from .step import StepSettings, handle_nonfinite, train_step

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


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


class Trainer:
    """Runs a :class:`~pretrain.config.PretrainConfig` (one process of a possibly distributed run)."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        t = cfg.train
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.dist = D.init_distributed(t.device, cfg.dist.backend, cfg.dist.timeout_minutes,
                                       force_group=cfg.dist.strategy == "deepspeed")
        self.out = Path(t.out_dir)
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
        bounds, start = [], 0
        for st in cfg.stages:
            bounds.append((start, start + st.steps))
            start += st.steps
        self.bounds = bounds
        self.step_settings = StepSettings(self.dist.device, self.dist.world, t.precision, cfg.loss.contrastive_weight,
                                          cfg.loss.caption_weight)
        self.source = None  # opened with the first data stream
        self.dataset_size: int | None = None  # data.num_samples, or counted from sizes.json / footers
        self._eval_set = None
        self.peak_tflops = None

    # ------------------------------------------------------------------ layout
    def batch_layout(self, stage: int) -> tuple[int, int]:
        """(micro-batch size per rank, accumulation steps) of ``stage``; they must divide the global batch."""
        t, w = self.cfg.train, self.dist.world
        micro = self.cfg.stages[stage].micro_batch_size or t.micro_batch_size or t.global_batch_size // w
        if micro < 1 or t.global_batch_size % (micro * w):
            raise ValueError(f"train.global_batch_size {t.global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro} x {w} ranks")
        return micro, t.global_batch_size // (micro * w)

    def stage_at(self, step: int) -> int:
        """Index of the stage that step ``step`` belongs to (``len(stages)`` when training is done)."""
        return next((i for i, (lo, hi) in enumerate(self.bounds) if step < hi), len(self.bounds))

    def image_size(self, stage: int) -> int:
        """Training resolution of ``stage``."""
        return self.cfg.stages[stage].image_size or self.base_config.vision.image_size

    # ------------------------------------------------------------------ building a stage
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
            self.dataset_size = d.num_samples or self.source.num_samples()
            log.info("training data: %d shards, %s samples", len(self.source.shards), self.dataset_size or "unknown")
        scfg = StreamConfig(cfg.train.seed, micro, d.shuffle_buffer, d.resampled, self.dist.rank, self.dist.world,
                            d.num_workers)
        stream = TrainStream(self.source, self.processor(image_size), self.tokenizer, scfg, state.cursors,
                             state.next_worker)
        return iter(make_loader(stream, d.prefetch_factor, pin_memory=self.dist.device.type == "cuda"))

    def build_session(self, stage: int, ckpt: Path | None, ckpt_state: dict | None, state: RunState,
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

    # ------------------------------------------------------------------ one step
    def train_step(self, s: Session, batches: list[dict]) -> tuple[dict[str, float], float]:
        """One optimizer step of session ``s`` over ``accum_steps`` micro-batches (see
        :func:`pretrain.step.train_step`); returns (rank-averaged loss terms + ``grad_norm`` + ``lr``,
        supervised caption tokens in the global batch)."""
        return train_step(s.engine, batches, self.step_settings)

    # ------------------------------------------------------------------ checkpoints and eval
    def save(self, s: Session, state: RunState) -> Path:
        """Checkpoint after ``state.step`` (collective). Raises :class:`NonFiniteError` instead of
        writing weights that hold NaN/Inf."""
        folder = step_dir(self.out, state.step)
        bad_param = first_nonfinite_parameter(s.objective.named_parameters(), self.dist.device)
        if bad_param is not None:
            raise NonFiniteError(f"step {state.step}: parameter {bad_param!r} holds NaN/Inf; not writing checkpoint "
                                 f"{folder}; {self._last_checkpoint()}")
        trainer_state = {**run_state_dict(state, image_size=s.image_size, world=self.dist.world,
                                          num_workers=self.cfg.data.num_workers, device=self.dist.device),
                         **s.engine.state_dict()}
        save_checkpoint(folder, is_main=self.dist.is_main, objective_state=s.engine.model_state_dict(),
                        model_config=s.objective.model.config, tokenizer=self.tokenizer, trainer_state=trainer_state,
                        config_yaml=self.cfg.to_yaml(), write_extra=s.engine.save_extra)
        if self.dist.is_main:
            prune_checkpoints(self.out, self.cfg.train.keep_last, keep=(folder,))
        log.info("saved checkpoint %s", folder)
        return folder

    def restore_state(self, ckpt_state: dict) -> RunState:
        """This rank's :class:`RunState` from a checkpoint's trainer state (see
        :func:`pretrain.checkpointing.restore_run_state`)."""
        return restore_run_state(ckpt_state, rank=self.dist.rank, world=self.dist.world,
                                 num_workers=self.cfg.data.num_workers, device=self.dist.device)

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

    def _last_checkpoint(self) -> str:
        found = list_checkpoints(self.out)
        return f"the last complete checkpoint is {found[-1][1]}" if found else "no checkpoint was written yet"

    def evaluate(self, s: Session) -> dict[str, float]:
        """Zero-shot retrieval on ``eval.dataset`` (rank 0; every rank under FSDP2, whose towers
        are sharded). Returns ``{"val/i2t_R@1": ..., ...}``."""
        from eval.data import load_retrieval_dataset
        from eval.retrieval import evaluate_retrieval

        e = self.cfg.eval
        if self._eval_set is None:
            self._eval_set = load_retrieval_dataset(e.dataset, image_root=e.image_root, split=e.split, fmt=e.format)
        model = s.objective.model
        model.eval()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.precision)
        with torch.no_grad():
            res = evaluate_retrieval(model, self.tokenizer, self._eval_set,
                                     transform=clips_tower.image_transform(model.config, train=False),
                                     batch_size=e.batch_size, device=str(self.dist.device), autocast_dtype=dtype,
                                     progress=False)
        model.train()
        return {f"val/{k}": float(v) for k, v in res.items()}

    def _eval_due(self, step: int, done: bool) -> bool:
        e = self.cfg.eval
        return bool(e.dataset) and (done or (e.every_steps > 0 and step % e.every_steps == 0))

    def _run_eval(self, s: Session) -> dict[str, float]:
        towers_sharded = self.cfg.dist.strategy == "fsdp2" and self.dist.world > 1  # every rank must take part
        res = self.evaluate(s) if (self.dist.is_main or towers_sharded) else {}
        D.barrier()
        return res

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train through every stage (resuming per ``train.resume``); returns the run summary
        (also written to ``<out_dir>/summary.json`` by rank 0)."""
        cfg, t = self.cfg, self.cfg.train
        ckpt = resolve_resume(t.resume, self.out)
        ckpt_state = load_trainer_state(ckpt) if ckpt is not None else None
        if ckpt is not None:
            self.check_checkpoint_fits(ckpt, ckpt_state["image_size"])
        state = self.restore_state(ckpt_state) if ckpt_state is not None else RunState()
        resumed_from = str(ckpt) if ckpt is not None else None
        if ckpt is not None:
            log.info("resuming from %s (step %d)", ckpt, state.step)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", cfg.to_yaml())
        if t.mfu_peak_tflops is None:
            self.peak_tflops = matmul_tflops({"fp32": torch.float32}.get(t.precision, torch.bfloat16), self.dist.device)
            log.info("matmul roofline (%s): %.3f TFLOP/s per device", t.precision, self.peak_tflops)
        else:
            self.peak_tflops = t.mfu_peak_tflops or None
        logger = RunLogger(self.out, active=self.dist.is_main, tensorboard=t.tensorboard, progress=t.progress,
                           total_steps=cfg.total_steps, initial_step=state.step)
        start_step, started = state.step, time.perf_counter()
        last: dict[str, float] = {}
        evals: dict[str, float] = {}
        stopped = False
        try:
            while not stopped and (k := self.stage_at(state.step)) < len(cfg.stages):
                s = self.build_session(k, ckpt, ckpt_state, state)
                stopped, metrics, ev = self._run_stage(s, state, logger)
                last.update(metrics)
                evals.update(ev)
                if not stopped:
                    ckpt = step_dir(self.out, state.step)
                    ckpt_state = load_trainer_state(ckpt)
                del s
        finally:
            logger.close()
        elapsed = time.perf_counter() - started
        bad_samples = self._bad_samples_all_ranks(state)
        saved = list_checkpoints(self.out)
        summary = {
            "steps": state.step, "total_steps": cfg.total_steps, "stopped_early": stopped,
            "samples_seen": state.step * t.global_batch_size, "resumed_from": resumed_from,
            "steps_this_run": state.step - start_step, "wall_time_s": round(elapsed, 3),
            "samples_per_s": (state.step - start_step) * t.global_batch_size / elapsed if elapsed > 0 else None,
            "bad_samples": dict(sorted(bad_samples.items())), "final_metrics": last, "eval": evals,
            "checkpoint": str(saved[-1][1]) if saved else None,
        }
        if self.dist.is_main:
            atomic_write_json(self.out / SUMMARY_FILE, summary)
            log.info("run summary: steps %d/%d, %.1f samples/s, bad samples %s", state.step, cfg.total_steps,
                     summary["samples_per_s"] or 0, summary["bad_samples"] or "none")
        return summary

    def _next_batches(self, s: Session, state: RunState) -> list[dict]:
        """The step's ``accum_steps`` micro-batches; ``state`` moves to the data position after them."""
        workers = max(1, self.cfg.data.num_workers)
        batches = [next(s.batches) for _ in range(s.accum_steps)]
        for b in batches:
            state.cursors[b["worker"]] = (b["epoch"], b["position"])
            state.next_worker = (b["worker"] - self.dist.rank * workers + 1) % workers
            state.epoch = b["epoch"]
            add_counts(state.bad_samples, b["bad"])
        return batches

    def _step_or_skip(self, s: Session, batches: list[dict], state: RunState) -> tuple[dict[str, float], float]:
        """:meth:`train_step`, or (no values, no tokens) for a non-finite step the policy skips."""
        try:
            return self.train_step(s, batches)
        except NonFiniteStep as e:
            handle_nonfinite(e, state.step + 1, state.nonfinite_skips, self.cfg.train.max_nonfinite_skips,
                             self._last_checkpoint())
            state.nonfinite_skips += 1
            return {}, 0.0

    def _bad_samples_all_ranks(self, state: RunState) -> Counter:
        """Skipped samples by reason, summed over ranks (collective)."""
        return add_counts(Counter(), D.all_gather_objects(dict(state.bad_samples)))

    def _window_metrics(self, s: Session, state: RunState, steps: int, tokens: float, elapsed: float,
                        data_wait: float) -> dict[str, float]:
        """Throughput and run-progress scalars of a logging window of ``steps`` steps (collective)."""
        t = self.cfg.train
        sps = steps * t.global_batch_size / elapsed
        values = dict(samples_per_s=sps, data_wait=data_wait / elapsed, stage=s.stage, epoch=state.epoch,
                      samples=state.step * t.global_batch_size, image_size=s.image_size,
                      logit_scale=float(s.objective.model.logit_scale.detach().exp()))
        if self.dataset_size:
            values["epochs_seen"] = state.step * t.global_batch_size / self.dataset_size
        if self.peak_tflops:
            per_sample = s.flops_fn(tokens / (steps * t.global_batch_size))
            values["mfu"] = per_sample * sps / (self.peak_tflops * 1e12 * self.dist.world)
        values.update({f"bad/{k}": v for k, v in self._bad_samples_all_ranks(state).items()})
        if state.nonfinite_skips:
            values["nonfinite_skips"] = state.nonfinite_skips
        return values

    def _run_stage(self, s: Session, state: RunState, logger: RunLogger) -> tuple[bool, dict, dict]:
        """Steps of stage ``s`` with the logging, eval and checkpoint cadence; returns (stopped by
        ``train.stop_after_steps``, last logged metrics, last eval results)."""
        cfg, t = self.cfg, self.cfg.train
        end = self.bounds[s.stage][1]
        window_start, window_steps, window_tokens, data_wait = time.perf_counter(), 0, 0.0, 0.0
        metrics: dict[str, float] = {}
        evals: dict[str, float] = {}
        while state.step < end:
            t0 = time.perf_counter()
            batches = self._next_batches(s, state)
            data_wait += time.perf_counter() - t0
            values, tokens = self._step_or_skip(s, batches, state)
            state.step += 1
            window_steps += 1
            window_tokens += tokens
            done = state.step == end
            logged = state.step % t.log_every == 0 or done
            if logged:
                values.update(self._window_metrics(s, state, window_steps, window_tokens,
                                                   time.perf_counter() - window_start, data_wait))
                logger.scalars(state.step, values)
                logger.advance(window_steps, {"loss": f"{values.get('loss', float('nan')):.4f}",
                                              "samples/s": f"{values['samples_per_s']:.1f}"})
                bad_samples = {k.removeprefix("bad/"): v for k, v in values.items() if k.startswith("bad/")}
                if bad_samples:
                    log.info("step %d: skipped bad samples so far %s", state.step, bad_samples)
                metrics = values
            final = state.step == cfg.total_steps
            if self._eval_due(state.step, final):
                evals = self._run_eval(s)
                logger.scalars(state.step, evals)
            stop = t.stop_after_steps is not None and state.step >= t.stop_after_steps
            if state.step % t.save_every == 0 or done or stop:
                self.save(s, state)
            if stop and not final:
                log.info("stopping after step %d (train.stop_after_steps)", state.step)
                return True, metrics, evals
            if logged:  # the next throughput window starts after this step's eval and checkpoint
                window_start, window_steps, window_tokens, data_wait = time.perf_counter(), 0, 0.0, 0.0
        return False, metrics, evals


def train(cfg: PretrainConfig) -> dict:
    """Run ``cfg`` to the end (or to ``train.stop_after_steps``); returns the run summary."""
    return Trainer(cfg).fit()
