"""Generators of every bad or unusual input the decoder must survive, for any test to import.

Each ``*_bytes`` function returns the encoded file; ``write_*`` helpers put things on disk.
Images are blocky (8x8-aligned flat colours) so that JPEG round trips stay within a few
levels and pixel comparisons can be tight.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# -- pixels --------------------------------------------------------------------------------


def pattern(h: int = 32, w: int = 48, seed: int = 0, block: int = 8) -> np.ndarray:
    """An asymmetric RGB uint8 image of flat ``block x block`` squares of random colours."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(-(-h // block), -(-w // block), 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(block, 0).repeat(block, 1)[:h, :w])


def orient_numpy(img: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation ``orientation`` applied to stored pixels (-> upright), in numpy."""
    t = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, -1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation]
    return np.ascontiguousarray(t(img))


INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


# -- encoders ------------------------------------------------------------------------------


def jpeg_bytes(img: np.ndarray, quality: int = 95) -> bytes:
    if img.ndim == 2:
        return simplejpeg.encode_jpeg(img[:, :, None], quality, colorspace="GRAY")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality, colorsubsampling="444")


def pillow_bytes(img: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img[..., ::-1] if img.ndim == 3 else img)
    assert ok
    return buf.tobytes()


def gif_bytes(img: np.ndarray) -> bytes:
    return pillow_bytes(img, "GIF")  # palette of the (few) colours of a blocky image


def webp_bytes(img: np.ndarray) -> bytes:
    return pillow_bytes(img, "WEBP", lossless=True)


def bmp_bytes(img: np.ndarray) -> bytes:
    return pillow_bytes(img, "BMP")


def tiff_bytes(img: np.ndarray) -> bytes:
    return pillow_bytes(img, "TIFF")


def cmyk_jpeg_bytes(img: np.ndarray) -> bytes:
    """An Adobe CMYK JPEG (as Photoshop writes them), via Pillow."""
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def gray_jpeg_bytes(h: int = 32, w: int = 48) -> tuple[bytes, np.ndarray]:
    gray = pattern(h, w)[:, :, 0].copy()
    return jpeg_bytes(gray), gray


def png16_bytes(h: int = 16, w: int = 24) -> tuple[bytes, np.ndarray]:
    """A 16-bit RGB PNG and its uint16 RGB pixels (the full range, low bytes not zero)."""
    rng = np.random.default_rng(1)
    px = rng.integers(0, 65536, size=(h, w, 3), dtype=np.uint16)
    px[0, 0] = (0, 65535, 32768)
    ok, buf = cv2.imencode(".png", px[..., ::-1])
    assert ok
    return buf.tobytes(), px


def rgba_png_bytes(img: np.ndarray, alpha: int = 0) -> bytes:
    rgba = np.dstack([img, np.full(img.shape[:2], alpha, np.uint8)])
    return pillow_bytes(rgba, "PNG")


def exif_app1(orientation: int, byteorder: str = "little") -> bytes:
    """An APP1 Exif segment whose IFD0 holds only the Orientation tag."""
    le = byteorder == "little"

    def u16(v: int) -> bytes:
        return v.to_bytes(2, byteorder)

    def u32(v: int) -> bytes:
        return v.to_bytes(4, byteorder)

    tiff = (b"II" if le else b"MM") + u16(42) + u32(8)
    tiff += u16(1) + u16(0x0112) + u16(3) + u32(1) + u16(orientation) + b"\x00\x00" + u32(0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def exif_jpeg_bytes(upright: np.ndarray, orientation: int, byteorder: str = "little") -> bytes:
    """A JPEG whose stored pixels, once ``orientation`` is applied, are ``upright``."""
    stored = orient_numpy(upright, INVERSE_ORIENTATION[orientation])
    data = jpeg_bytes(stored)
    return data[:2] + exif_app1(orientation, byteorder) + data[2:]


def flat_jpeg_bytes(h: int, w: int, color=(200, 30, 90)) -> bytes:
    """A flat-colour JPEG of any size (60 MP compresses to a few hundred KB)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = color
    return simplejpeg.encode_jpeg(img, 75, colorsubsampling="420")


def jpeg_claiming_size(h: int, w: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``h x w``: a decompression bomb's header."""
    data = bytearray(jpeg_bytes(pattern(8, 8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 7] = h.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = w.to_bytes(2, "big")
    return bytes(data)


def png_claiming_size(h: int, w: int) -> bytes:
    """A PNG whose IHDR claims ``h x w`` (the CRC is left stale: never read before the check)."""
    data = bytearray(png_bytes(pattern(8, 8)))
    data[16:20] = w.to_bytes(4, "big")
    data[20:24] = h.to_bytes(4, "big")
    return bytes(data)


# -- broken files --------------------------------------------------------------------------


def truncated_jpeg_bytes(header_only: bool = False) -> bytes:
    """A JPEG cut in the middle of its scan data (or of its header, ``header_only``)."""
    if header_only:
        return jpeg_bytes(pattern(64, 64))[:200]
    data = jpeg_bytes(pattern(64, 64, block=1))  # noise: most of the file is scan data
    return data[: len(data) // 2]


def extraneous_bytes_jpeg(upright: np.ndarray) -> bytes:
    """An intact JPEG (rotated by EXIF orientation 6) with 3 stray bytes between two header
    segments: libjpeg warns "extraneous bytes before marker", the pixels are all there."""
    data = exif_jpeg_bytes(upright, 6)
    app1_end = 4 + int.from_bytes(data[4:6], "big")
    return data[:app1_end] + b"\x12\x34\x56" + data[app1_end:]


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def zero_bytes() -> bytes:
    return b""


# Undecodable payloads and the word the reason must contain.
UNDECODABLE = {
    "truncated_jpeg": (truncated_jpeg_bytes, "truncated"),
    "random_bytes": (random_bytes, "not a decodable image"),
    "zero_bytes": (zero_bytes, "empty"),
    "bomb_jpeg": (lambda: jpeg_claiming_size(60000, 60000), "too large"),
}


# -- on disk -------------------------------------------------------------------------------


def write_folder(root: Path, n_good: int = 9, classes: int = 1, size: int = 24) -> list[Path]:
    """An ImageFolder of ``n_good`` good JPEGs per class; the paths in sorted order."""
    paths = []
    for c in range(classes):
        d = Path(root) / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_good):
            p = d / f"good{i:03d}.jpg"
            p.write_bytes(jpeg_bytes(pattern(size, size, seed=100 * c + i)))
            paths.append(p)
    return paths


def write_unreadable(path: Path, how: str = "symlink") -> Path:
    """Something at ``path`` that lists like an image file but cannot be read, even by root:
    a dangling symlink (``how="symlink"``) or a directory (``how="directory"``: create the
    source first, then call this; a directory is not listed as a file)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        path.unlink()
    if how == "symlink":
        os.symlink(path.parent / "does-not-exist.jpg", path)
    else:
        path.mkdir()
    return path


# -- tar shards ----------------------------------------------------------------------------


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """A webdataset-style tar: ``{key: {ext: data}}`` becomes members ``key.ext``."""
    import tarfile

    path = Path(path)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def truncate_file(path: Path, size: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(size)
    return path
