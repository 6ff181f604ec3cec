"""The source interface: random access to samples ``(payload, label)``.

The payload is the encoded image (``bytes``: JPEG, PNG, ...) or, for sources that store
pixels (in-memory arrays, raw ``.beton`` fields), a decoded ``H x W x 3`` (or ``H x W``)
uint8 numpy array. ``decode.decode_image`` accepts both.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# File extensions of the image formats ``decode.decode_image`` reads (lower case, no dot):
# what an image folder lists and what a tar shard's image member may be called.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")


@runtime_checkable
class Source(Protocol):
    """Random access to encoded samples.

    ``read(i)`` returns the payload (encoded bytes or a uint8 pixel array) and integer
    label of sample ``i``; it raises ``OSError`` when the sample cannot be read at all.
    ``describe(i)`` names the sample for error reports (a path, or ``file.beton#i``).
    """

    num_classes: int

    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]: ...

    def describe(self, index: int) -> str: ...
