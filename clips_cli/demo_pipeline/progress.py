"""Stage-by-stage progress of the demo: a banner per stage with elapsed time and an ETA.

The ETA scales the expected seconds of the remaining stages by how fast the finished stages went
compared with their expectation (so a slower machine gets a longer ETA), once two minutes' worth
of expected work has run.
"""

from __future__ import annotations

import time
from typing import Sequence


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class StageClock:
    """Prints ``[demo k/n] <stage> | elapsed .. | ETA ..`` as each stage starts; ``weights`` are the
    expected seconds of the stages, in order."""

    def __init__(self, names: Sequence[str], weights: Sequence[float]) -> None:
        self.names, self.weights = list(names), list(weights)
        self.start = time.perf_counter()
        self.done = 0
        self.stage_times: dict[str, float] = {}
        self._stage_start = self.start

    def begin(self, name: str) -> None:
        """Close the previous stage (if any) and announce ``name``."""
        now = time.perf_counter()
        if self.done:
            self.stage_times[self.names[self.done - 1]] = now - self._stage_start
        k = self.names.index(name)
        self.done, self._stage_start = k + 1, now
        elapsed = now - self.start
        expected_done = sum(self.weights[:k])
        # Scale by the observed speed only once enough has run for the ratio to mean something.
        speed = elapsed / expected_done if expected_done >= 120 else 1.0
        eta = speed * sum(self.weights[k:])
        print(f"\n==== [demo {k + 1}/{len(self.names)}] {name} | elapsed {_fmt(elapsed)} | ETA {_fmt(eta)} ====",
              flush=True)

    def finish(self) -> float:
        """Close the last stage; returns the total wall time in seconds."""
        now = time.perf_counter()
        if self.done:
            self.stage_times[self.names[self.done - 1]] = now - self._stage_start
        print(f"\n==== demo finished in {_fmt(now - self.start)} ====", flush=True)
        return now - self.start
