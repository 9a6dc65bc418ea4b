"""Data-parallel training with ``torchrun`` (DistributedDataParallel), unchanged loops.

The training loops call the same few functions whether or not they run under
``torchrun``:

* :func:`setup` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun),
  initialises the process group once (gloo on CPU, nccl on CUDA) and returns a
  :class:`DistInfo`; without torchrun it returns the single-process info and
  does nothing.
* :func:`wrap` wraps a model in ``DistributedDataParallel`` when there is more
  than one process.
* :func:`shard` splits a *global* batch of indices into this rank's part and
  gives the factor by which to scale the local mean loss so that the averaged
  gradient equals the gradient of the global batch's mean loss — the
  single-process update, up to floating-point summation order, for any global
  batch size (not only multiples of the world size).
* :func:`all_reduce_sum` sums metrics across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def info() -> DistInfo:
    """This process's rank and the world size (from torch.distributed or the environment)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                        _env_int("LOCAL_RANK", 0))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent RANK={rank} / WORLD_SIZE={world}")
    return DistInfo(rank, world, _env_int("LOCAL_RANK", 0))


def _device(name: torch.device | str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(device: torch.device | str | None = "cpu") -> DistInfo:
    """Initialise the process group when launched by torchrun with more than one process.

    ``device`` (``None`` / ``"auto"``: CUDA if available) picks the backend: nccl for CUDA,
    gloo otherwise.
    """
    dist = info()
    if dist.distributed and not torch.distributed.is_initialized():
        device = _device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group(backend=backend)
    return dist


def device_for(name: str | None, dist: DistInfo) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs, else the named device."""
    dev = _device(name)
    if dev.type == "cuda" and dist.distributed:
        return torch.device("cuda", dist.local_rank)
    return dev


def rank_seed(seed: int, dist: DistInfo) -> int:
    """A seed per rank (``seed`` itself on rank 0), for what must differ across ranks: dropout."""
    return seed + 1_000_003 * dist.rank


def wrap(model: nn.Module, dist: DistInfo, broadcast_buffers: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` for multi-process runs, the model itself otherwise.

    ``broadcast_buffers`` is off by default: this library's buffers (IAT bases and quadrature
    weights) are constants built identically on every rank, so re-sending them before every
    forward is pure traffic; turn it on for models with running statistics (BatchNorm).
    """
    if not dist.distributed:
        return model
    params = next(model.parameters(), None)
    device_ids = [params.device.index] if params is not None and params.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=broadcast_buffers)


def shard(indices: torch.Tensor, dist: DistInfo) -> tuple[torch.Tensor, float]:
    """This rank's contiguous part of a global batch, and its loss scale.

    DDP averages gradients over ranks.  Scaling the local mean loss by
    ``world_size * n_local / n_global`` makes that average the gradient of the
    mean loss over the whole global batch, even when the batch does not split
    evenly.  A rank whose share is empty gets a zero-size slice and scale 0.
    """
    if not dist.distributed:
        return indices, 1.0
    n = indices.shape[0]
    bounds = [n * r // dist.world_size for r in range(dist.world_size + 1)]
    local = indices[bounds[dist.rank]:bounds[dist.rank + 1]]
    return local, dist.world_size * local.shape[0] / max(n, 1)


def collective_device() -> torch.device:
    """Where this rank's collective tensors must live: its CUDA device under NCCL (which
    rejects CPU tensors), else the CPU (gloo, or no process group)."""
    if (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: torch.Tensor | float, dist: DistInfo) -> torch.Tensor:
    """Sum a tensor (or number) over ranks; identity in a single process.  The result is
    float64 on the input tensor's device (the CPU for a number)."""
    home = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.distributed:
        t = t.to(collective_device())
        torch.distributed.all_reduce(t)
    return t.to(home)


def barrier(dist: DistInfo) -> None:
    if dist.distributed:
        torch.distributed.barrier()


def teardown() -> None:
    """Destroy the process group if this module's :func:`setup` created one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
