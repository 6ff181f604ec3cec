"""Label subsets: which training samples keep their labels when fine-tuning on few labels.

``selfsup finetune RUN_DIR --labels SPEC`` (and the probes' held-out sweeps) train on a subset
of the training split, given by ``SPEC``:

- ``P%`` (``1%``, ``10%``, ``0.5%``; 0 < P <= 100): P percent of every class, at least one
  sample each (``max(1, round(P/100 * n_c))``, halves rounded up). Class-balanced,
  deterministic for a seed: the samples of class ``c`` are ordered by a permutation drawn from
  ``PCG64([seed, c])`` and the subset takes a prefix of it, so a larger request with the same
  seed contains the smaller one (1% lies inside 10%).
- ``K/class`` (``25/class``): the first K samples of the same per-class permutation; every
  class that has samples must have at least K. Handy for tiny data sets.
- anything else is the path of a text file naming the labelled images, one per line, as in
  SimCLR's ``1percent.txt`` / ``10percent.txt`` (``n01440764_10026.JPEG``). Lines are
  stripped; blank lines and lines starting with ``#`` are skipped; a name listed twice counts
  once. In an image folder a line must equal an image's file name; when file names repeat
  across class folders (the built-in dataset's ``00000.jpg``), names are paths relative to the
  split's root (``00_circle/00000.jpg``), and a line holding a longer path counts by its base
  name. In tar shards a line is matched, like webdataset keys, up to the first dot of its
  base name (``n01440764_10026.JPEG`` names the sample stored as ``n01440764_10026.jpg``).
  Sources without file names (``.beton``, arrays) cannot be subset by a file.

Subsets are indices into the training source, so they never include an evaluation image; a
label file naming one (ImageNet's val file names differ from its train names) is rejected as
naming unknown images.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from selfsup.errors import ConfigError, DataError
from selfsup.pipeline.sources import ImageFolderSource, Source, TarShardSource
from selfsup.pipeline.sources.subset import SubsetSource, source_labels

__all__ = [
    "LabelsSpec",
    "SubsetSource",
    "class_counts",
    "holdout_split",
    "parse_labels_spec",
    "read_label_file",
    "sample_names",
    "select_subset",
    "source_labels",
]

_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")
_PER_CLASS = re.compile(r"(\d+)\s*/\s*class")
# Tags the random stream of holdout_split apart from select_subset's (same seed and class).
_HOLDOUT_STREAM = 0x686F6C64
_ALLOWED = (
    "give a percentage of each class (e.g. 10% or 0.5%, above 0 and at most 100), "
    "a count per class (e.g. 25/class) or the path of an existing file listing one image "
    "name per line (e.g. n01440764_10026.JPEG)"
)


@dataclass(frozen=True)
class LabelsSpec:
    """A parsed ``--labels`` value: ``percent``, ``per_class`` or ``file``."""

    kind: Literal["percent", "per_class", "file"]
    percent: float | None = None
    per_class: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "percent":
            return f"{self.percent:g}%"
        if self.kind == "per_class":
            return f"{self.per_class}/class"
        return str(self.path)


def parse_labels_spec(spec: str) -> LabelsSpec:
    """``"10%"``, ``"25/class"`` or the path of an existing file; ConfigError otherwise."""
    text = str(spec).strip()
    m = _PERCENT.fullmatch(text)
    if m:
        p = float(m.group(1))
        if not 0 < p <= 100:
            raise ConfigError(f"label subset {spec!r} is not above 0% and at most 100%; {_ALLOWED}")
        return LabelsSpec("percent", percent=p)
    m = _PER_CLASS.fullmatch(text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise ConfigError(f"label subset {spec!r} asks for no samples per class; {_ALLOWED}")
        return LabelsSpec("per_class", per_class=k)
    path = Path(text).expanduser()
    if text and path.is_file():
        return LabelsSpec("file", path=path)
    if text and path.is_dir():
        raise ConfigError(f"label subset {spec!r} is a directory, not a label file; {_ALLOWED}")
    raise ConfigError(
        f"label subset {spec!r} is not a percentage, a count per class or an existing file; "
        f"{_ALLOWED}"
    )


# -- what a source knows -------------------------------------------------------------------


def sample_names(source: Source) -> list[str]:
    """The name a label file uses for each sample: an image folder's file base names
    (``n01440764_10026.JPEG``; paths relative to the folder when base names repeat), a tar
    shard sample's key base name (``n01440764_10026``).
    DataError for sources without names, or when two samples share a name."""
    if isinstance(source, SubsetSource):
        inner = sample_names(source.source)
        names = [inner[i] for i in source.indices]
    elif isinstance(source, ImageFolderSource):
        names = [os.path.basename(p) for p in source.paths]
        if len(set(names)) != len(names):  # e.g. 00000.jpg in every class: class/00000.jpg
            root = str(source.root)
            names = [os.path.relpath(p, root).replace(os.sep, "/") for p in source.paths]
    elif isinstance(source, TarShardSource):
        names = [posixpath.basename(source.key(i)) for i in range(len(source))]
    else:
        raise DataError(
            f"a label file needs named images (an image folder or tar shards), but the training "
            f"data is {_where(source)}, whose samples have no file names; use --labels N% "
            "(e.g. 10%) or --labels K/class instead"
        )
    _check_unique(names, source)
    return names


def _check_unique(names: list[str], source: Source) -> None:
    if len(set(names)) == len(names):
        return
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        j = first.setdefault(name, i)
        if j != i:
            a, b = source.describe(j), source.describe(i)
            what = f"{a} twice" if a == b else f"two images named {_show(name)} ({a} and {b})"
            raise DataError(
                f"{_where(source)} holds {what}, so a label file cannot tell them apart; "
                "rename one or use --labels N% instead"
            )


def _base(source: Source) -> Source:
    while isinstance(source, SubsetSource):
        source = source.source
    return source


def _where(source: Source) -> str:
    base = _base(source)
    sub = "a subset of " if base is not source else ""
    if isinstance(base, ImageFolderSource):
        return f"{sub}the image folder {base.root}"
    if isinstance(base, TarShardSource):
        return f"{sub}{len(base.shards)} tar shard(s) in {os.path.dirname(base.shards[0])}"
    return f"{sub}{base!r}"


def _class_name(source: Source, c: int) -> str:
    classes = getattr(_base(source), "classes", None)
    return f"{c} ({classes[c]})" if classes is not None and c < len(classes) else str(c)


def _show(name: str) -> str:
    return name if name.isprintable() else repr(name)


# -- subsets -------------------------------------------------------------------------------


def select_subset(source: Source, spec: str | LabelsSpec, seed: int = 0) -> np.ndarray:
    """Sorted, unique int64 indices into ``source`` of the labelled subset ``spec`` (see the
    module docstring). ConfigError for a bad spec, DataError for a subset the data cannot
    give (unknown names in a label file, more samples per class than a class holds)."""
    parsed = spec if isinstance(spec, LabelsSpec) else parse_labels_spec(spec)
    if parsed.kind == "file":
        assert parsed.path is not None
        return _from_file(source, parsed.path)
    return _balanced(source, parsed, seed)


def class_counts(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """How many of ``indices`` (repeats counted) fall in each of ``num_classes`` classes."""
    picked = np.asarray(labels, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
    if picked.size and picked.max() >= num_classes:
        raise ValueError(f"label {picked.max()} is not below num_classes={num_classes}")
    return np.bincount(picked, minlength=num_classes)


def _class_permutation(seed: int, c: int, n: int, *stream: int) -> np.ndarray:
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.Generator(np.random.PCG64([int(seed), int(c), *stream])).permutation(n)


def _by_class(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(class, its sample indices in ascending order)`` for every class that has samples."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return [(int(c), order[ends[c] - counts[c] : ends[c]]) for c in np.flatnonzero(counts)]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _balanced(source: Source, spec: LabelsSpec, seed: int) -> np.ndarray:
    groups = _by_class(source_labels(source))
    if spec.kind == "per_class" and groups:
        c, members = min(groups, key=lambda g: len(g[1]))
        if len(members) < int(spec.per_class or 0):
            raise DataError(
                f"label subset {spec} is larger than the data: class {_class_name(source, c)} of "
                f"{_where(source)} has only {len(members)} images; ask for at most "
                f"{len(members)}/class or a percentage (e.g. 10%)"
            )
    picked = []
    for c, members in groups:
        n = len(members)
        picked.append(members[_class_permutation(seed, c, n)[: _take(spec, n)]])
    return _sorted(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _take(spec: LabelsSpec, n: int) -> int:
    """How many of a class's ``n`` samples the subset takes."""
    if spec.kind == "per_class":
        return min(int(spec.per_class or 0), n)
    return min(n, max(1, _round_half_up(float(spec.percent or 0) * n / 100)))


