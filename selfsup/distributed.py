"""Rank and world-size helpers and the collectives selfsup uses, in one small module.

Every function works without ``torch.distributed`` being initialised (one process: rank 0 of
a world of 1, collectives are no-ops), so the same code runs single- and multi-process. This
module imports torch only; the kernels, the pipeline and the trainer all use it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` over every rank (``op``: ``sum`` or ``max``); returns ``t``.

    Not differentiable: for values that need gradients across ranks use an autograd-aware
    collective.
    """
    if is_distributed():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t
