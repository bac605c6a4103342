"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m robopol train ...`` starts N copies of the command; torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) tells each which rank it is.
:func:`setup` joins the process group (NCCL for CUDA devices, gloo for CPU). Outside torchrun every function
here is a no-op, so single-process code paths are unchanged.

Gradients are averaged by :func:`sync_gradients` between ``backward()`` and the optimiser step, one
flattened all-reduce per optimiser: what ``DistributedDataParallel`` does, done explicitly because robopol's
algorithms call their networks several times per update (target networks, critic ensembles, the mean-flow
JVP, best-of-N sampling), a pattern DDP's forward-hooked reducer does not follow. Identical initial weights
(:func:`broadcast_modules`) and identical averaged gradients keep every rank's weights, EMA copies and target
networks equal without further communication.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, and its ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, plots and videos."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Dist:
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: str, timeout_s: float = 1800.0) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; returns this rank and the device it trains on
    (``cuda`` becomes ``cuda:<local_rank>``, one GPU per process)."""
    if not launched():
        return Dist(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank if chosen.index is None else chosen.index)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                **({"device_id": chosen} if chosen.type == "cuda" else {}))
    return current(), chosen


def shutdown() -> None:
    """Leave the process group, every rank together: the barrier lets each finish the last collective before
    any tears down its connections (an evaluation under torchrun once crashed at exit, after its last
    all-gather, with the ranks leaving at different times)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collective tensors live: NCCL needs them on this rank's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (one all-reduce of their concatenation)."""
    world = current().world_size
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Each scalar metric averaged over ranks (every rank must pass the same keys)."""
    if current().world_size == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(values)
    values /= current().world_size
    return dict(zip(keys, values.cpu().tolist(), strict=True))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (in place, returned)."""
    if current().world_size > 1:
        moved = tensor.to(_device())
        dist.all_reduce(moved)
        tensor.copy_(moved)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    world = current().world_size
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if current().world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_modules(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if current().world_size == 1:
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            moved = tensor.data.to(_device())
            dist.broadcast(moved, src=0)
            tensor.data.copy_(moved)


def barrier() -> None:
    if current().world_size > 1:
        dist.barrier()