def _sorted(indices: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(indices, dtype=np.int64))


def _from_file(source: Source, path: Path) -> np.ndarray:
    names = sample_names(source)  # first: a source without names is the clearer error
    key = _tar_key if isinstance(_base(source), TarShardSource) else _identity
    index = {key(n): i for i, n in enumerate(names)}
    if len(index) != len(names):  # two tar keys alike up to a dot: cannot tell them apart
        _check_unique([key(n) for n in names], source)
    wanted = {}
    for line in read_label_file(path):  # as written (class/00000.jpg), else its base name
        k = key(line) if key(line) in index else key(posixpath.basename(line))
        wanted[k] = line
    unknown = [shown for k, shown in wanted.items() if k not in index]
    if unknown:
        raise DataError(
            f"labels file {path} names {len(unknown)} image(s) that are not in the training "
            f"split, {_where(source)} (e.g. {', '.join(_show(u) for u in unknown[:3])}); list "
            f"training images by file name, one per line (like {_show(names[0])}), and no "
            "evaluation images"
        )
    return _sorted([index[k] for k in wanted])


def _identity(name: str) -> str:
    return name


def _tar_key(name: str) -> str:
    """A name as webdataset keys it: up to the first dot (``a.b.jpg`` -> ``a``)."""
    return name.split(".", 1)[0] if name.find(".") > 0 else name


