"""Decoding payloads to RGB uint8 arrays, with a reason for every failure.

``decode_image`` turns whatever a source returns into a C-contiguous ``H x W x 3`` uint8 RGB
array, or raises :class:`DecodeError` with a one-line reason:

- **JPEG** (the common case) goes through libjpeg-turbo (simplejpeg, GIL released). The
  header is walked once in Python for the size (checked against ``max_pixels`` *before*
  decoding, so a decompression bomb cannot exhaust memory) and the EXIF orientation, which
  is applied to the decoded pixels. Grayscale and CMYK JPEGs come out as RGB. With
  ``max_reduction=r`` libjpeg-turbo's DCT scaling may return the image smaller by 2, 4 or 8.
- **Anything else** is recognised by its content, never by the file name: PNG, BMP, WebP,
  TIFF, GIF, ... through OpenCV, and through Pillow for what OpenCV refuses. 16-bit images
  are scaled to 8 bits (``round(v * 255 / 65535)``, not truncated); an alpha channel is
  dropped (the colour channels are kept as stored, as Pillow's ``convert("RGB")`` does);
  multi-frame files give their first frame. EXIF orientation is applied to JPEG only.
- **numpy arrays** (sources that store pixels) are validated: uint8 ``H x W x 3`` is
  returned as is (no copy when C-contiguous); ``H x W`` and ``H x W x 1`` gray become RGB.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import simplejpeg

JPEG_MAGIC = b"\xff\xd8\xff"
DEFAULT_MAX_PIXELS = 250_000_000
REDUCTIONS = (8, 4, 2)  # DCT scale factors libjpeg-turbo decodes exactly, largest first

# libjpeg-turbo messages that mean the data itself is damaged. OpenCV would still return
# a partly grey image for some of them, so these never fall back to it.
_CORRUPT_JPEG_MARKERS = ("Premature end", "Corrupt JPEG", "Bogus", "Invalid JPEG")
# ... except this warning, which intact files from common cameras and scanners raise (a few
# ImageNet files among them): bytes between two markers that the decoder skips.
_BENIGN_JPEG_WARNING = "extraneous bytes before marker"
# SOFn markers carrying the frame size (not DHT C4, JPG C8 or DAC CC).
_SOF_MARKERS = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)


class DecodeError(Exception):
    """The payload is not a decodable image; the message is the reason reported to users."""


# -- public API ----------------------------------------------------------------------------


def decode_image(
    data: bytes | np.ndarray, *, max_reduction: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode to a C-contiguous ``H x W x 3`` uint8 RGB array, or raise :class:`DecodeError`.

    ``max_reduction``: for JPEG, the image may come back smaller by a factor ``r`` in
    {1, 2, 4, 8}, ``r <= max_reduction`` (libjpeg-turbo's DCT scaling, much cheaper than
    decoding in full and resizing); each side is then ``ceil(side / r)``, pixel ``i`` covering
    full-resolution pixels ``[r i, r i + r)`` (the last one a partial block), so coordinates
    map by exactly ``1/r``, not by the ratio of the sides. Callers find ``r`` as the one
    with ``ceil(side / r)`` equal to the returned shape for the :func:`image_size` sides
    (unique, as only images with both sides >= 8 are reduced). Other formats ignore it.
    ``max_pixels``: images whose header declares more pixels (at full resolution) are
    rejected before decoding.
    """
    if isinstance(data, np.ndarray):
        return _from_array(data)
    if len(data) == 0:
        raise DecodeError("empty file (0 bytes)")
    if data[:3] == JPEG_MAGIC:
        return _decode_jpeg(data, max_reduction, max_pixels)
    fmt = _sniff(data)
    size = _header_size(data, fmt)
    if size is not None:
        _check_pixels(size, max_pixels)
    img = _decode_cv2(data)
    if img is None:
        img = _decode_pillow(data, max_pixels)
    if isinstance(img, str):
        what = f"corrupt or truncated {fmt}" if fmt else "not a decodable image"
        raise DecodeError(f"{what} ({img}; starts with {bytes(data[:8])!r})")
    _check_pixels(img.shape[:2], max_pixels)  # formats whose size the header check missed
    return img


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(height, width)`` of the full-resolution image as :func:`decode_image` returns it
    (after EXIF orientation), read from the header only; ``None`` if it cannot be told."""
    if isinstance(data, np.ndarray):
        return (int(data.shape[0]), int(data.shape[1])) if data.ndim >= 2 else None
    if len(data) == 0:
        return None
    if data[:3] == JPEG_MAGIC:
        h, w, orientation = _jpeg_header(data)
        if h <= 0 or w <= 0:
            try:
                h, w = simplejpeg.decode_jpeg_header(data)[:2]
            except ValueError:
                return None
        return (w, h) if orientation >= 5 else (h, w)
    return _header_size(data, _sniff(data))


# -- JPEG ------------------------------------------------------------------------------------


def _decode_jpeg(data: bytes, max_reduction: int, max_pixels: int) -> np.ndarray:
    h, w, orientation = _jpeg_header(data)
    if h <= 0 or w <= 0:  # no SOF found by the quick walk: ask libjpeg
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
        except ValueError as e:
            raise DecodeError(f"corrupt JPEG header ({e})") from None
    _check_pixels((h, w), max_pixels)
    r = _reduction(h, w, max_reduction)
    kwargs = {}
    if r > 1:
        # Smallest scale n/8 giving at least ceil(side / r) pixels is exactly n = 8 / r
        # when both sides are >= 8 (checked by _reduction); min_factor rules out others.
        kwargs = dict(min_height=-(-h // r), min_width=-(-w // r), min_factor=r)
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kwargs)
    except ValueError as e:
        img, jpeg_error = None, str(e)
    if img is None:
        benign = _BENIGN_JPEG_WARNING in jpeg_error
        if benign:  # the data are intact: decode leniently (OpenCV below if that fails too)
            try:
                img = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, **kwargs)
            except ValueError:
                pass
        elif any(m in jpeg_error for m in _CORRUPT_JPEG_MARKERS):
            raise DecodeError(f"corrupt or truncated JPEG ({jpeg_error})")
    if img is None:
        img = _decode_cv2(data)  # e.g. 12-bit or lossless JPEG
        if img is None:
            img = _decode_pillow(data, max_pixels)
        if isinstance(img, str):
            raise DecodeError(f"corrupt or truncated JPEG ({jpeg_error})")
    return _orient(img, orientation) if orientation > 1 else img


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) of a JPEG's header, 1 when absent or unreadable."""
    return _jpeg_header(data)[2]


