"""Training engines: how the objective is wrapped, stepped and (de)serialised.

- ``ddp``: plain PyTorch on one process, ``DistributedDataParallel`` under torchrun;
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` per transformer block, per tower and at the
  root (scalar parameters such as the logit scale cannot be sharded: they stay replicated and
  their gradients are averaged by hand);
- ``deepspeed``: ZeRO (stage from the config, 2 by default) around the same torch AdamW and
  schedule.

Every engine implements :class:`Engine`: ``module`` (call it for forward), ``sync(enabled)``
(gradient synchronisation off during accumulation micro-steps), ``backward(loss)``,
``step() -> grad norm``, ``lr``, full (unsharded) state dicts for checkpoints (so a run can resume
under a different engine from the same checkpoint files), and its capabilities stated explicitly
(``can_skip_update``, :meth:`Engine.grad_norm`) rather than inferred from its class.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from .optim import build_optimizer

log = logging.getLogger(__name__)
POS_EMBED_KEY = "model.visual.positional_embedding"


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX-BF16, from
    ``/proc/cpuinfo``). Without them PyTorch emulates bf16 GEMMs at a few GFLOP/s, 10-30x slower
    than fp32 (measured on an AVX2-only AMD EPYC: see docs/performance.md)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((ln.partition(":")[2].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


@functools.lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    log.warning("bf16 autocast on a CPU without bf16 instructions (no AVX512-BF16/AMX): PyTorch emulates bf16 "
                "matmuls, typically 10-30x slower than fp32 here; use --train.precision fp32 on this machine")


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (``fp32``: none) on ``device`` (warns once when bf16
    would be emulated on this CPU)."""
    dtype = _autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype == torch.bfloat16 and not native_bf16_cpu():
        _warn_emulated_bf16()
    return torch.autocast(device.type, dtype=dtype)