def read_label_file(path: str | Path) -> list[str]:
    """The image names a label file lists, in file order (duplicates kept)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(
            f"labels file {path} is not UTF-8 text; give a text file listing one image name "
            "per line (e.g. n01440764_10026.JPEG)"
        ) from None
    except OSError as e:
        raise DataError(f"labels file {path} cannot be read ({e.strerror or e})") from None
    names = [s.replace("\\", "/") for s in (ln.strip() for ln in text.splitlines())]
    names = [s for s in names if s and not s.startswith("#")]
    if not names:
        raise DataError(
            f"labels file {path} names no images (only blank lines or # comments); list one "
            "training image name per line (e.g. n01440764_10026.JPEG)"
        )
    return names


def holdout_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into ``(train, holdout)`` sorted int64 indices, class-balanced and
    deterministic for a seed: ``round(fraction * n_c)`` samples of each class are held out
    (for choosing a probe's hyperparameters without touching the evaluation split), and
    every class keeps at least one sample for training."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0)):
        raise ValueError("labels must be a 1-D array of non-negative integers")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be above 0 and below 1, got {fraction}")
    held = []
    for c, members in _by_class(labels.astype(np.int64)):
        n = len(members)
        h = min(n - 1, _round_half_up(fraction * n))
        held.append(members[_class_permutation(seed, c, n, _HOLDOUT_STREAM)[:h]])
    holdout = _sorted(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask).astype(np.int64), holdout
