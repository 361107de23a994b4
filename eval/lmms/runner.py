"""Run lmms-eval's own CLI with this project's local tasks.

A *task folder* is a data folder holding the task YAMLs next to their data files: lmms-eval 0.7.3
resolves a YAML's relative ``data_files`` against the YAML's folder, and the YAMLs name their
functions by absolute module path, so :func:`install_tasks` just copies the packaged YAMLs into
the data folder and that folder is passed as ``--include_path``. Any generator that writes files
in the :mod:`eval.lmms.taskdata` schema gets the same tasks on its own data this way.

lmms-eval's CLI reports a failed evaluation (e.g. an exception in the model) with a traceback but
exit status 0; :func:`run_lmms_eval` turns "no new results file" into :class:`LmmsEvalError`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from clips_tower.io import atomic_write_text

from .plugin import MODEL_NAME
from .taskdata import TASK_DATA_FILES

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
DEFAULT_OUTPUT = "eval_results/lmms"


class LmmsEvalError(RuntimeError):
    """lmms-eval ran but produced no results."""


def install_tasks(data_dir: str | Path) -> list[str]:
    """Copy into ``data_dir`` the packaged YAML of every task whose data file
    (:data:`~eval.lmms.taskdata.TASK_DATA_FILES`) is there, plus the shared ``_*_yaml`` templates.

    Returns the installed task names; raises ``FileNotFoundError`` when no data file is there.
    """
    data_dir = Path(data_dir)
    tasks = [t for t, name in TASK_DATA_FILES.items() if (data_dir / name).is_file()]
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


def lmms_eval_argv(args: Sequence[str], include_path: str | Path | None = None) -> list[str]:
    """lmms-eval CLI arguments: ``args``, plus ``--model clips_llava`` and ``--output_path
    eval_results/lmms`` unless given, plus ``--include_path`` (lmms-eval takes only one)."""
    argv = list(args)
    if _flag_value(argv, "--model") is None:
        argv += ["--model", MODEL_NAME]
    if _flag_value(argv, "--output_path") is None:
        argv += ["--output_path", DEFAULT_OUTPUT]
    if include_path is not None:
        if _flag_value(argv, "--include_path") is not None:
            raise ValueError("pass --data-dir or --include_path, not both (lmms-eval takes one include path)")
        argv += ["--include_path", str(include_path)]
    return argv


def run_lmms_eval(argv: Sequence[str]) -> Path:
    """Run ``python -m lmms_eval *argv`` (output streams through) and return the results JSON it
    wrote (``<output_path>/<model>/<date>_results.json``); raises :class:`LmmsEvalError` if it
    exits non-zero or writes none. ``argv`` must contain ``--output_path``."""
    if _flag_value(argv, "--output_path") is None:
        raise ValueError("run_lmms_eval needs --output_path (see lmms_eval_argv)")
    out = Path(_flag_value(argv, "--output_path"))
    before = set(out.rglob("*_results.json"))
    status = subprocess.run([sys.executable, "-m", "lmms_eval", *argv]).returncode
    written = set(out.rglob("*_results.json")) - before
    if status != 0 or not written:
        raise LmmsEvalError(f"lmms-eval exited with status {status} and wrote no results under {out} "
                            f"(its error is printed above)")
    return max(written, key=lambda p: p.stat().st_mtime)
