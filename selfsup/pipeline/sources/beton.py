"""FFCV ``.beton`` files: the layout, and a bounds-checked memory-mapped reader.

Layout (ffcv 1.0.x, all little-endian numpy structs), in file order:

1. header: ``version u2 (=2), num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8``;
2. one 1041-byte descriptor per field: ``type_id u1, name u1[16], arguments u1[1024]``;
3. the metadata table: ``num_samples`` rows of an aligned struct that concatenates each
   field's row type (RGBImage ``mode u1, width u2, height u2, data_ptr u8``; Int ``i8``;
   Float ``f8``; Bytes/JSON ``ptr u8, size u8``; NDArray/TorchTensor ``ptr u8``);
4. the data region, from the metadata end rounded up to a multiple of ``page_size``: whole
   pages, zero-padded; a sample's blobs never straddle two pages;
5. the allocation table ``(sample_id u8, ptr u8, size u8)`` up to the end of the file.

Pointers are absolute file offsets. The writer is ``beton_write.py``.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from selfsup.errors import DataError

CURRENT_VERSION = 2
MIN_PAGE_SIZE = 1 << 21
MAX_PAGE_SIZE = 1 << 32
DEFAULT_PAGE_SIZE = 4 * MIN_PAGE_SIZE

HEADER_DTYPE = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
FIELD_DESC_DTYPE = np.dtype(
    [("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True
)
ALLOC_DTYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
RGB_META_DTYPE = np.dtype(
    [("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")]
)
PTR_SIZE_DTYPE = np.dtype([("ptr", "<u8"), ("size", "<u8")])
NDARRAY_ARGS_DTYPE = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])

FLOAT, INT, RGB_IMAGE, BYTES, NDARRAY, JSON, TORCH_TENSOR = 0, 1, 2, 3, 4, 5, 6
TYPE_NAMES = {
    FLOAT: "Float",
    INT: "Int",
    RGB_IMAGE: "RGBImage",
    BYTES: "Bytes",
    NDARRAY: "NDArray",
    JSON: "JSON",
    TORCH_TENSOR: "TorchTensor",
}
_ROW_TYPES = {
    FLOAT: np.dtype("<f8"),
    INT: np.dtype("<i8"),
    RGB_IMAGE: RGB_META_DTYPE,
    BYTES: PTR_SIZE_DTYPE,
    NDARRAY: np.dtype("<u8"),
    JSON: PTR_SIZE_DTYPE,
    TORCH_TENSOR: np.dtype("<u8"),
}
MODE_JPG, MODE_RAW = 0, 1


# ----------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BetonField:
    """One field of a .beton file: name, type id, and (NDArray) element dtype and shape."""

    name: str
    type_id: int
    dtype: np.dtype | None = None
    shape: tuple[int, ...] | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_id, f"custom({self.type_id})")


class BetonSource:
    """Random access to the samples of an FFCV ``.beton`` file, memory-mapped.

    ``image_field`` defaults to the first RGBImage field and ``label_field`` to the first Int
    field (labels are 0 when the file has none). ``mask_field`` optionally names an NDArray or
    Bytes field with a uint8 saliency mask per sample (see :meth:`read_mask`).

    Header and table problems raise :class:`DataError` when the file is opened; a sample whose
    own pointer is bad raises ``OSError`` from :meth:`read`, so the engine can replace it.
    Reads are thread-safe (they only slice the shared read-only map), and the source pickles
    by path: the map is reopened in the receiving process.
    """

    def __init__(
        self,
        path: str | Path,
        image_field: str | None = None,
        label_field: str | None = None,
        mask_field: str | None = None,
    ) -> None:
        self.path = str(path)
        self._field_args = (image_field, label_field, mask_field)
        self._open()

    # -- opening and validation

    def _fail(self, what: str, fix: str = "") -> DataError:
        fix = fix or "re-create it with `selfsup pack` or ffcv's DatasetWriter"
        return DataError(f"{self.path}: {what}; {fix}")

    def _open(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_DTYPE.itemsize:
                    raise self._fail(
                        f"not a .beton file or truncated: {size} bytes, shorter than the "
                        f"{HEADER_DTYPE.itemsize}-byte header"
                    )
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise DataError(
                f"cannot open .beton file {self.path!r} ({e.strerror or e}); "
                "check that data.path names an existing, readable .beton file"
            ) from e
        self._mmap = mm
        self._size = size
        self._stat = _stat_key(self.path)
        buf = np.frombuffer(mm, dtype=np.uint8)
        self._buf = buf
        header = buf[: HEADER_DTYPE.itemsize].view(HEADER_DTYPE)[0]
        version = int(header["version"])
        if version != CURRENT_VERSION:
            raise self._fail(
                f"unsupported .beton version {version} (expected {CURRENT_VERSION}, written by "
                "ffcv 1.0.x); the file is from another ffcv version or is not a .beton file",
                "convert it with ffcv 1.0.x or re-create it with `selfsup pack`",
            )
        num_fields = int(header["num_fields"])
        page_size = int(header["page_size"])
        num_samples = int(header["num_samples"])
        alloc_ptr = int(header["alloc_table_ptr"])
        if num_fields == 0:
            raise self._fail("the header declares 0 fields (corrupt header)")
        if page_size == 0 or page_size & (page_size - 1):
            raise self._fail(f"page size {page_size} in the header is not a power of 2 (corrupt)")

        desc_start = HEADER_DTYPE.itemsize
        meta_start = desc_start + num_fields * FIELD_DESC_DTYPE.itemsize
        if meta_start > size:
            raise self._fail(
                f"truncated in the field descriptors: {num_fields} fields need {meta_start} "
                f"bytes, the file has {size}"
            )
        descs = buf[desc_start:meta_start].view(FIELD_DESC_DTYPE)
        self.fields = [_parse_field(d, self._fail) for d in descs]
        meta_dtype = np.dtype([("", _ROW_TYPES[f.type_id]) for f in self.fields], align=True)
        meta_end = meta_start + num_samples * meta_dtype.itemsize
        if meta_end > size:
            raise self._fail(
                f"truncated in the metadata table: {num_samples} samples need {meta_end} bytes "
                f"up to the data, the file has {size}"
            )
        if not meta_end <= alloc_ptr <= size:
            raise self._fail(
                f"truncated or corrupt: the allocation table should start at byte {alloc_ptr}, "
                f"outside the file's data range [{meta_end}, {size}]"
            )
        if (size - alloc_ptr) % ALLOC_DTYPE.itemsize:
            raise self._fail(
                f"truncated in the allocation table: its {size - alloc_ptr} bytes are not a "
                f"whole number of {ALLOC_DTYPE.itemsize}-byte entries"
            )
        alloc = buf[alloc_ptr:size].view(ALLOC_DTYPE)
        n_ptr_fields = sum(
            f.type_id in (RGB_IMAGE, BYTES, NDARRAY, JSON, TORCH_TENSOR) for f in self.fields
        )
        if len(alloc) < num_samples * n_ptr_fields:
            raise self._fail(
                f"truncated allocation table: {len(alloc)} entries, expected "
                f"{num_samples * n_ptr_fields} ({num_samples} samples x {n_ptr_fields} "
                "data fields)"
            )
        order = np.argsort(alloc["ptr"], kind="stable")
        self._ptrs = np.ascontiguousarray(alloc["ptr"][order])
        self._sizes = np.ascontiguousarray(alloc["size"][order])
        self._data_start = meta_end
        self._data_end = alloc_ptr
        self.page_size = page_size
        self.num_samples = num_samples
        self._meta = buf[meta_start:meta_end].view(meta_dtype)

        image_name, label_name, mask_name = self._field_args
        i = self._pick(image_name, (RGB_IMAGE,), "image")
        self.image_field = self.fields[i].name
        self._image_meta = self._meta[f"f{i}"]
        self.label_field = None
        self._labels = np.zeros(num_samples, dtype=np.int64)
        if label_name is not None or any(f.type_id == INT for f in self.fields):
            i = self._pick(label_name, (INT,), "label")
            self.label_field = self.fields[i].name
            self._labels = np.asarray(self._meta[f"f{i}"], dtype=np.int64)
        self.mask_field = None
        self._mask_meta = None
        if mask_name is not None:
            i = self._pick(mask_name, (NDARRAY, TORCH_TENSOR, BYTES), "mask")
            mf = self._mask_def = self.fields[i]
            if mf.type_id != BYTES and (
                mf.dtype is None or mf.dtype.itemsize != 1 or len(_mask_shape(mf.shape)) != 2
            ):
                raise DataError(
                    f"{self.path}: mask field {mask_name!r} holds {mf.dtype} arrays of shape "
                    f"{mf.shape}; a saliency mask must be uint8 of shape (H, W) or (H, W, 1)"
                )
            self.mask_field = mf.name
            self._mask_meta = self._meta[f"f{i}"]
        if num_samples and self._labels.min() < 0:
            raise self._fail(
                f"label field {self.label_field!r} holds negative labels "
                f"(min {self._labels.min()})",
                "labels must be class indices 0..C-1",
            )
        self.num_classes = int(self._labels.max()) + 1 if num_samples else 0

    def _pick(self, name: str | None, types: tuple[int, ...], role: str) -> int:
        """Index of the field called ``name`` (or the first of ``types``), type-checked."""
        have = ", ".join(f"{f.name!r} ({f.type_name})" for f in self.fields)
        wanted = "/".join(TYPE_NAMES[t] for t in types)
        for i, f in enumerate(self.fields):
            if (name is None and f.type_id in types) or f.name == name:
                if f.type_id not in types:
                    raise DataError(
                        f"{self.path}: field {name!r} is {f.type_name}, but the {role} field "
                        f"must be {wanted}; fields in the file: {have}"
                    )
                return i
        what = f"no field named {name!r}" if name else f"no {wanted} field for the {role}"
        raise DataError(f"{self.path}: {what}; fields in the file: {have}")

    # -- the Source interface

    def __len__(self) -> int:
        return self.num_samples

    def describe(self, index: int) -> str:
        return f"{self.path}#{index}"

    def label(self, index: int) -> int:
        return int(self._labels[self._check_index(index)])

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        """JPEG bytes (jpg samples) or an H x W x 3 uint8 copy (raw samples), and the label."""
        index = self._check_index(index)
        row = self._image_meta[index]
        mode, width, height = int(row["mode"]), int(row["width"]), int(row["height"])
        ptr, size = self._blob(index, int(row["data_ptr"]))
        if mode == MODE_JPG:
            return self._mmap[ptr : ptr + size], int(self._labels[index])
        if mode == MODE_RAW:
            if size != width * height * 3 or size == 0:
                raise OSError(
                    f"{self.describe(index)}: raw image of {width}x{height} should take "
                    f"{width * height * 3} bytes, its allocation has {size} (corrupt metadata)"
                )
            img = self._buf[ptr : ptr + size].reshape(height, width, 3).copy()
            return img, int(self._labels[index])
        raise OSError(f"{self.describe(index)}: unknown image mode {mode} (corrupt metadata)")

    @property
    def has_masks(self) -> bool:
        """Whether the file has a saliency-mask field (``mask_field`` given and found)."""
        return self.mask_field is not None

    def read_mask(self, index: int) -> np.ndarray | None:
        """The sample's saliency mask as an H x W uint8 array, or None without a mask field.

        NDArray/TorchTensor masks have the field's fixed shape. A Bytes mask is either
        H*W raw bytes matching the image's size, or an encoded (e.g. PNG) grayscale image.
        """
        if self._mask_meta is None:
            return None
        index = self._check_index(index)
        f = self._mask_def
        if f.type_id == BYTES:
            ptr, size = self._blob(index, int(self._mask_meta[index]["ptr"]))
            row = self._image_meta[index]
            h, w = int(row["height"]), int(row["width"])
            if size == h * w:
                return self._buf[ptr : ptr + size].reshape(h, w).copy()
            mask = cv2.imdecode(self._buf[ptr : ptr + size], cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise OSError(
                    f"{self.describe(index)}: mask of {size} bytes is neither {h}x{w} raw "
                    "bytes nor a decodable image"
                )
            return mask
        ptr, size = self._blob(index, int(self._mask_meta[index]))
        shape = _mask_shape(f.shape)
        if size < shape[0] * shape[1]:
            raise OSError(
                f"{self.describe(index)}: mask allocation of {size} bytes is smaller than "
                f"its {shape[0]}x{shape[1]} shape (corrupt)"
            )
        return self._buf[ptr : ptr + shape[0] * shape[1]].reshape(shape).copy()

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.path} ({len(self)} samples)")
        return index

    def _blob(self, index: int, ptr: int) -> tuple[int, int]:
        """(ptr, size) of an allocation, checked against the table and the data region."""
        k = int(np.searchsorted(self._ptrs, ptr))
        if k >= len(self._ptrs) or int(self._ptrs[k]) != ptr:
            raise OSError(
                f"{self.describe(index)}: data pointer {ptr} is not in the allocation table "
                "(corrupt metadata)"
            )
        size = int(self._sizes[k])
        if ptr < self._data_start or ptr + size > self._data_end:
            raise OSError(
                f"{self.describe(index)}: data [{ptr}, {ptr + size}) lies outside the data "
                f"region [{self._data_start}, {self._data_end}) (corrupt file)"
            )
        return ptr, size

    # -- pickling: by path, reopened on the other side

    def __getstate__(self) -> dict:
        return {"path": self.path, "field_args": self._field_args, "stat": self._stat}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._field_args = state["field_args"]
        self._open()
        if state["stat"] != self._stat:
            raise DataError(
                f"{self.path}: the file changed between opening it and reopening it in a "
                "worker process; do not rewrite a .beton file while a run reads it"
            )

    def close(self) -> None:
        """Drop this source's views of the map; the OS unmaps once no array uses them."""
        self._buf = self._meta = self._image_meta = self._mask_meta = None  # type: ignore[assignment]
        self._mmap = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}:{f.type_name}" for f in self.fields)
        return f"BetonSource({self.path!r}, {len(self)} samples, fields [{fields}])"


