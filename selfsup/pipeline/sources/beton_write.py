"""Writing FFCV ``.beton`` files byte-compatible with ffcv 1.0.x (layout in ``beton.py``).

The writer lays pages out like ffcv's ``DatasetWriter`` with one worker, so its output is the
same bytes whatever the number of encode threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from selfsup.errors import DataError
from selfsup.pipeline.sources.beton import (
    ALLOC_DTYPE,
    CURRENT_VERSION,
    DEFAULT_PAGE_SIZE,
    FIELD_DESC_DTYPE,
    HEADER_DTYPE,
    INT,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    MODE_JPG,
    MODE_RAW,
    RGB_IMAGE,
    RGB_META_DTYPE,
)

_WRITE_MODES = {"jpg": MODE_JPG, "raw": MODE_RAW}


@dataclass
class WriteSummary:
    """What :func:`write_beton` wrote, and which input samples it skipped and why."""

    path: str
    written: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    bytes: int = 0
    pages: int = 0


def resize_longest_side(image: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """Shrink so the longest side is ``max_resolution`` (INTER_AREA), exactly as ffcv does."""
    if max_resolution is None:
        return image
    h, w = image.shape[:2]
    ratio = max_resolution / max(w, h)
    if ratio >= 1:
        return image
    # ffcv truncates (ratio * size) towards zero; keep that so the pixels match.
    new_w, new_h = (int(v) for v in (ratio * np.array([w, h])).astype(int))
    return cv2.resize(image, (max(new_w, 1), max(new_h, 1)), interpolation=cv2.INTER_AREA)


def encode_image(
    image: np.ndarray, mode: str, max_resolution: int | None, jpeg_quality: int
) -> tuple[int, int, int, bytes]:
    """(mode id, width, height, stored bytes) of one RGB image, as ffcv's RGBImageField."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise DataError(
            f"write_beton needs uint8 numpy images, got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}; decode first (selfsup.pipeline.decode.decode_image)"
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"write_beton needs H x W x 3 RGB images, got shape {image.shape}")
    image = resize_longest_side(image, max_resolution)
    h, w = image.shape[:2]
    if h > 65535 or w > 65535:
        raise DataError(
            f"image of {w}x{h} is too large for a .beton (sides are stored as uint16); "
            "set max_resolution (--max-res)"
        )
    if mode == "raw":
        return MODE_RAW, w, h, np.ascontiguousarray(image).tobytes()
    ok, jpg = cv2.imencode(
        ".jpg",
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality],
    )
    if not ok:
        raise DataError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return MODE_JPG, w, h, jpg.tobytes()


