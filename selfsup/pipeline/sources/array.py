"""In-memory pixel arrays: CIFAR-style ``N x H x W x 3`` (or gray ``N x H x W``), or a list
of differently sized ``H x W x 3`` / ``H x W`` arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfsup.errors import DataError


def _check_image(a: np.ndarray, where: str) -> None:
    if not isinstance(a, np.ndarray):
        raise DataError(f"{where} is a {type(a).__name__}, not a numpy array")
    if a.dtype != np.uint8:
        raise DataError(
            f"{where} has dtype {a.dtype}; images must be uint8 (for floats in [0, 1] use "
            "(x * 255).round().astype(np.uint8))"
        )
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
        raise DataError(f"{where} has shape {a.shape}; expected H x W x 3 (RGB) or H x W (gray)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{where} has shape {a.shape}: no pixels")


class ArraySource:
    """Samples held in memory as uint8 pixels; ``read`` returns a view (no copy).

    ``images``: an ``N x H x W x 3`` (RGB), ``N x H x W x 1`` or ``N x H x W`` (gray) uint8
    array, or a sequence of ``H x W x 3`` / ``H x W`` uint8 arrays of any sizes.
    ``labels``: ``N`` non-negative integers, or ``None`` for unlabelled data (all 0).
    ``num_classes``: defaults to ``max(labels) + 1``.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[int] | None = None,
        *,
        num_classes: int | None = None,
        name: str = "array",
    ) -> None:
        self.name = name
        if isinstance(images, (list, tuple)):
            for i, img in enumerate(images):
                _check_image(img, f"{name} image {i}")
            n = len(images)
        else:
            images = np.asarray(images)
            if images.ndim not in (3, 4):
                raise DataError(
                    f"{name} images have shape {images.shape}; expected N x H x W x 3 (RGB), "
                    "N x H x W (gray) or a list of H x W x 3 arrays"
                )
            if len(images):
                _check_image(images[0], f"{name} images (shape {images.shape})")
            n = len(images)
        if n == 0:
            raise DataError(f"{name} holds no images")
        self.images = images
        if labels is None:
            labels = np.zeros(n, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"{name} labels have shape {labels.shape}; expected ({n},): one per image"
            )
        if labels.dtype.kind not in "iu":
            raise DataError(f"{name} labels have dtype {labels.dtype}; expected integers")
        if labels.min() < 0:
            i = int(np.argmin(labels))
            raise DataError(f"{name} label {i} is {labels[i]}; labels must be >= 0")
        self.labels = labels.astype(np.int64, copy=False)
        top = int(self.labels.max()) + 1
        if num_classes is not None and num_classes < top:
            raise DataError(
                f"{name}: num_classes={num_classes} but a label is {top - 1}; "
                f"give num_classes >= {top}"
            )
        self.num_classes = num_classes if num_classes is not None else top

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, {len(self)} images, {self.num_classes} classes)"
