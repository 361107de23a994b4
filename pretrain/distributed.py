"""Process-group setup and the collectives the trainer needs (no-ops on one process).

Launch with ``torchrun`` (it sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``); a plain
``python``/``clips`` process is rank 0 of 1. DeepSpeed needs a process group even alone, so
:func:`init_distributed` can create a one-process gloo group on request.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process: ``rank`` of ``world``, ``local_rank`` on its node, and its ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 (the one that logs and writes files)."""
        return self.rank == 0


def init_distributed(device: str | None = None, backend: str | None = None, timeout_minutes: float = 30.0,
                     force_group: bool = False) -> DistInfo:
    """Join the torchrun process group (or make a one-process group when ``force_group``).

    ``device`` None picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``backend`` None
    picks nccl for CUDA and gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if (world > 1 or force_group) and not dist.is_initialized():
        if world == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world, local_rank, dev)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_distributed() -> bool:
    """A process group with more than one member exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` [B,...] concatenated in rank order -> [world*B,...], differentiable.

    The backward pass sums the incoming gradients of every rank into each rank's slice, so a
    loss computed on the gathered batch trains every rank's encoders (global-batch negatives).
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` [B,...] concatenated in rank order, without autograd."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor; ``x`` is left unchanged)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