def _stat_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _mask_shape(shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = tuple(shape or ())
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    return shape


def _parse_field(desc: np.void, fail: Callable[..., DataError]) -> BetonField:
    type_id = int(desc["type_id"])
    name = desc["name"].tobytes().split(b"\x00")[0].decode("ascii", errors="replace")
    if type_id not in _ROW_TYPES:
        raise fail(
            f"field {name!r} has type id {type_id}, a custom or unknown ffcv field whose "
            "metadata layout selfsup cannot know",
            "write the file with built-in ffcv fields (RGBImage, Int, Float, Bytes, NDArray)",
        )
    if type_id not in (NDARRAY, TORCH_TENSOR):
        return BetonField(name, type_id)
    args = desc["arguments"]
    try:
        head = args[: NDARRAY_ARGS_DTYPE.itemsize].view(NDARRAY_ARGS_DTYPE)[0]
        n = int(head["type_length"])
        text = args[NDARRAY_ARGS_DTYPE.itemsize : NDARRAY_ARGS_DTYPE.itemsize + n].tobytes()
        descr = [tuple(x) for x in json.loads(text.decode("ascii"))]
        dtype = np.dtype(descr)["f0"] if len(descr) == 1 and descr[0][0] == "" else None
        if dtype is None:
            dtype = np.dtype(descr[0][1]) if len(descr) == 1 else np.dtype(descr)
        shape = [int(s) for s in head["shape"]]
        while shape and shape[-1] == 0:
            shape.pop()
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise fail(f"field {name!r}: unreadable NDArray arguments ({e})") from e
    return BetonField(name, type_id, dtype, tuple(shape))
