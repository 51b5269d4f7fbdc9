"""Several processes (``torchrun``): setup, deterministic sharding, gathering with gradients.

Conventions used by :func:`brainkit.train.fit` when ``WORLD_SIZE > 1``:

- ``batch_size`` is the *global* batch. Every rank draws the same permutation of the training
  indices for an epoch (from ``(seed, epoch)``), cuts it into the same global batches, and
  takes its contiguous share of each (:func:`shard`, sizes differing by at most one).
- Each rank runs its share through the model (all views in one forward pass), then
  :func:`gather_views` all-gathers the outputs *with gradients* and reorders them so that
  every rank holds exactly the tensor a single process would have computed for the global
  batch (view-major: all samples' view 0, then all samples' view 1, ...). Every rank then
  evaluates the loss on the global batch.
- The backward pass of the gather sums the incoming gradients over ranks; with
  DistributedDataParallel's averaging of parameter gradients this gives exactly the gradient
  of the single-process loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_with_grad",
    "distributed_env",
    "gather_views",
    "setup_distributed",
    "shard",
    "shard_sizes",
    "teardown_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        As set by ``torchrun`` (0, 1, 0 for a single process).
    created_group : bool
        Whether :func:`setup_distributed` created the process group (and so should destroy
        it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def distributed_env() -> tuple[int, int, int] | None:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``.

    Returns
    -------
    tuple of int or None
        ``(rank, world_size, local_rank)``, or ``None`` when ``WORLD_SIZE`` is unset.
    """
    world = _env_int("WORLD_SIZE")
    if world is None:
        return None
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK")
    if rank is None:
        raise ValueError("WORLD_SIZE is set but RANK is not; launch with torchrun")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return rank, world, rank if local is None else local


def setup_distributed(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by ``torchrun`` and pick this rank's device.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under ``torchrun`` with CUDA, each rank uses
        ``cuda:LOCAL_RANK`` (an explicit index is overridden).

    Returns
    -------
    (DistInfo, torch.device)

    Notes
    -----
    An already initialised default process group is used as is. Otherwise, with
    ``WORLD_SIZE > 1`` the group is created with the ``nccl`` backend on CUDA and ``gloo``
    on CPU (``MASTER_ADDR`` / ``MASTER_PORT`` come from the environment, as torchrun sets).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        env = distributed_env()
        local = env[2] if env is not None else rank
        created = False
    else:
        env = distributed_env()
        if env is None or env[1] == 1:
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            return DistInfo(), device
        rank, world, local = env
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in "
                               "this torch build")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        created = True
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local, created), device


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.created_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows each rank holds when ``n`` rows are split as :func:`shard` does.

    Returns
    -------
    list of int
        ``world_size`` sizes summing to ``n``, the first ``n % world_size`` one larger.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    base, extra = divmod(int(n), world_size)
    return [base + (r < extra) for r in range(world_size)]


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (like :func:`numpy.array_split`).

    Parameters
    ----------
    batch : numpy.ndarray of shape (B,)
        The global batch (positions in the cohort).
    rank, world_size : int

    Returns
    -------
    numpy.ndarray of shape (shard_sizes(B, world_size)[rank],)
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    sizes = shard_sizes(len(batch), world_size)
    start = sum(sizes[:rank])
    return batch[start:start + sizes[rank]]


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward sums gradients over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        rank, world = dist.get_rank(), dist.get_world_size()
        if x.shape[0] != sizes[rank]:
            raise ValueError(f"rank {rank} holds {x.shape[0]} rows, expected {sizes[rank]}")
        longest = max(sizes)
        padded = x.new_zeros((longest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sizes, rank = ctx.sizes, ctx.rank
        longest = max(sizes)
        padded = grad.new_zeros((len(sizes), longest) + tuple(grad.shape[1:]))
        for r, chunk in enumerate(torch.split(grad, list(sizes), dim=0)):
            padded[r, : sizes[r]] = chunk
        dist.all_reduce(padded, op=dist.ReduceOp.SUM)
        return padded[rank, : sizes[rank]].clone(), None


def all_gather_with_grad(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """All-gather along dim 0 keeping the autograd graph (uneven sizes allowed).

    Parameters
    ----------
    x : torch.Tensor of shape (sizes[rank], ...)
        This rank's rows.
    sizes : sequence of int
        Rows held by every rank, in rank order (known to all ranks beforehand).

    Returns
    -------
    torch.Tensor of shape (sum(sizes), ...)
        Rank 0's rows, then rank 1's, ... The backward pass all-reduces (sums) the
        gradient of this output over ranks and returns this rank's slice, so that with
        DistributedDataParallel's gradient averaging the parameter gradients equal those of
        one process computing the same loss on the concatenated batch.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("all_gather_with_grad needs an initialised process group")
    return _AllGatherWithGrad.apply(x, tuple(int(s) for s in sizes))


def gather_views(out: torch.Tensor, sizes: Sequence[int], n_views: int) -> torch.Tensor:
    """Gather view-major model outputs from all ranks into the single-process order.

    Parameters
    ----------
    out : torch.Tensor of shape (n_views * sizes[rank], ...)
        This rank's outputs, view-major (all of its samples' view 0, then view 1, ...).
    sizes : sequence of int
        Samples (not rows) held by each rank.
    n_views : int

    Returns
    -------
    torch.Tensor of shape (n_views * sum(sizes), ...)
        View-major over the global batch: view 0 of rank 0's samples, of rank 1's, ...,
        then view 1 likewise; rows carry gradients back to the rank that computed them.
    """
    sizes = [int(s) for s in sizes]
    gathered = all_gather_with_grad(out, [n_views * s for s in sizes])
    offsets = np.concatenate([[0], np.cumsum([n_views * s for s in sizes])])
    order = [np.arange(offsets[r] + v * sizes[r], offsets[r] + (v + 1) * sizes[r])
             for v in range(n_views) for r in range(len(sizes))]
    index = torch.as_tensor(np.concatenate(order), dtype=torch.long, device=out.device)
    return gathered.index_select(0, index)
