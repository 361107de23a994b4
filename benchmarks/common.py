"""What every benchmark shares: the machine it ran on, peak resident memory, step timing, and the two outputs (a markdown table on stdout, one JSON line appended to
the results file).

Shared machines are noisy, so a benchmark compares figures measured in the same run: its ratios
and its MFU (model FLOPs per second / :func:`pretrain.metrics.matmul_roofline` measured in the
same process, before and after the timed work, best of the two).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from pretrain.engines import native_bf16_cpu

DEFAULT_OUT = Path("runs/bench/results.jsonl")


def machine_info() -> dict:
    """CPU model, PyTorch's CPU capability, native bf16, threads and load, for every result."""
    model = ""
    try:
        model = next((ln.partition(":")[2].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    info = {"cpu": model or platform.processor(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16_cpu(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Context manager sampling this process's RSS every ``interval`` seconds in a thread.

    ``peak_mib``: the highest RSS seen inside the block; ``base_mib``: RSS on entry;
    ``delta_mib``: their difference (what the block itself needed, allocator caching aside).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base_mib = self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, rss_mib())

    def __enter__(self) -> "PeakRSS":
        self.base_mib = self.peak_mib = rss_mib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, rss_mib())

    @property
    def delta_mib(self) -> float:
        """Peak minus entry RSS in MiB."""
        return self.peak_mib - self.base_mib


def time_calls(fn: Callable[[], object], steps: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` for ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` in the row dicts, ``header`` text, ``fmt`` (a format spec)."""

    key: str
    header: str
    fmt: str = ""


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """Rows as a GitHub markdown table (missing values print as ``-``)."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c.key)
            cells.append("-" if v is None else format(v, c.fmt) if c.fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def append_results(out: str | Path, benchmark: str, rows: Sequence[dict], args: dict, notes: Sequence[str] = ()) -> dict:
    """Append one JSON line ``{benchmark, time, machine, args, rows, notes}`` to ``out`` (created
    with its folder if missing); returns the record."""
    record = {"benchmark": benchmark, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(), "args": args, "rows": list(rows), "notes": list(notes)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:  # one write of one line: readers see whole records
        f.write(json.dumps(record, default=str) + "\n")
    return record


def report(out: str | Path | None, benchmark: str, rows: Sequence[dict], columns: Sequence[Column], args: dict,
           notes: Sequence[str] = ()) -> dict:
    """Print the markdown table (and notes) and append the JSON record to ``out`` (None: no file)."""
    info = machine_info()
    print(f"\n### {benchmark}\n")
    print(f"{info['cpu']} ({info['cpu_capability']}, native bf16: {info['native_bf16']}), "
          f"{info['threads']} threads, load {info.get('load_1m', '?')}\n")
    print(markdown_table(rows, columns))
    for n in notes:
        print(f"\n{n}")
    record = {"benchmark": benchmark, "rows": list(rows)}
    if out is not None:
        record = append_results(out, benchmark, rows, args, notes)
    return record
