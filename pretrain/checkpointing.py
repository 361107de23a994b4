"""Training checkpoints: ``<out_dir>/checkpoints/step_<8 digits>/`` folders, written atomically.

A checkpoint folder holds

- ``model/``: the CLIPS weights in this project's format (``config.json`` + ``model.safetensors``
  + tokenizer files): loadable directly with ``clips_tower.load_model`` for eval or export;
- ``trainer_state.pt``: step, optimizer (full, keyed by parameter name), scheduler, grad scaler,
  loss parameters (SigLIP bias), each rank's data cursors and skipped-sample counts, RNG states
  (plain tensors/containers: read back with ``torch.load(weights_only=True)``);
- ``config.yaml``: the resolved run config;
- ``deepspeed/`` (DeepSpeed runs only): DeepSpeed's optimizer partitions.

Everything is written into ``.step_<n>.tmp`` and renamed once complete (all ranks write their
parts there first), so a killed run never leaves a half checkpoint under a final name; older
checkpoints beyond ``keep_last`` are then deleted.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from clips_tower.checkpoint import model_from_state_dict, save_model
from clips_tower.io import atomic_write_text

from .distributed import barrier

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


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


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` = latest in ``out_dir`` (None if none), ``none``,
    or an explicit checkpoint folder."""
    if resume == "none":
        return None
    if resume == "auto":
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
        if folder.exists():  # re-saving the same step (e.g. the end of a resumed run)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    barrier()


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never those in ``keep``); returns the deleted."""
    found = list_checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep_last] if p not in keep] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint (safe unpickling: tensors and plain containers only)."""
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
