"""Where training numbers go: ``metrics.jsonl``, TensorBoard, a tqdm bar; and the matmul roofline
against which model-FLOPs utilisation (MFU) is reported."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


def matmul_roofline(dtype: torch.dtype, device: str | torch.device = "cpu", n: int = 1024,
                    min_seconds: float = 0.3) -> dict[str, float]:
    """Measured TFLOP/s of an ``n x n x n`` matmul in ``dtype`` on ``device``, in the two operand
    layouts a linear layer uses: ``nn`` (``a @ b``) and ``nt`` (``a @ b.T``, ``F.linear``'s forward).
    Returns ``{"nn", "nt", "best"}``; ``best`` is the MFU denominator.

    The layouts differ by 10x for emulated bf16 on CPUs without bf16 instructions, so one layout
    alone can misstate the peak; ``n`` = 1024 keeps the emulated case to seconds, not minutes.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = {}
    for name, rhs in (("nn", b), ("nt", b.t())):
        a @ rhs  # warm-up
        reps, start = 0, time.perf_counter()
        while True:
            a @ rhs
            reps += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and reps >= 2:
                break
        out[name] = 2 * n**3 * reps / elapsed / 1e12
    out["best"] = max(out["nn"], out["nt"])
    return out


def matmul_tflops(dtype: torch.dtype, device: str | torch.device = "cpu", n: int = 1024,
                  min_seconds: float = 0.3) -> float:
    """The best-layout matmul TFLOP/s of :func:`matmul_roofline` (the trainer's MFU denominator)."""
    return matmul_roofline(dtype, device, n, min_seconds)["best"]


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop lines with ``step > after_step`` (a resumed run rewrites what the killed one logged)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= after_step]
    path.write_text("".join(ln + "\n" for ln in keep))


class RunLogger:
    """Rank-0 sinks for scalars: ``<out_dir>/metrics.jsonl`` (one JSON object per logged step),
    TensorBoard event files under ``<out_dir>/tensorboard`` and a tqdm progress bar (ETA included).

    On other ranks (``active=False``) every method is a no-op.
    """

    def __init__(self, out_dir: Path, *, active: bool, tensorboard: bool, progress: bool, total_steps: int,
                 initial_step: int) -> None:
        self.active = active
        self._file = self._tb = self._bar = None
        if not active:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(out_dir / METRICS_FILE, initial_step)
        self._file = open(out_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=initial_step + 1)
            except ImportError:
                log.warning("tensorboard is not installed: scalars go to %s only", METRICS_FILE)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Record ``values`` at ``step`` in the JSONL log and TensorBoard."""
        if not self.active:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def advance(self, steps: int, postfix: dict[str, str] | None = None) -> None:
        """Move the progress bar by ``steps`` and show ``postfix`` (e.g. loss, samples/s)."""
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Flush and close every sink."""
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
