"""Fault injection, distributed: with 2 CPU ranks (gloo), a rank that raises or stops answering ends the
whole job with its error within a bounded time instead of leaving the other rank waiting at a collective.

This file is also the worker (``__main__``): it runs ``clips pretrain`` on a tiny config with a fault
injected into one rank at its second step (``raise``: an exception; ``stall``: the rank stops
responding, as a hung GPU or a stuck file system would; ``nan``: a NaN loss on that rank only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import free_port

REPO = Path(__file__).resolve().parents[1]
FAULTY_RANK = 1
MESSAGE = "injected fault on rank 1"


def _inject(fault: str) -> None:
    """Make this process's trainer fail (``fault``) at its second step when it is :data:`FAULTY_RANK`."""
    from pretrain import losses, trainer

    if int(os.environ["RANK"]) != FAULTY_RANK:
        return
    if fault == "nan":  # this rank's caption loss (and total) is NaN at its second step
        loss_forward, loss_calls = losses.CLIPSLoss.forward, []

        def nan_loss(self, *args, **kwargs):
            out = loss_forward(self, *args, **kwargs)
            loss_calls.append(1)
            if len(loss_calls) == 2:
                out = {**out, "caption": out["caption"] * float("nan"), "loss": out["loss"] * float("nan")}
            return out

        losses.CLIPSLoss.forward = nan_loss
        return
    original, calls = trainer.Trainer.train_step, []

    def faulty(self, s, batches):
        calls.append(1)
        if len(calls) == 2:
            if fault == "raise":
                raise RuntimeError(MESSAGE)
            time.sleep(3600)  # stall: never reaches the next collective
        return original(self, s, batches)

    trainer.Trainer.train_step = faulty


def _config(root: Path, timeout_minutes: float, steps: int = 20, **train) -> Path:
    from helpers.runs import run_config

    cfg = run_config(root, str(root / "data"), global_batch_size=4, **train)
    cfg["stages"] = [{"steps": steps}]
    cfg["dist"] = {"timeout_minutes": timeout_minutes}
    path = root / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def _launch(tmp_path: Path, fault: str, timeout_minutes: float, **cfg) -> tuple[list[subprocess.Popen], float]:
    """Start ranks 0 and 1 as plain processes: no launcher (torchrun would kill the survivors
    itself), so each rank has to end on its own."""
    from pretrain.synthetic import write_webdataset

    write_webdataset(tmp_path / "data", 16, seed=0, shard_size=8, image_size=16)
    cfg = _config(tmp_path, timeout_minutes, **cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    worker = [str(Path(__file__).resolve()), fault, str(cfg)]
    port = str(free_port())
    start = time.monotonic()
    procs = []
    for rank in range(2):
        renv = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, *worker], env=renv, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs, start


def _wait(proc: subprocess.Popen, deadline: float) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_a_rank_that_raises_ends_every_rank_with_its_error(tmp_path):
    """Rank 1 raises at its second step: it exits with that error, and rank 0 (waiting in that step's
    all-reduce) fails as soon as the peer's connection closes, long before the 30-minute timeout."""
    procs, start = _launch(tmp_path, "raise", timeout_minutes=30)
    results = [_wait(p, start + 240) for p in procs]
    assert results[FAULTY_RANK][0] not in (0, None) and MESSAGE in results[FAULTY_RANK][1]
    rc, out = results[0]
    assert rc is not None, f"rank 0 still waiting after 240 s:\n{out[-3000:]}"
    assert rc != 0 and "Connection closed by peer" in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_a_stalled_rank_fails_the_job_after_the_collective_timeout(tmp_path):
    """Rank 1 hangs (alive, sockets open): rank 0 fails once ``dist.timeout_minutes`` (0.1 = 6 s) passes,
    with gloo's timeout error; a launcher (torchrun) then stops the stalled rank."""
    procs, start = _launch(tmp_path, "stall", timeout_minutes=0.1)
    rc, out = _wait(procs[0], start + 240)
    procs[1].kill()
    procs[1].communicate()
    assert rc is not None, f"rank 0 still waiting after 240 s:\n{out[-3000:]}"
    assert rc != 0 and "Timed out" in out, out[-3000:]



@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """Rank 1 alone sees a NaN loss at step 2: all ranks agree to skip it (weights after step 2 equal
    those after step 1), then train on; both ranks finish, every checkpoint is finite."""
    import torch
    from safetensors.torch import load_file

    from pretrain.checkpointing import step_dir

    procs, start = _launch(tmp_path, "nan", timeout_minutes=2, steps=3, save_every=1, keep_last=5,
                           max_nonfinite_skips=1)
    for rc, out in (_wait(p, start + 240) for p in procs):
        assert rc == 0, out[-3000:]
    w = [load_file(step_dir(tmp_path / "run", s) / "model" / "model.safetensors") for s in (1, 2, 3)]
    assert all(torch.isfinite(v).all() for sd in w for v in sd.values())
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0]) and not all(torch.equal(w[1][k], w[2][k]) for k in w[0])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_metrics"]["nonfinite_skips"] == 1


if __name__ == "__main__":
    _inject(sys.argv[1])
    from clips_cli.main import main

    sys.exit(main(["--log-level", "WARNING", "pretrain", "--config", sys.argv[2]]))
