"""Run the demo's independent training jobs in worker processes, one torch thread each.

The demo's models are so small that one process cannot use two cores well (two OpenMP threads on
a tiny matmul are slower than one), so the runs of a stage go to ``workers`` processes instead.
Each job writes its own log file; the parent shows one progress bar over all the jobs' steps (read
from each job's step counter file) and a line per finished job.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


class JobError(RuntimeError):
    """A job failed in its worker; the message names the job and its log file."""


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args)`` (a picklable module-level function) run in a worker with
    its stdout/stderr in ``log``. ``steps``: its length; ``done_steps`` (called in the parent, may
    be None) reads how many of them are done while it runs; ``cost``: the expected time of one of
    its steps relative to the other jobs', so the bar's ETA holds when jobs differ in speed."""

    name: str
    fn: Callable[..., Any]
    args: tuple
    log: Path
    steps: int = 1
    done_steps: Callable[[], int] | None = None
    cost: float = 1.0


def _run_logged(fn: Callable[..., Any], args: tuple, log: Path) -> tuple[Any, float]:
    """Worker side: one torch thread, output into ``log``; returns (result, wall seconds)."""
    import torch

    torch.set_num_threads(1)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        result = fn(*args)
    return result, time.perf_counter() - t0


def run_jobs(jobs: Sequence[Job], workers: int, desc: str, progress: bool = True) -> dict[str, tuple[Any, float]]:
    """Run ``jobs`` on ``workers`` processes (in the given order: put the longest first). Returns
    ``{job.name: (result, wall seconds)}``; raises :class:`JobError` naming the first job that
    failed and its log (jobs not started yet are cancelled, running ones finish first)."""
    from tqdm.auto import tqdm

    results: dict[str, tuple[Any, float]] = {}
    # The bar counts cost-weighted steps, shown as a percentage: the ETA then weighs a slow job's
    # remaining steps correctly.
    bar = tqdm(total=sum(j.steps * j.cost for j in jobs), desc=desc, disable=not progress,
               bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")
    # spawn, not fork: the parent has torch (and its thread pools) loaded.
    with bar, ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict[Future, Job] = {pool.submit(_run_logged, j.fn, j.args, j.log): j for j in jobs}
        while pending:
            finished, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    results[job.name] = future.result()
                except Exception as err:
                    for other in pending:
                        other.cancel()
                    raise JobError(f"{job.name} failed ({type(err).__name__}: {err}); its log: {job.log}") from err
                tqdm.write(f"   done: {job.name} in {results[job.name][1]:.0f} s (log: {job.log})")
            done = sum(j.steps * j.cost for j in jobs if j.name in results)
            done += sum(min(j.steps, j.done_steps()) * j.cost for j in pending.values() if j.done_steps is not None)
            bar.update(done - bar.n)
    return results
