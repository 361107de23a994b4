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


# GEMM shapes (M, K, N) the roofline tries: a square one plus linear layers of ViT-B / text towers
# (M tokens x K in -> N out: qkv / MLP up / MLP down). No single shape is the best case for every
# layer: on an AVX2 EPYC the 1024^3 square ran below the 768 -> 3072 MLP shape at 2048 tokens.
CPU_ROOFLINE_SHAPES = ((1024, 1024, 1024), (2048, 768, 2304), (2048, 768, 3072), (2048, 3072, 768), (2048, 512, 2048))
GPU_ROOFLINE_SHAPES = ((8192, 8192, 8192), (16384, 1024, 3072), (16384, 1024, 4096), (16384, 4096, 1024))
# Emulated bf16 on CPUs without bf16 instructions runs at a few GFLOP/s: one small shape only.
EMULATED_ROOFLINE_SHAPES = ((512, 512, 2048),)


def roofline_shapes(dtype: torch.dtype, device: torch.device) -> tuple[tuple[int, int, int], ...]:
    """The GEMM shapes :func:`matmul_roofline` measures by default on ``device`` in ``dtype``."""
    if device.type == "cuda":
        return GPU_ROOFLINE_SHAPES
    if dtype != torch.float32 and device.type == "cpu":
        from .engines import native_bf16_cpu

        if not native_bf16_cpu():
            return EMULATED_ROOFLINE_SHAPES
    return CPU_ROOFLINE_SHAPES


def matmul_roofline(dtype: torch.dtype, device: str | torch.device = "cpu", n: int | None = None,
                    min_seconds: float = 0.15,
                    shapes: tuple[tuple[int, int, int], ...] | None = None) -> dict[str, float]:
    """Measured TFLOP/s of matmuls in ``dtype`` on ``device``: each GEMM shape ``(M, K, N)`` of
    ``shapes`` (default :func:`roofline_shapes`; ``n`` alone: one ``n^3`` square) in the two operand
    layouts a linear layer uses: ``nn`` (``a @ b``, the backward's input gradient) and ``nt``
    (``a @ b.T``, ``F.linear``'s forward).

    Returns ``{"nn", "nt", "best", "by_shape"}``: the best rate per layout over the shapes, their max
    (the MFU denominator) and ``{"MxKxN": best of both layouts}``. Layouts differ by 10x for
    emulated bf16, and shapes by up to 2x in fp32, so one shape in one layout can misstate the peak.
    """
    device = torch.device(device)
    if shapes is None:
        shapes = ((n, n, n),) if n else roofline_shapes(dtype, device)
    out = {"nn": 0.0, "nt": 0.0, "by_shape": {}}
    for m, k, nn_ in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, nn_, device=device).to(dtype)
        bt = torch.randn(nn_, k, device=device).to(dtype).t()
        best = 0.0
        for name, rhs in (("nn", b), ("nt", bt)):
            a @ rhs  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            reps, start = 0, time.perf_counter()
            while True:
                a @ rhs
                reps += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds and reps >= 2:
                    break
            rate = 2 * m * k * nn_ * reps / elapsed / 1e12
            out[name] = max(out[name], rate)
            best = max(best, rate)
        out["by_shape"][f"{m}x{k}x{nn_}"] = best
    out["best"] = max(out["nn"], out["nt"])
    return out


def matmul_tflops(dtype: torch.dtype, device: str | torch.device = "cpu", n: int | None = None,
                  min_seconds: float = 0.15) -> float:
    """The best matmul TFLOP/s of :func:`matmul_roofline` (the MFU denominator of the trainer and
    the benchmarks)."""
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