def _reduction(h: int, w: int, max_reduction: int) -> int:
    if max_reduction < 2 or min(h, w) < 8:
        return 1
    return next((r for r in REDUCTIONS if r <= max_reduction), 1)


def _jpeg_header(data: bytes) -> tuple[int, int, int]:
    """``(height, width, exif_orientation)`` from one walk over the JPEG markers up to the
    first scan; 0 for a size not found, 1 (upright) for an orientation not found."""
    h = w = 0
    orientation = 1
    n = len(data)
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:  # garbage between segments: resynchronise as libjpeg does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the header is over
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        seg = pos + 4
        end = pos + 2 + length
        if length < 2 or end > n:
            break
        if marker == 0xE1 and orientation == 1 and data[seg : seg + 6] == b"Exif\x00\x00":
            orientation = _exif_orientation(data, seg + 6, end)
        elif marker in _SOF_MARKERS and end - seg >= 5:
            h = (data[seg + 1] << 8) | data[seg + 2]
            w = (data[seg + 3] << 8) | data[seg + 4]
        pos = end
    return h, w, orientation


def _exif_orientation(data: bytes, start: int, end: int) -> int:
    """The Orientation tag (0x0112) of IFD0 of the TIFF structure in ``data[start:end]``;
    1 when absent or malformed. Every offset is bounds-checked against ``end``."""
    if end - start < 8:
        return 1
    order = data[start : start + 2]
    if order == b"II":
        little = True
    elif order == b"MM":
        little = False
    else:
        return 1

    def u16(p: int) -> int:
        b = data[p : p + 2]
        return b[0] | (b[1] << 8) if little else (b[0] << 8) | b[1]

    def u32(p: int) -> int:
        return int.from_bytes(data[p : p + 4], "little" if little else "big")

    if u16(start + 2) != 42:
        return 1
    ifd = start + u32(start + 4)
    if ifd < start + 8 or ifd + 2 > end:
        return 1
    count = u16(ifd)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > end:
            return 1
        if u16(entry) == 0x0112:
            kind, num = u16(entry + 2), u32(entry + 4)
            if kind != 3 or num < 1:  # SHORT
                return 1
            value = u16(entry + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation ``2..8`` (stored pixels -> upright), as Pillow's
    ``ImageOps.exif_transpose``. The result is C-contiguous."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


# -- other formats ---------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"\xff\xd8":
        return "JPEG"
    return None


def _header_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """``(height, width)`` from the header of a non-JPEG image, or ``None``."""
    d = bytes(data[:32])
    n = len(d)
    if fmt == "PNG" and n >= 24 and d[12:16] == b"IHDR":
        return int.from_bytes(d[20:24], "big"), int.from_bytes(d[16:20], "big")
    if fmt == "GIF" and n >= 10:
        return int.from_bytes(d[8:10], "little"), int.from_bytes(d[6:8], "little")
    if fmt == "BMP" and n >= 26:
        if int.from_bytes(d[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
            return int.from_bytes(d[20:22], "little"), int.from_bytes(d[18:20], "little")
        w = int.from_bytes(d[18:22], "little", signed=True)
        h = int.from_bytes(d[22:26], "little", signed=True)
        return abs(h), abs(w)
    if fmt == "WebP" and n >= 30:
        chunk = d[12:16]
        if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
            w = int.from_bytes(d[26:28], "little") & 0x3FFF
            h = int.from_bytes(d[28:30], "little") & 0x3FFF
            return h, w
        if chunk == b"VP8L" and d[20] == 0x2F:
            bits = int.from_bytes(d[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(d[27:30], "little") + 1, int.from_bytes(d[24:27], "little") + 1
    try:  # anything else Pillow knows: its open() reads the header only
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size[1], im.size[0]
    except Exception as e:  # noqa: BLE001 - unknown or damaged: the decoders will say why
        if type(e).__name__ == "DecompressionBombError":  # Pillow's own (lower) limit
            raise DecodeError(f"image too large ({e})") from None
        return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    h, w = size
    if h * w > max_pixels:
        raise DecodeError(
            f"image too large: {w}x{h} = {h * w / 1e6:.0f} megapixels, above max_pixels="
            f"{max_pixels / 1e6:.0f} MP (a decompression bomb, or raise max_pixels)"
        )
    if h <= 0 or w <= 0:
        raise DecodeError(f"image has no pixels ({w}x{h})")


def _decode_cv2(data: bytes) -> np.ndarray | None:
    try:
        # UNCHANGED keeps 16-bit depth (scaled properly below) and ignores EXIF orientation.
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.size == 0:
        return None
    if arr.dtype == np.uint16:
        arr = cv2.convertScaleAbs(arr, alpha=255.0 / 65535.0)  # rounds and saturates
    elif arr.dtype != np.uint8:
        return None  # float / signed samples (HDR, some TIFFs): let Pillow try
    if arr.ndim == 2 or arr.shape[2] == 1:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)  # alpha dropped
    return None


def _decode_pillow(data: bytes, max_pixels: int) -> np.ndarray | str:
    """Decode with Pillow (for what OpenCV refuses); the reason as a string on failure."""
    try:
        from PIL import Image
    except ImportError:
        return "OpenCV cannot decode it and Pillow is not installed"
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels((im.size[1], im.size[0]), max_pixels)
            im.seek(0)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
                return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside a codec is a bad sample
        return str(e) or type(e).__name__


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise DecodeError(
            f"pixel array has dtype {a.dtype}; sources must give uint8 (e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1])"
        )
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise DecodeError(f"pixel array has shape {a.shape}; expected H x W x 3 or H x W")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DecodeError(f"pixel array has no pixels (shape {a.shape})")
    if a.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        return np.ascontiguousarray(a[:, :, :3])  # alpha dropped
    return np.ascontiguousarray(a)
