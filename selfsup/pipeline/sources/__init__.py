"""Sources: random access to samples ``(payload, label)``.

``folder`` (ImageNet layout), ``beton`` (FFCV files), ``tar`` (webdataset-style shards),
``array`` (in-memory uint8 arrays) and the built-in ``synthetic`` dataset.
"""

from __future__ import annotations

from pathlib import Path

from selfsup.pipeline.sources.array import ArraySource
from selfsup.pipeline.sources.base import Source
from selfsup.pipeline.sources.beton import BetonSource
from selfsup.pipeline.sources.folder import ImageFolderSource
from selfsup.pipeline.sources.subset import SubsetSource
from selfsup.pipeline.sources.tar import TarShardSource

__all__ = [
    "ArraySource",
    "BetonSource",
    "ImageFolderSource",
    "Source",
    "SubsetSource",
    "TarShardSource",
    "open_split",
]


def open_split(data_cfg, split: str, progress: bool = True) -> Source:
    """The source for one split (``data_cfg.train_split`` or ``val_split``) of a data config
    (``progress``: a bar while the built-in synthetic dataset is generated on first use)."""
    from selfsup.errors import DataError

    if data_cfg.source == "synthetic":
        from selfsup.pipeline.sources.synthetic import ensure_synthetic

        root = ensure_synthetic(
            data_cfg.path,
            seed=data_cfg.synthetic_seed,
            train_per_class=data_cfg.synthetic_train_per_class,
            val_per_class=data_cfg.synthetic_val_per_class,
            progress=progress,
        )
        return ImageFolderSource(Path(root) / {"train": "train", "val": "val"}.get(split, split))
    layout = {
        "folder": f"{data_cfg.train_split}/ and {data_cfg.val_split}/ class folders",
        "beton": f"{data_cfg.train_split}.beton and {data_cfg.val_split}.beton",
        "tar": f"{data_cfg.train_split}/*.tar and {data_cfg.val_split}/*.tar shards",
    }[data_cfg.source]
    if data_cfg.path is None:
        raise DataError(
            f"data.source is {data_cfg.source!r} but data.path is not set; "
            f"give data.path=DIR, a directory holding {layout}"
        )
    root = Path(data_cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {str(root)!r} does not exist; give a directory holding {layout}"
        )
    if data_cfg.source == "beton":
        path = root / f"{split}.beton"
        if not path.is_file():
            raise DataError(f"{path} not found; data.path must hold {layout}")
        return BetonSource(path)
    if data_cfg.source == "tar":
        shards = sorted((root / split).glob("*.tar"))
        if not shards:
            raise DataError(f"no .tar shards in {root / split}; data.path must hold {layout}")
        return TarShardSource(shards)
    return ImageFolderSource(root / split)
