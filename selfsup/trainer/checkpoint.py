"""Atomic checkpoints that hold everything needed to continue a run exactly."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from selfsup.errors import CheckpointError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, fsync, then rename.

    A crash or SIGKILL at any moment leaves either the previous checkpoint or the new one,
    never a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; the run has not saved one yet, "
            "so start it again without --resume"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded: {e}") from None