def _auto_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def write_beton(
    path: str | Path,
    samples: Sequence[tuple[np.ndarray | Callable[[], np.ndarray], int]],
    *,
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    mode: str = "jpg",
    page_size: int = DEFAULT_PAGE_SIZE,
    workers: int = 0,
    progress: bool = True,
    skip_errors: tuple[type[BaseException], ...] = (),
    describe: Callable[[int], str] | None = None,
) -> WriteSummary:
    """Write ``samples`` to an ffcv 1.0.x ``.beton``: ``image`` (RGBImage) and ``label`` (Int).

    Each sample is ``(image, label)``: an H x W x 3 uint8 RGB array, or a zero-argument
    callable returning one (called in a worker thread, so decoding runs in parallel). A sample
    whose callable raises one of ``skip_errors`` is left out and listed in the returned
    summary as ``(index, reason)``; ``describe(i)`` names samples in errors. ``workers`` encode
    threads (0 = one per usable core); the file's bytes do not depend on it. The file appears
    at ``path`` only when complete (written to a temporary file, then renamed).
    """
    if mode not in _WRITE_MODES:
        raise DataError(f"write_beton mode {mode!r} is not one of 'jpg', 'raw'")
    if not (isinstance(page_size, int) and page_size > 0 and page_size & (page_size - 1) == 0):
        raise DataError(f"page_size {page_size} must be a power of 2 (ffcv requires it)")
    if not MIN_PAGE_SIZE <= page_size < MAX_PAGE_SIZE:
        raise DataError(
            f"page_size {page_size} must be at least {MIN_PAGE_SIZE} (2 MiB) and below 4 GiB, "
            "as ffcv requires"
        )
    if max_resolution is not None and max_resolution < 1:
        raise DataError(f"max_resolution must be a positive number of pixels, got {max_resolution}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise DataError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    path = str(path)
    name = describe or str
    n_in = len(samples)
    workers = _auto_workers() if workers <= 0 else int(workers)
    meta_dtype = np.dtype([("", RGB_META_DTYPE), ("", "<i8")], align=True)
    descs = np.zeros(2, dtype=FIELD_DESC_DTYPE)
    for i, (fname, type_id) in enumerate((("image", RGB_IMAGE), ("label", INT))):
        descs[i]["type_id"] = type_id
        descs[i]["name"][: len(fname)] = np.frombuffer(fname.encode("ascii"), dtype=np.uint8)
    meta_start = HEADER_DTYPE.itemsize + descs.nbytes
    # Space for every input sample: with nothing skipped this is exactly ffcv's layout; with
    # skips the metadata rows end earlier and the gap before the first page stays zero.
    data_start = _align(meta_start + n_in * meta_dtype.itemsize, page_size)
    meta = np.zeros(n_in, dtype=meta_dtype)
    allocs: list[tuple[int, int, int]] = []
    summary = WriteSummary(path=path, written=0)

    def encode(i: int) -> tuple[int, int, int, bytes, int] | BaseException:
        image, label = samples[i]
        try:
            if callable(image):
                image = image()
            return (*encode_image(image, mode, max_resolution, int(jpeg_quality)), int(label))
        except skip_errors as e:  # noqa: B030 - a tuple of exception classes
            return e

    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise DataError(f"output folder {out_dir!r} does not exist; create it first")
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    page = bytearray(page_size)
    page_no, used = -1, 0
    bar = tqdm(total=n_in, disable=not progress, unit="img", desc=f"pack {os.path.basename(path)}")
    try:
        with open(tmp, "wb") as fp, ThreadPoolExecutor(max_workers=workers) as pool:
            fp.write(b"\x00" * data_start)

            def flush() -> None:
                fp.seek(data_start + page_no * page_size)
                fp.write(page)

            window = max(4, 4 * workers)
            futures = {}
            for i in range(min(window, n_in)):
                futures[i] = pool.submit(encode, i)
            for i in range(n_in):
                result = futures.pop(i).result()
                if i + window < n_in:
                    futures[i + window] = pool.submit(encode, i + window)
                bar.update(1)
                if isinstance(result, BaseException):
                    summary.skipped.append((i, str(result) or type(result).__name__))
                    continue
                mode_id, w, h, blob, label = result
                if len(blob) > page_size:
                    raise DataError(
                        f"{name(i)}: encoded image of {len(blob)} bytes does not fit a "
                        f"{page_size}-byte page; raise page_size or set max_resolution"
                    )
                if page_no < 0 or len(blob) > page_size - used:
                    if page_no >= 0:
                        flush()
                    page_no, used = page_no + 1, 0
                    page[:] = bytes(page_size)
                ptr = data_start + page_no * page_size + used
                page[used : used + len(blob)] = blob
                used += len(blob)
                k = summary.written
                meta[k]["f0"] = (mode_id, w, h, ptr)
                meta[k]["f1"] = label
                allocs.append((k, ptr, len(blob)))
                summary.written += 1
            if page_no >= 0:
                flush()
            else:  # no data at all: like ffcv, the file ends after the metadata
                fp.truncate(meta_start + summary.written * meta_dtype.itemsize)
            fp.seek(0, os.SEEK_END)
            alloc_ptr = fp.tell()
            fp.write(np.array(allocs, dtype=ALLOC_DTYPE).tobytes())
            summary.bytes = fp.tell()
            fp.seek(meta_start)
            fp.write(meta[: summary.written].tobytes())
            header = np.zeros(1, dtype=HEADER_DTYPE)
            header[0] = (CURRENT_VERSION, 2, page_size, summary.written, alloc_ptr)
            fp.seek(0)
            fp.write(header.tobytes())
            fp.write(descs.tobytes())
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    bar.close()
    summary.pages = page_no + 1
    return summary


def _align(offset: int, page_size: int) -> int:
    return -(-offset // page_size) * page_size
