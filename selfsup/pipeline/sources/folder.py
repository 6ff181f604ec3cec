"""Image folders in ImageNet layout: ``root/<class>/<image>``, classes in sorted order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from selfsup.errors import DataError
from selfsup.pipeline.sources.base import IMAGE_EXTENSIONS

_SUFFIXES = tuple(f".{e}" for e in IMAGE_EXTENSIONS)


class ImageFolderSource:
    """All images under ``root/<class>/`` (one level of class folders, files of any depth)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"image folder {str(self.root)!r} does not exist or is not a directory; "
                "set data.path to a directory holding one sub-folder per class"
            )
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(self.root / name)):
                for f in sorted(files):
                    if f.lower().endswith(_SUFFIXES):
                        paths.append(os.path.join(dirpath, f))
                        labels.append(label)
        if not paths:
            raise DataError(
                f"image folder {str(self.root)!r} holds no images in class sub-folders "
                f"(looked for {', '.join(_SUFFIXES)} under root/<class>/)"
            )
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> tuple[bytes, int]:
        with open(self.paths[index], "rb") as f:
            return f.read(), int(self.labels[index])

    def describe(self, index: int) -> str:
        return self.paths[index]

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource({str(self.root)!r}, {len(self)} images, {self.num_classes} classes)"
        )
