"""The pretraining loop: stages of (model at a resolution, engine, data stream), step by step.

    from pretrain.config import load_config
    from pretrain.trainer import train
    summary = train(load_config("clips-tiny", ["--train.out_dir", "runs/tiny"]))

One optimizer step = ``accum_steps`` micro-batches of ``micro_batch_size`` samples on each of
``world`` ranks (``global_batch_size`` in total), contrasted as one batch (see
:mod:`pretrain.objective`). A stage change (e.g. 112 px -> 224 px) saves a checkpoint and rebuilds
model, engine and data stream from it, which is the same code path as resuming a killed run;
positional embeddings (and their Adam moments) are interpolated on the way.

This module holds the loop (stages, logging, eval and checkpoint cadence); a stage's model,
engine and data stream are built by :mod:`pretrain.session`, one optimisation step is
:mod:`pretrain.step`, the run state saved in checkpoints is :mod:`pretrain.checkpointing`, and the engines (:class:`pretrain.engines.Engine`) do the wrapping,
clipping and update.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import torch

import clips_tower
from clips_tower.io import atomic_write_json, atomic_write_text

from . import distributed as D
from .checkpointing import (RunState, list_checkpoints, load_trainer_state, prune_checkpoints, resolve_resume,
                            restore_run_state, run_state_dict, save_checkpoint, step_dir)
from .config import PretrainConfig
from .data.decode import SampleProcessor
from .data.errors import add_counts
from .metrics import RunLogger, matmul_tflops
from .nonfinite import NonFiniteError, NonFiniteStep, first_nonfinite_parameter
from .session import Session, SessionBuilder
from .step import StepSettings, handle_nonfinite, train_step
from .throughput import rates

__all__ = ["RunState", "SUMMARY_FILE", "Session", "Trainer", "train"]  # RunState/Session: their old home

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


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
        self.sessions = SessionBuilder(cfg, self.dist)
        self.tokenizer = self.sessions.tokenizer
        bounds, start = [], 0
        for st in cfg.stages:
            bounds.append((start, start + st.steps))
            start += st.steps
        self.bounds = bounds
        self.step_settings = StepSettings(self.dist.device, self.dist.world, t.precision, cfg.loss.contrastive_weight,
                                          cfg.loss.caption_weight)
        self._eval_set = None
        self.peak_tflops = None

    # ------------------------------------------------------------------ stages
    def stage_at(self, step: int) -> int:
        """Index of the stage that step ``step`` belongs to (``len(stages)`` when training is done)."""
        return next((i for i, (lo, hi) in enumerate(self.bounds) if step < hi), len(self.bounds))

    def processor(self, image_size: int) -> SampleProcessor:
        """The per-sample pipeline (decode, augment at ``image_size``, sample captions) of this run."""
        return self.sessions.processor(image_size)

    def build_session(self, stage: int, ckpt: Path | None, ckpt_state: dict | None, state: RunState,
                      with_data: bool = True) -> Session:
        """Model, engine and data stream for ``stage``, restored from ``ckpt`` when given
        (``with_data=False``: no data stream, for benchmarks that feed batches themselves)."""
        return self.sessions.build(stage, ckpt, ckpt_state, state, with_data)

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
            self.sessions.check_checkpoint_fits(ckpt, ckpt_state["image_size"])
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
        if self.sessions.dataset_size:
            values["epochs_seen"] = state.step * t.global_batch_size / self.sessions.dataset_size
        if self.peak_tflops:  # the one MFU computation the benchmarks use too
            per_sample = s.flops_fn(tokens / (steps * t.global_batch_size))
            values["mfu"] = rates(steps * t.global_batch_size, elapsed, per_sample, self.peak_tflops, self.dist.world)["mfu"]
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
