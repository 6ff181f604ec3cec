"""Webdataset-style tar shards: ``<key>.jpg`` (or .jpeg/.png/.webp/...) beside ``<key>.cls``.

Each shard's tar headers are scanned once into an index (key, data offset, size, label),
cached beside the shard (``<shard>.selfsup-idx.npz``) or, where that directory is read-only,
under ``$SELFSUP_CACHE/tar-index/``; a cached index is used while the shard's size and mtime
are unchanged. Reads are then one ``os.pread`` at a known offset: random access, no shared
file position (thread-safe), and the source pickles without its file descriptors.

As in webdataset, a member's key is its path up to the first dot of its base name and the
rest is its extension. Keys without an image or without a readable label are skipped and
reported (a warning at open, and ``source.skipped``), never dropped silently.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selfsup.errors import DataError
from selfsup.pipeline.sources.base import IMAGE_EXTENSIONS
from selfsup.pipeline.sources.generated import default_cache_dir

LABEL_EXTENSION = "cls"
INDEX_SUFFIX = ".selfsup-idx.npz"
INDEX_VERSION = 1


class _ShardIndex:
    """One shard's samples, as arrays (cheap to cache and to concatenate)."""

    def __init__(self, offsets, sizes, labels, keys: list[str], skipped: list[str]) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.keys = keys
        self.skipped = skipped


class TarShardSource:
    """All samples of one or more uncompressed tar shards, in shard order then member order.

    ``shards``: a path, a glob (``data/train-*.tar``), a brace range
    (``data/train-{0000..0146}.tar``), or a sequence of those.
    ``num_classes``: defaults to ``max(label) + 1``.
    ``cache_dir``: where to keep the indexes, before beside-the-shard and ``$SELFSUP_CACHE``.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        *,
        num_classes: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.shards = _expand(shards)
        indexes = [_load_or_build_index(p, cache_dir) for p in self.shards]
        self._shard = np.concatenate(
            [np.full(len(ix.offsets), s, dtype=np.int32) for s, ix in enumerate(indexes)]
        )
        self._offset = np.concatenate([ix.offsets for ix in indexes])
        self._size = np.concatenate([ix.sizes for ix in indexes])
        self.labels = np.concatenate([ix.labels for ix in indexes])
        # Keys as one utf-8 blob plus end offsets: ~40 MB for ImageNet, not ~150 MB of str.
        blobs = [k.encode() for ix in indexes for k in ix.keys]
        self._key_ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._keys = b"".join(blobs)
        self.skipped = [
            f"{p}#{m}" for p, ix in zip(self.shards, indexes, strict=True) for m in ix.skipped
        ]
        if self.skipped:
            warnings.warn(
                f"{len(self.skipped)} incomplete samples skipped in {len(self.shards)} tar "
                f"shard(s) (each needs an image and a .{LABEL_EXTENSION} label); first: "
                + "; ".join(self.skipped[:3]),
                stacklevel=2,
            )
        if len(self.labels) == 0:
            raise DataError(
                f"tar shards {self.shards[0]!r}... hold no complete samples: each sample "
                f"needs <key>.jpg (or .png, .webp, ...) and <key>.{LABEL_EXTENSION} members"
            )
        top = int(self.labels.max()) + 1
        if num_classes is not None and num_classes < top:
            raise DataError(f"num_classes={num_classes} but the tar shards hold label {top - 1}")
        self.num_classes = num_classes if num_classes is not None else top
        self._init_files()

    def _init_files(self) -> None:
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> tuple[bytes, int]:
        shard, offset, size = int(self._shard[index]), self._offset[index], self._size[index]
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._open(shard)
        data = os.pread(fd, int(size), int(offset))
        if len(data) != size:
            raise OSError(
                f"short read: {len(data)} of {size} bytes at offset {offset} "
                f"(was {self.shards[shard]} truncated after it was indexed?)"
            )
        return data, int(self.labels[index])

    def _open(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            return self._fds[shard]

    def key(self, index: int) -> str:
        start = int(self._key_ends[index - 1]) if index > 0 else 0
        return self._keys[start : int(self._key_ends[index])].decode()

    def describe(self, index: int) -> str:
        return f"{self.shards[int(self._shard[index])]}#{self.key(index)}"

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_fds"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_files()

    def __repr__(self) -> str:
        return (
            f"TarShardSource({len(self.shards)} shards, {len(self)} samples, "
            f"{self.num_classes} classes, {len(self.skipped)} skipped)"
        )


# -- shard list ----------------------------------------------------------------------------

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand(shards: str | Path | Sequence[str | Path]) -> list[str]:
    specs = [shards] if isinstance(shards, (str, Path)) else list(shards)
    if not specs:
        raise DataError("no tar shards given; pass a path, a glob or a list of shard files")
    out: list[str] = []
    for spec in specs:
        for pattern in _expand_braces(str(spec)):
            if glob.has_magic(pattern):
                found = sorted(glob.glob(pattern))
                if not found:
                    raise DataError(f"no tar shards match {pattern!r}; check the path")
                out.extend(found)
            else:
                out.append(pattern)
    for p in out:
        if not os.path.isfile(p):
            raise DataError(
                f"tar shard {p!r} does not exist or is not a file; check the shard path or "
                "pattern (globs and {000..099} ranges are expanded)"
            )
    return [os.path.abspath(p) for p in out]


def _expand_braces(pattern: str) -> list[str]:
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [
        p for i in range(int(lo), int(hi) + 1) for p in _expand_braces(f"{head}{i:0{width}d}{tail}")
    ]


# -- index ---------------------------------------------------------------------------------


def _index_candidates(path: str, cache_dir: str | Path | None) -> list[Path]:
    name = f"{hashlib.sha1(path.encode()).hexdigest()[:16]}-{os.path.basename(path)}"
    out = []
    if cache_dir is not None:
        out.append(Path(cache_dir) / (name + INDEX_SUFFIX))
    out.append(Path(path + INDEX_SUFFIX))
    out.append(default_cache_dir() / "tar-index" / (name + INDEX_SUFFIX))
    return out


def _load_or_build_index(path: str, cache_dir: str | Path | None) -> _ShardIndex:
    st = os.stat(path)
    stamp = np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)
    candidates = _index_candidates(path, cache_dir)
    for c in candidates:
        index = _load_index(c, stamp)
        if index is not None:
            return index
    index = _scan_shard(path, st.st_size)
    for c in candidates:
        if _save_index(c, stamp, index):
            break
    return index


def _load_index(path: Path, stamp: np.ndarray) -> _ShardIndex | None:
    """The cached index at ``path`` if it belongs to this shard (same size and mtime) and
    every entry lies inside it; None (rebuild) otherwise. A cache file is untrusted input:
    it may be stale, damaged, or written by someone else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["stamp"], stamp):
                return None
            keys = bytes(z["keys"]).decode().split("\n") if len(z["offsets"]) else []
            skipped = bytes(z["skipped"]).decode().split("\n") if z["skipped"].size else []
            index = _ShardIndex(z["offsets"], z["sizes"], z["labels"], keys, skipped)
    except Exception:  # noqa: BLE001 - missing, stale or damaged: rebuild
        return None
    return index if _index_fits(index, int(stamp[1])) else None


