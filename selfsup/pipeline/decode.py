"""Decoding encoded bytes to RGB uint8 arrays, with a reason for every failure."""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg-turbo messages that mean the data itself is damaged. OpenCV would still return
# a partly grey image for some of them, so these never fall back to it.
_CORRUPT_JPEG_MARKERS = ("Premature end", "Corrupt JPEG", "Bogus", "Invalid JPEG")


class DecodeError(Exception):
    """The bytes are not a decodable image; the message is the reason reported to users."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode to a C-contiguous H x W x 3 uint8 RGB array, or raise :class:`DecodeError`.

    JPEG goes through libjpeg-turbo (simplejpeg, GIL released); anything else, and JPEGs
    simplejpeg refuses (e.g. CMYK), through OpenCV, which also handles PNG, BMP, WebP, TIFF.
    """
    if len(data) == 0:
        raise DecodeError("empty file (0 bytes)")
    if data[:3] == JPEG_MAGIC:
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as e:
            jpeg_error = str(e)
        if any(m in jpeg_error for m in _CORRUPT_JPEG_MARKERS):
            raise DecodeError(f"corrupt or truncated JPEG ({jpeg_error})")
        img = _decode_cv2(data)
        if img is None:
            raise DecodeError(f"corrupt or truncated JPEG ({jpeg_error})")
        return img
    img = _decode_cv2(data)
    if img is None:
        raise DecodeError(f"not a decodable image (starts with {data[:8]!r})")
    return img


def _decode_cv2(data: bytes) -> np.ndarray | None:
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None or arr.size == 0:
        return None
    return np.ascontiguousarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
