"""Rank and world-size helpers and the collectives selfsup uses, in one small module.

Every function works without ``torch.distributed`` being initialised (one process: rank 0 of
a world of 1, collectives are no-ops), so the same code runs single- and multi-process. This
module imports torch only; the kernels, the pipeline and the trainer all use it.

How the collectives inside a loss must behave under ``DistributedDataParallel`` (which
averages gradients over the W ranks), so that W processes with batch B compute exactly the
gradient of one process with batch W*B:

- ``gather_with_grad``: every rank gets every rank's tensor (e.g. contrastive keys). Its
  backward all-reduces (sums) the gradient of the whole gathered tensor over the ranks and
  keeps this rank's slice: a key serves as a negative on every rank, so its gradient is the
  sum of what every rank's loss says about it. (Keeping only this rank's slice of the local
  gradient, or all-reducing only that slice, are both wrong.)
- ``all_reduce_with_grad``: a statistic summed over ranks (global BN moments, a Barlow Twins
  cross-correlation). Its backward is again a sum over ranks. A raw ``dist.all_reduce`` is
  invisible to autograd: the gradient would come out W times too small.
- ``gather_no_grad`` / ``all_reduce_``: stop-gradient targets (MoCo keys, centres, codes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from selfsup.errors import SelfsupError

# -- who am I ------------------------------------------------------------------------------


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, logs and writes files."""
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or anything setting its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not launched)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes on this node (``LOCAL_WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def node_cores() -> int:
    """CPU cores this process may run on (its affinity mask), i.e. the node's share."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cores_per_process() -> int:
    """This node's cores divided among its processes (at least 1): the default thread count
    for the decode engine and for torch, so that N ranks on a node do not each take every core."""
    return max(1, node_cores() // local_world_size())


def init_from_env(device_type: str) -> bool:
    """Start the default process group when launched by torchrun and not yet started.

    NCCL for CUDA (and the current device set to ``LOCAL_RANK``), gloo for CPU. Returns
    whether a process group is initialised (a torchrun of one process gets one too)."""
    if is_distributed() or not launched():
        return is_distributed()
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


# -- collectives -----------------------------------------------------------------------------


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` over every rank (``op``: ``sum``, ``max`` or ``mean``);
    returns ``t``.

    Not differentiable: for values that need gradients across ranks use
    :func:`all_reduce_with_grad`.
    """
    if is_distributed():
        if op == "mean":
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= world_size()
        else:
            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order; no gradient (stop-gradient
    targets such as momentum keys). Every rank must pass the same shape."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.dim, ctx.size = dim, x.shape[dim]
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The sum over ranks of every rank's gradient for the whole gathered tensor, then this
        # rank's slice: what all ranks' losses say about the samples this rank contributed.
        # (A copy: autograd may hand the same gradient tensor to other branches.)
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.dim, rank() * ctx.size, ctx.size), None


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order, differentiable.

    Backward sums the gathered gradient over ranks and keeps this rank's slice (module doc);
    with DDP's averaging, W ranks then train exactly as one process on the whole batch. Every
    rank must pass the same shape. Without a process group it returns ``x``.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x, dim)


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # every rank's output is the same sum, so d(all losses)/dx_r sums over ranks
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable (backward: the sum of the ranks' gradients).
    Without a process group it returns ``x``."""
    if world_size() == 1:
        return x
    return _AllReduceWithGrad.apply(x)


def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` [n_r, ...] concatenated along dim 0 in rank order, where the n_r may
    differ (e.g. the last, short batch of an evaluation pass); no gradient."""
    if world_size() == 1:
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = gather_no_grad(n).tolist()
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: len(x)] = x
    parts = gather_no_grad(padded[None])
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (small things: a path, a number)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (small things only)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# -- errors and barriers ---------------------------------------------------------------------


class RankError(SelfsupError):
    """Another rank failed; this one stops too (the failing rank printed why)."""


@contextmanager
def together(what: str) -> Iterator[None]:
    """Run a block that may fail on some ranks only (a data path missing on one node): at the
    end every rank learns whether any failed, and then every rank raises, so that none waits
    forever in the next collective. The failing rank re-raises its own error; the others raise
    :class:`RankError` naming it. Without a process group it is a plain block."""
    if world_size() == 1:
        yield
        return
    failure: BaseException | None = None
    try:
        yield
    except BaseException as e:  # re-raised below, after the other ranks have been told
        failure = e
    report = None if failure is None else f"{type(failure).__name__}: {failure}"
    reports = gather_objects(report)
    if any(m is not None for m in reports):
        if failure is None:
            r, message = next((r, m) for r, m in enumerate(reports) if m is not None)
            failure = RankError(f"{what} failed on rank {r} ({message.split(': ', 1)[-1]})")
        failure.every_rank = True  # see leave_together
        raise failure


def leave_together(error: BaseException) -> None:
    """Before a rank exits on an error that every rank raised together (from ``together``),
    wait for the others: all of them get to report before torchrun, seeing the first exit,
    stops the rest. Any other error returns at once (the other ranks may be anywhere)."""
    if getattr(error, "every_rank", False) and world_size() > 1:
        dist.barrier()
