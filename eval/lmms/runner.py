"""Run lmms-eval's own CLI with this project's local tasks or local copies of lmms-eval's datasets.

A *data folder* may hold either or both of:

- the local ``clips_*`` tasks: their YAMLs next to their data files. lmms-eval 0.7.3 resolves a
  YAML's relative ``data_files`` against the YAML's folder, and the YAMLs name their functions by
  absolute module path, so :func:`install_tasks` just copies the packaged YAMLs into the data
  folder and that folder is passed as ``--include_path``. Any generator that writes files in the
  :mod:`eval.lmms.taskdata` schema gets the same tasks on its own data this way.
- dataset repos in the layout of the HF datasets that lmms-eval's own tasks read
  (``lmms-lab-encoder/POPE``, ...; :mod:`eval.lmms.hf_layout`). lmms-eval then runs with the data
  folder as working directory, where ``datasets`` resolves those repo names to the local folders;
  the task YAMLs are lmms-eval's, unchanged. Relative paths in the arguments are made absolute.

lmms-eval's CLI reports a failed evaluation (e.g. an exception in the model) with a traceback but
exit status 0; :func:`run_lmms_eval` turns "no new results file" into :class:`LmmsEvalError`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from clips_tower.io import atomic_write_text

from .plugin import MODEL_NAME
from .taskdata import TASK_DATA_FILES

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
DEFAULT_OUTPUT = "eval_results/lmms"


class LmmsEvalError(RuntimeError):
    """lmms-eval ran but produced no results."""


def install_tasks(data_dir: str | Path, required: bool = True) -> list[str]:
    """Copy into ``data_dir`` the packaged YAML of every task whose data file
    (:data:`~eval.lmms.taskdata.TASK_DATA_FILES`) is there, plus the shared ``_*_yaml`` templates.

    Returns the installed task names; raises ``FileNotFoundError`` when no data file is there
    (with ``required=False`` returns ``[]`` instead).
    """
    data_dir = Path(data_dir)
    tasks = [t for t, name in TASK_DATA_FILES.items() if (data_dir / name).is_file()]
    if not tasks and not required:
        return []
    if not tasks:
        raise FileNotFoundError(f"{data_dir} holds none of the task data files {sorted(set(TASK_DATA_FILES.values()))}; "
                                f"write them with `clips eval lmms-data {data_dir}`")
    missing = sorted(set(TASK_DATA_FILES) - set(tasks))
    if missing:
        log.warning("%s: no data for %s; installed only %s", data_dir, missing, tasks)
    for src in [*sorted(TASKS_DIR.glob("_*_yaml")), *(TASKS_DIR / f"{t}.yaml" for t in tasks)]:
        atomic_write_text(data_dir / src.name, src.read_text(encoding="utf-8"))
    return tasks


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``), or None."""
    for k, arg in enumerate(argv):
        if arg == flag and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _set_flag(argv: list[str], flag: str, value: str) -> None:
    """Replace the value of ``flag`` in ``argv`` (which has it) by ``value``."""
    for k, arg in enumerate(argv):
        if arg == flag:
            argv[k + 1] = value
            return
        if arg.startswith(flag + "="):
            argv[k] = f"{flag}={value}"
            return


def _model_args(argv: Sequence[str]) -> dict[str, str]:
    """``--model_args`` as a dict (lmms-eval's ``k=v,k=v`` syntax)."""
    text = _flag_value(argv, "--model_args") or ""
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)