def global_grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` as a 0-dim float64 tensor: the local norm of
    plain gradients plus the norms of FSDP2's sharded DTensor gradients summed over ranks (one
    all-reduce). NaN/Inf when any gradient holds NaN/Inf. ``get_total_norm`` uses multi-tensor
    kernels where the device has them (CUDA; on CPU they run one norm per tensor)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
    sq = torch.zeros((), dtype=torch.float64)
    if plain:
        sq += torch.nn.utils.get_total_norm(plain).double().cpu() ** 2
    if shards:
        sharded = torch.nn.utils.get_total_norm(shards).double().cpu() ** 2
        dist.all_reduce(sharded)
        sq += sharded
    return sq.sqrt()


def clip_gradients(params: list[nn.Parameter], max_norm: float | None, norm: torch.Tensor) -> float:
    """Scale the gradients in place so their global norm is at most ``max_norm`` (no-op when not
    given, not exceeded or ``norm`` is non-finite); ``norm``: :func:`global_grad_norm` of them.
    Returns the norm as a float."""
    total = float(norm)
    if max_norm and math.isfinite(total) and total > max_norm:
        torch._foreach_mul_([p.grad for p in params if p.grad is not None], max_norm / (total + 1e-6))
    return total


def _resize_moments(osd: dict, grid: int) -> None:
    """Interpolate the Adam moments of the vision positional embedding to a ``grid x grid`` grid
    (the weights themselves are interpolated by ``clips_tower.load_model``)."""
    from clips_tower.vision import resize_pos_embed

    state = osd.get("state", {}).get(POS_EMBED_KEY)
    if not state:
        return
    for k in ("exp_avg", "exp_avg_sq"):
        if k in state and state[k].shape[0] != grid * grid + 1:
            state[k] = resize_pos_embed(state[k], grid)
    if "exp_avg_sq" in state:
        state["exp_avg_sq"].clamp_(min=0)  # bicubic overshoot must not make a second moment negative


@runtime_checkable
class Engine(Protocol):
    """What the trainer needs from a training engine (one per ``dist.strategy`` in :data:`ENGINES`).

    ``module``: the wrapped objective (call it for forward). ``can_skip_update``: True when the
    parameter update happens in :meth:`step`, so a step found non-finite after backward can still be
    dropped (:meth:`skip_update`); False when the engine updates inside :meth:`backward` (DeepSpeed).
    """

    module: nn.Module
    can_skip_update: ClassVar[bool]

    def sync(self, enabled: bool) -> ContextManager:
        """Context for one micro-step: gradient synchronisation only when ``enabled`` (the last one)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (a 0-dim tensor)."""

    def grad_norm(self) -> torch.Tensor | None:
        """Global L2 norm of the accumulated gradients before :meth:`step` (0-dim tensor; NaN/Inf
        makes the step faulty), which :meth:`step` then clips with; None when the engine needs no
        check (it handles overflow itself or has already updated)."""

    def skip_update(self) -> None:
        """Drop this step's gradients without updating (the schedule still advances); only when
        ``can_skip_update``."""

    def step(self) -> float:
        """Apply the update (clipping included); returns the gradient norm before clipping."""

    @property
    def lr(self) -> float:
        """Learning rate of the next step."""

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full objective state dict on rank 0 (collective)."""

    def state_dict(self) -> dict:
        """Optimizer/scheduler state for the trainer-state file (rank 0)."""

    def load_state_dict(self, state: dict, folder: Path, new_grid: int | None) -> None:
        """Restore :meth:`state_dict` output (and files under ``folder``); ``new_grid``: patches per
        side when the resolution changed since the checkpoint."""

    def save_extra(self, folder: Path) -> None:
        """Write engine-specific files into checkpoint folder ``folder`` (every rank)."""


class TorchEngine:
    """AdamW + LambdaLR (+ GradScaler for fp16) around the objective, plain, DDP or FSDP2."""

    can_skip_update: ClassVar[bool] = True  # the update happens in step()

    def __init__(self, objective: nn.Module, *, strategy: str, device: torch.device, world: int, optim_cfg,
                 lr_factor: Callable[[int], float], precision: str, grad_clip: float | None,
                 max_logit_scale: float, **_) -> None:
        self.objective, self.strategy, self.world, self.device = objective, strategy, world, device
        self.grad_clip, self.max_log_scale = grad_clip, math.log(max_logit_scale)
        self.replicated: list[nn.Parameter] = []
        if strategy == "fsdp2" and world > 1:
            self.module = self._fully_shard(objective)
        elif world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        else:
            self.module = objective
        # Fused AdamW: one pass over each parameter instead of ~8 foreach passes; on CPU it measured
        # 3-13x faster than foreach for B/16 (195M parameters), where the optimizer was a third of
        # a small-batch step. FSDP2's sharded DTensor parameters keep the foreach kernels.
        fused = strategy != "fsdp2" and device.type in ("cpu", "cuda")
        self.optimizer = build_optimizer(objective, optim_cfg.lr, optim_cfg.betas, optim_cfg.eps, optim_cfg.weight_decay,
                                         fused=fused)
        self.lr_factor = lr_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.params = [p for p in objective.parameters() if p.requires_grad]
        # Under fp16 the GradScaler finds inf gradients itself (and lowers its scale): not a fault.
        self.checks_gradients = precision != "fp16"
        self._norm: torch.Tensor | None = None  # this step's gradient norm, once computed

    def _fully_shard(self, objective: nn.Module) -> nn.Module:
        """Shard every transformer block, then the vision and text towers (so ``encode_image`` /
        ``encode_text`` work alone, e.g. for evaluation), then the root, which also holds the
        captioner's own parameters (the model calls ``captioner.hidden``/``.head``, not the
        captioner module, so it cannot be a unit of its own); scalar parameters stay replicated."""
        from torch.distributed.fsdp import fully_shard

        model = objective.model
        for tower in (model.visual, model.text, model.captioner):
            if tower is None:
                continue
            for block in tower.transformer.resblocks:
                fully_shard(block)
            if tower is not model.captioner:
                fully_shard(tower)
        self.replicated = [p for p in objective.parameters() if p.ndim == 0]
        fully_shard(objective, ignored_params=set(self.replicated))
        for p in self.replicated:  # ranks must start equal: nothing else broadcasts ignored params
            dist.broadcast(p.data, src=0)
        return objective

    def sync(self, enabled: bool):
        """Context for one micro-step: gradient all-reduce only when ``enabled`` (the last one)."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel) and not enabled:
            return self.module.no_sync()
        if self.strategy == "fsdp2" and self.world > 1:
            self.module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (scaled for fp16)."""
        self.scaler.scale(loss).backward()

    def grad_norm(self) -> torch.Tensor | None:
        """The step's gradient norm (None under fp16, where the GradScaler handles overflow)."""
        return self._unscaled_grad_norm() if self.checks_gradients else None

    def _unscaled_grad_norm(self) -> torch.Tensor:
        """Average replicated grads (FSDP2), unscale (fp16), then :func:`global_grad_norm`: once per
        step, for both the NaN/Inf check and clipping (each is a pass over every gradient)."""
        if self._norm is None:
            self.reduce_replicated_grads()
            self.scaler.unscale_(self.optimizer)
            self._norm = global_grad_norm(self.params)
        return self._norm

    def skip_update(self) -> None:
        """Drop the gradients and advance the schedule, which follows the step counter (skipped steps included)."""
        self._norm = None
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns when the very first step is the skipped one
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()

    def reduce_replicated_grads(self) -> None:
        """Average the gradients of the parameters FSDP2 leaves replicated (scalars) over ranks."""
        for p in self.replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def step(self) -> float:
        """Average replicated grads (FSDP2), unscale, clip, AdamW step, schedule, clamp the logit scale."""
        norm = clip_gradients(self.params, self.grad_clip, self._unscaled_grad_norm())
        self._norm = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            self.objective.model.logit_scale.clamp_(max=self.max_log_scale)
        return norm

    @property
    def lr(self) -> float:
        """Learning rate of the next step."""
        return self.optimizer.param_groups[0]["lr"]

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full objective state dict on CPU, on rank 0 (empty elsewhere). Collective under FSDP2."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state_dict(self) -> dict:
        """Optimizer (full, keyed by parameter name), scheduler and scaler state (rank 0)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        osd = get_optimizer_state_dict(self.objective, self.optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"optimizer": osd, "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict, folder: Path, new_grid: int | None) -> None:
        """Restore :meth:`state_dict` output; ``new_grid`` (patches per side) when the resolution
        changed since the checkpoint: the Adam moments of the positional embedding are interpolated."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        osd = state["optimizer"]
        if new_grid is not None:
            _resize_moments(osd, new_grid)
        set_optimizer_state_dict(self.objective, self.optimizer, osd, options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def save_extra(self, folder: Path) -> None:
        """Nothing beyond :meth:`state_dict` for torch engines."""


class DeepSpeedEngine:
    """DeepSpeed ZeRO around the torch AdamW + LambdaLR (DeepSpeed steps them at boundaries)."""

    can_skip_update: ClassVar[bool] = False  # DeepSpeed applies the update inside backward()

    def __init__(self, objective: nn.Module, *, device: torch.device, world: int, optim_cfg,
                 lr_factor: Callable[[int], float], precision: str, grad_clip: float | None, micro_batch_size: int,
                 accum_steps: int, zero_stage: int, deepspeed_config: str | None, **_) -> None:
        import deepspeed

        self.objective, self.lr_factor = objective, lr_factor
        # DeepSpeed broadcasts parameters as byte views, which 0-dim tensors (the logit scale, the
        # SigLIP bias) cannot take: hold them as [1] while training, report them as [] in state dicts.
        self.scalars = [n for n, p in objective.named_parameters() if p.ndim == 0]
        for n in self.scalars:
            p = objective.get_parameter(n)
            p.data = p.data.reshape(1)
        optimizer = build_optimizer(objective, optim_cfg.lr, optim_cfg.betas, optim_cfg.eps, optim_cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": accum_steps,
            "zero_optimization": {"stage": zero_stage},
            "gradient_clipping": grad_clip or 0.0,
            "steps_per_print": 10**9,
            # Mixed precision stays torch autocast (as for the other engines); params remain fp32.
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
        }
        if deepspeed_config:
            config = _merge(config, json.loads(Path(deepspeed_config).read_text()))
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=objective, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False)

    def sync(self, enabled: bool):
        """DeepSpeed tracks accumulation boundaries itself."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward + DeepSpeed's per-micro-step ``step`` (it updates only at the boundary). The
        objective already normalises over the accumulated batch, so no 1/accum scaling here."""
        self.module.backward(loss, scale_wrt_gas=False)
        self.module.step()

    def grad_norm(self) -> None:
        """None: by the time gradients could be checked, DeepSpeed has applied them."""
        return None

    def skip_update(self) -> None:
        """Not possible: the update happened in the last :meth:`backward`."""
        raise RuntimeError("DeepSpeedEngine cannot skip an update: it applies it inside backward()")

    def step(self) -> float:
        """The update happened in the last :meth:`backward`; returns the gradient norm."""
        norm = self.module.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        """Learning rate of the next step."""
        return self.scheduler.get_last_lr()[0]

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full objective state dict (ZeRO-2 keeps whole parameters on every rank); rank 0 only."""
        if dist.get_rank() != 0:
            return {}
        sd = {k: v.detach().cpu().clone() for k, v in self.objective.state_dict().items()}
        return {k: v.reshape(()) if k in self.scalars else v for k, v in sd.items()}

    def state_dict(self) -> dict:
        """Scheduler state (optimizer partitions are written by :meth:`save_extra`)."""
        return {"scheduler": self.scheduler.state_dict()}

    def save_extra(self, folder: Path) -> None:
        """DeepSpeed's own checkpoint (optimizer partitions of every rank) under ``folder/deepspeed``."""
        self.module.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load_state_dict(self, state: dict, folder: Path, new_grid: int | None) -> None:
        """Restore DeepSpeed's optimizer partitions when shapes are unchanged (``new_grid`` None);
        after a resolution change the optimizer moments restart (flat ZeRO partitions cannot be
        re-gridded), with a warning."""
        ds_dir = folder / "deepspeed"
        if new_grid is None and ds_dir.is_dir():
            self.module.load_checkpoint(str(ds_dir), tag="state", load_module_strict=True,
                                        load_optimizer_states=True, load_lr_scheduler_states=False)
        else:
            log.warning("DeepSpeed: resolution changed (or no DeepSpeed state in %s): optimizer moments restart", folder)
        self.scheduler.load_state_dict(state["scheduler"])
        for g in self.optimizer.param_groups:
            g["lr"] = g.get("initial_lr", g["lr"]) * self.lr_factor(self.scheduler.last_epoch)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


ENGINES: dict[str, type[Engine]] = {"ddp": TorchEngine, "fsdp2": TorchEngine, "deepspeed": DeepSpeedEngine}
