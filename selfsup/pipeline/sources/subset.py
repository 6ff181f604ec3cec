"""A source restricted to some of its samples (labelled subsets, self-training's balanced
pseudo-labels, selfsup profile's packing sample), and every sample's label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfsup.pipeline.sources.base import Source


def source_labels(source: Source) -> np.ndarray:
    """Every sample's label (int64, read-only), from ``source.labels`` when it has one, else
    by reading the samples one by one."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [source.read(i)[1] for i in range(len(source))]
    out = np.asarray(labels, dtype=np.int64).view()
    if out.shape != (len(source),):
        raise ValueError(f"{source!r} has {len(source)} samples but labels of shape {out.shape}")
    out.flags.writeable = False
    return out


class SubsetSource:
    """The samples ``indices`` of ``source``, in that order (repeats allowed: self-training
    duplicates samples to balance classes). Satisfies the ``Source`` protocol."""

    def __init__(self, source: Source, indices: Sequence[int] | np.ndarray) -> None:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"subset indices must be a non-empty 1-D integer array, got {idx.dtype} "
                f"of shape {idx.shape}"
            )
        bad = np.flatnonzero((idx < 0) | (idx >= len(source)))
        if bad.size:
            raise ValueError(
                f"subset index {idx[bad[0]]} (position {bad[0]}) is out of range for "
                f"{source!r} with {len(source)} samples"
            )
        self.source = source
        self.indices = idx.astype(np.int64)
        self.indices.flags.writeable = False
        self._labels = source_labels(source)[self.indices]
        self._labels.flags.writeable = False
        self.num_classes = source.num_classes

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        return self.source.read(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))

    @property
    def has_masks(self) -> bool:
        """Whether the wrapped source offers saliency masks (see ``engines.cpu``)."""
        inner = self.source
        return hasattr(inner, "read_mask") and bool(getattr(inner, "has_masks", True))

    def read_mask(self, index: int) -> np.ndarray | None:
        return self.source.read_mask(int(self.indices[index]))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"SubsetSource({self.source!r}, {len(self)} of {len(self.source)} samples)"