def _index_fits(index: _ShardIndex, file_size: int) -> bool:
    """Whether every sample of ``index`` lies inside a shard of ``file_size`` bytes."""
    n = len(index.offsets)
    if not (index.offsets.ndim == index.sizes.ndim == index.labels.ndim == 1):
        return False
    if len(index.sizes) != n or len(index.labels) != n or len(index.keys) != n:
        return False
    if n == 0:
        return True
    off, size = index.offsets, index.sizes
    return bool(
        (off >= 0).all()
        and (size >= 0).all()
        and (off <= file_size - size).all()  # offset + size <= file size, without overflow
        and (index.labels >= 0).all()
    )


def _save_index(path: Path, stamp: np.ndarray, index: _ShardIndex) -> bool:
    """Write atomically (temporary file, then rename); False where it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=INDEX_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    stamp=stamp,
                    offsets=index.offsets,
                    sizes=index.sizes,
                    labels=index.labels,
                    keys=np.frombuffer("\n".join(index.keys).encode(), dtype=np.uint8),
                    skipped=np.frombuffer("\n".join(index.skipped).encode(), dtype=np.uint8),
                )
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return True
    except OSError:
        return False


def _scan_shard(path: str, file_size: int) -> _ShardIndex:
    """One pass over the tar headers of ``path`` (member data is skipped, except labels)."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
                raise DataError(
                    f"tar shard {path!r} is compressed; random access needs uncompressed tar "
                    "shards (decompress it, e.g. with gunzip / unxz)"
                )
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    if m.offset_data + m.size > file_size:
                        raise DataError(
                            f"tar shard {path!r} is truncated: member {m.name!r} needs bytes "
                            f"up to {m.offset_data + m.size} but the file has {file_size}; "
                            "re-create or re-download the shard"
                        )
                    dirname, base = os.path.split(m.name)
                    dot = base.find(".")
                    if dot <= 0:
                        continue
                    key = os.path.join(dirname, base[:dot])
                    ext = base[dot + 1 :].lower()
                    members.setdefault(key, {})[ext] = (m.offset_data, m.size)
                end = tf.offset
            _check_tail(f, path, end, file_size)
            offsets, sizes, labels, keys, skipped = [], [], [], [], []
            for key, exts in members.items():
                image = next((exts[e] for e in IMAGE_EXTENSIONS if e in exts), None)
                cls = exts.get(LABEL_EXTENSION)
                if image is None:
                    skipped.append(f"{key}: no image member ({', '.join(sorted(exts))} only)")
                    continue
                if cls is None:
                    skipped.append(f"{key}: no .{LABEL_EXTENSION} label")
                    continue
                label = _parse_label(f, *cls)
                if label is None:
                    skipped.append(f"{key}: .{LABEL_EXTENSION} is not a non-negative integer")
                    continue
                offsets.append(image[0])
                sizes.append(image[1])
                labels.append(label)
                keys.append(key)
    except tarfile.ReadError as e:
        raise DataError(
            f"tar shard {path!r} is not a readable tar file ({e}); give uncompressed .tar shards"
        ) from None
    except OSError as e:
        raise DataError(f"tar shard {path!r} cannot be read ({e})") from None
    return _ShardIndex(offsets, sizes, labels, keys, skipped)


def _check_tail(f, path: str, end: int, file_size: int) -> None:
    """tarfile stops quietly at a damaged or cut header; what follows must be zero padding."""
    f.seek(end)
    pos = end
    while pos < file_size:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        if chunk.count(0) != len(chunk):
            raise DataError(
                f"tar shard {path!r} is truncated or corrupt after byte {end} (an unreadable "
                "tar header); re-create or re-download the shard"
            )
        pos += len(chunk)


def _parse_label(f, offset: int, size: int) -> int | None:
    if size > 64:
        return None
    f.seek(offset)
    text = f.read(size)
    try:
        label = int(text.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return label if label >= 0 else None
