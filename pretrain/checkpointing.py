"""Training checkpoints: ``<out_dir>/checkpoints/step_<8 digits>/`` folders, written atomically.

A checkpoint folder holds

- ``model/``: the CLIPS weights in this project's format (``config.json`` + ``model.safetensors``
  + tokenizer files): loadable directly with ``clips_tower.load_model`` for eval or export;
- ``trainer_state.pt``: step, optimizer (full, keyed by parameter name), scheduler, grad scaler,
  loss parameters (SigLIP bias), each rank's data cursors and skipped-sample counts, RNG states
  (plain tensors/containers: read back with ``torch.load(weights_only=True)``);
- ``config.yaml``: the resolved run config;
- ``deepspeed/`` (DeepSpeed runs only): DeepSpeed's optimizer partitions.

The run state (:class:`RunState`: step, data position, skipped-sample counts, NaN/Inf skips,
RNG) is turned into the ``trainer_state.pt`` record and back by :func:`run_state_dict` and
:func:`restore_run_state`.

Everything is written into ``.step_<n>.tmp`` and renamed once complete (all ranks write their
parts there first), so a killed run never leaves a half checkpoint under a final name; older
checkpoints beyond ``keep_last`` are then deleted. Re-saving an existing step moves the old folder
to ``.step_<n>.old`` until the new one is in place (``resume: auto`` puts it back after a crash).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from clips_tower.checkpoint import CheckpointError, model_from_state_dict, save_model
from clips_tower.io import atomic_write_text

from .data.errors import add_counts
from .distributed import all_gather_objects, barrier

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class RunState:
    """What a resumed run needs besides weights and optimizer: this rank's data position
    (``cursors``: logical worker -> ``(epoch, position)``, ``next_worker``), its skipped-sample
    counts by reason, and the number of steps skipped for NaN/Inf so far."""

    step: int = 0
    cursors: dict[int, tuple[int, int]] = field(default_factory=dict)
    next_worker: int = 0
    bad_samples: Counter = field(default_factory=Counter)
    epoch: int = 0
    nonfinite_skips: int = 0


def run_state_dict(state: RunState, *, image_size: int, world: int, num_workers: int,
                   device: torch.device) -> dict[str, Any]:
    """The ``trainer_state.pt`` record of ``state`` (collective: every rank's data position and
    skipped-sample counts are gathered under ``ranks``, in rank order), with the RNG states."""
    ranks = all_gather_objects({"cursors": state.cursors, "next_worker": state.next_worker,
                                "bad": dict(state.bad_samples)})
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"step": state.step, "image_size": image_size, "world": world, "num_workers": num_workers,
            "ranks": ranks, "epoch": state.epoch, "nonfinite_skips": state.nonfinite_skips, "rng": rng}


def restore_run_state(record: dict[str, Any], *, rank: int, world: int, num_workers: int,
                      device: torch.device) -> RunState:
    """Rank ``rank``'s :class:`RunState` from a :func:`run_state_dict` record, and the RNG states
    restored. The data position carries over only when the layout (``world`` ranks x
    ``num_workers`` loader workers) is unchanged; otherwise the stream restarts at the next epoch."""
    state = RunState(step=record["step"], epoch=record.get("epoch", 0),
                     nonfinite_skips=record.get("nonfinite_skips", 0))
    ranks = record["ranks"]
    mine = ranks[rank] if rank < len(ranks) else {}
    add_counts(state.bad_samples, mine.get("bad", {}))
    if record["world"] == world and record["num_workers"] == num_workers:
        state.cursors = {int(k): tuple(v) for k, v in mine["cursors"].items()}
        state.next_worker = mine["next_worker"]
    else:
        epoch = 1 + max((c[0] for r in ranks for c in r["cursors"].values()), default=-1)
        log.warning("data layout changed (world %s -> %s, workers %s -> %s): data restarts at epoch %d",
                    record["world"], world, record["num_workers"], num_workers, epoch)
        state.cursors = {g: (epoch, 0) for g in range(world * max(1, num_workers))}
    torch.set_rng_state(record["rng"]["torch"])
    if "cuda" in record["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(record["rng"]["cuda"], device)
    return state


def step_dir(out_dir: str | Path, step: int) -> Path:
    """Folder of the checkpoint after ``step`` optimizer steps."""
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, folder)``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def _restore_moved_aside(out_dir: str | Path) -> None:
    """Put back a complete ``.step_<n>.old`` whose replacement never got its final name (a crash
    while re-saving step n; see :func:`save_checkpoint`)."""
    root = Path(out_dir) / CHECKPOINTS
    for old in root.glob(".step_*.old") if root.is_dir() else []:
        final = root / old.name[1:].removesuffix(".old")
        if _STEP_DIR.match(final.name) and not final.exists() and (old / STATE_FILE).is_file():
            with contextlib.suppress(FileNotFoundError):  # another rank put it back first
                os.replace(old, final)


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` = latest in ``out_dir`` (None if none), ``none``,
    or an explicit checkpoint folder."""
    if resume == "none":
        return None
    if resume == "auto":
        _restore_moved_aside(out_dir)
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume={resume!r}: not a checkpoint folder (no {STATE_FILE})")
    return path


def save_checkpoint(
    folder: Path,
    *,
    is_main: bool,
    objective_state: dict[str, torch.Tensor],
    model_config,
    tokenizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    write_extra: Callable[[Path], None],
) -> None:
    """Write one checkpoint (collective: every rank calls it; rank 0 writes the shared files).

    ``objective_state``: the full objective state dict on rank 0 (``model.*`` CLIPS weights,
    ``loss.*`` loss parameters); ``write_extra(tmp_folder)`` lets the engine add its own files
    (called on every rank).
    """
    tmp = folder.parent / f".{folder.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write_extra(tmp)
    if is_main:
        model_sd = {k.removeprefix("model."): v for k, v in objective_state.items() if k.startswith("model.")}
        loss_sd = {k.removeprefix("loss."): v for k, v in objective_state.items() if k.startswith("loss.")}
        save_model(model_from_state_dict(model_config, model_sd), tmp / MODEL_DIR, format="clips", tokenizer=tokenizer)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save({**trainer_state, "loss": loss_sd}, f)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_text(tmp / "config.yaml", config_yaml)
        old = folder.parent / f".{folder.name}.old"
        if folder.exists():  # re-saving a step: move the old copy aside, never delete it before the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never those in ``keep``); returns the deleted."""
    found = list_checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep_last] if p not in keep] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint (safe unpickling: tensors and plain containers only;
    anything else, e.g. a pickle that would run code, is a :class:`CheckpointError` naming the file)."""
    path = folder / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; report the file either way
        raise CheckpointError(f"{path}: cannot read trainer state ({type(e).__name__}: {str(e)[:300]})") from None
