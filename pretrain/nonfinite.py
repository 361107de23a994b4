"""NaN/Inf detection for the training loop: which loss terms or gradients of a step are non-finite.

A non-finite step is skipped (no parameter or optimizer-moment update) up to
``train.max_nonfinite_skips`` times over a run; the next one stops the run with
:class:`NonFiniteError`, naming the step and the loss terms. The checks are tensor reductions kept on
the device and agreed on by every rank with one all-reduce, so all ranks skip (or stop) together.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from . import distributed as D

GRADIENT = "gradient"  # the name of the gradient check among the loss-term names


class NonFiniteError(RuntimeError):
    """The run stops: a loss term, gradient or parameter became NaN/Inf (message names the step and what)."""


class NonFiniteStep(Exception):
    """One step had non-finite ``what`` (loss-term names, and/or :data:`GRADIENT`), agreed by all
    ranks; ``skipped``: its update was not applied (False when the engine had already applied it)."""

    def __init__(self, what: list[str], skipped: bool) -> None:
        super().__init__(", ".join(what))
        self.what, self.skipped = what, skipped


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds (the local shard of an FSDP2 DTensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def flag_nonfinite(flags: dict[str, torch.Tensor], terms: Mapping[str, torch.Tensor]) -> None:
    """OR ``isnan|isinf`` of every term into ``flags`` (0-dim bool tensors, no host sync)."""
    for name, value in terms.items():
        bad = ~torch.isfinite(value.detach()).all()
        flags[name] = flags[name] | bad if name in flags else bad


def agreed_nonfinite(flags: dict[str, torch.Tensor], grad_norm: torch.Tensor | None,
                     device: torch.device) -> list[str]:
    """Names of the non-finite terms on any rank (plus :data:`GRADIENT` when ``grad_norm``, the
    gradients' global norm, is given and non-finite: a NaN/Inf element, or a norm that overflows,
    which would break clipping too), the same list on every rank (collective: one all-reduce)."""
    names = sorted(flags)
    vec = [flags[n].to(device=device, dtype=torch.float32) for n in names]
    if grad_norm is not None:
        names.append(GRADIENT)
        vec.append((~torch.isfinite(grad_norm)).to(device=device, dtype=torch.float32))
    if not vec:
        return []
    total = D.all_reduce_sum(torch.stack(vec))
    return [n for n, v in zip(names, total.tolist()) if v > 0]


def first_nonfinite_parameter(named: Iterable[tuple[str, torch.Tensor]], device: torch.device) -> str | None:
    """Name of the first parameter/buffer holding NaN/Inf on any rank (None when all are finite).

    Collective: every rank checks its own (local shard of each) tensor, one all-reduce combines them.
    """
    named = list(named)
    if not named:
        return None
    bad = torch.stack([~torch.isfinite(_local(t).detach()).all() for _, t in named]).to(device, torch.float32)
    flags = D.all_reduce_sum(bad).tolist()
    return next((n for (n, _), f in zip(named, flags) if f > 0), None)