def _llava_hf_args(argv: list[str]) -> None:
    """lmms-eval 0.7.3's ``llava_hf`` defaults to ``device="cuda"`` and passes ``device_map=""``
    to ``from_pretrained``, which transformers 5 rejects: give both a real device (``--device``,
    else ``cuda`` when available, else ``cpu``) unless the user set them."""
    import torch

    device = _flag_value(argv, "--device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if _flag_value(argv, "--device") is None:
        argv += ["--device", device]
    if "device_map" not in _model_args(argv):
        text = _flag_value(argv, "--model_args")
        if text is None:
            argv += ["--model_args", f"device_map={device}"]
        else:
            _set_flag(argv, "--model_args", f"{text},device_map={device}" if text else f"device_map={device}")


# Fixes for lmms-eval's own models, applied unless the user passed the arguments themselves.
MODEL_ARG_FIXES: dict[str, Callable[[list[str]], None]] = {"llava_hf": _llava_hf_args}


def _absolute(argv: list[str]) -> None:
    """Make the paths in ``argv`` absolute (lmms-eval will run in another working directory):
    ``--output_path``, ``--include_path`` and a ``pretrained=`` that names an existing folder."""
    for flag in ("--output_path", "--include_path"):
        if _flag_value(argv, flag) is not None:
            _set_flag(argv, flag, str(Path(_flag_value(argv, flag)).absolute()))
    pretrained = _model_args(argv).get("pretrained")
    if pretrained and Path(pretrained).exists():
        text = _flag_value(argv, "--model_args")
        _set_flag(argv, "--model_args", ",".join(
            f"pretrained={Path(pretrained).absolute()}" if kv.startswith("pretrained=") else kv
            for kv in text.split(",")))


def lmms_eval_argv(args: Sequence[str], include_path: str | Path | None = None, absolute: bool = False) -> list[str]:
    """lmms-eval CLI arguments: ``args``, plus ``--model clips_llava`` and ``--output_path
    eval_results/lmms`` unless given, plus ``--include_path`` (lmms-eval takes only one), plus
    :data:`MODEL_ARG_FIXES` for the chosen model; with ``absolute`` every path made absolute."""
    argv = list(args)
    if _flag_value(argv, "--model") is None:
        argv += ["--model", MODEL_NAME]
    if _flag_value(argv, "--output_path") is None:
        argv += ["--output_path", DEFAULT_OUTPUT]
    if include_path is not None:
        if _flag_value(argv, "--include_path") is not None:
            raise ValueError("pass --data-dir or --include_path, not both (lmms-eval takes one include path)")
        argv += ["--include_path", str(include_path)]
    fix = MODEL_ARG_FIXES.get(_flag_value(argv, "--model"))
    if fix is not None:
        fix(argv)
    if absolute:
        _absolute(argv)
    return argv


def requested_tasks(argv: Sequence[str]) -> list[str]:
    """The task names of ``--tasks`` (comma-separated)."""
    return [t for t in (_flag_value(argv, "--tasks") or "").split(",") if t]


def _results_files(out: Path) -> set[Path]:
    """lmms-eval's results files under ``out``: ``<model>/<date>_results.json`` holding a
    ``results`` table (tasks also write files of that name pattern, e.g. MMBench's
    ``submissions/mmbench_en_dev_results.json``, which must not count as a finished run)."""
    found = set()
    for path in out.rglob("*_results.json"):
        try:
            if "results" in json.loads(path.read_text(encoding="utf-8")):
                found.add(path)
        except (OSError, ValueError):
            continue
    return found


def run_lmms_eval(argv: Sequence[str], cwd: str | Path | None = None) -> Path:
    """Run ``python -m lmms_eval *argv`` (output streams through) in ``cwd`` (default: here) and
    return the results JSON it wrote (``<output_path>/<model>/<date>_results.json``); raises
    :class:`LmmsEvalError` if it exits non-zero or writes none. ``argv`` must contain
    ``--output_path`` (absolute when ``cwd`` is given)."""
    if _flag_value(argv, "--output_path") is None:
        raise ValueError("run_lmms_eval needs --output_path (see lmms_eval_argv)")
    out = Path(_flag_value(argv, "--output_path"))
    if cwd is not None and not out.is_absolute():
        raise ValueError(f"--output_path {out} must be absolute when lmms-eval runs in {cwd} (lmms_eval_argv(absolute=True))")
    before = _results_files(out)
    status = subprocess.run([sys.executable, "-m", "lmms_eval", *argv], cwd=cwd).returncode
    written = _results_files(out) - before
    if status != 0 or not written:
        raise LmmsEvalError(f"lmms-eval exited with status {status} and wrote no results under {out} "
                            f"(its error is printed above)")
    return max(written, key=lambda p: p.stat().st_mtime)
