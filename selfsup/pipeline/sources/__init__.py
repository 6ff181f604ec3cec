"""Sources: random access to encoded samples ``(bytes, label)``."""

from __future__ import annotations

from pathlib import Path

from selfsup.pipeline.sources.base import Source
from selfsup.pipeline.sources.folder import ImageFolderSource

__all__ = ["ImageFolderSource", "Source", "open_split"]


def open_split(data_cfg, split: str) -> Source:
    """The source for one split (``data_cfg.train_split`` or ``val_split``) of a data config."""
    from selfsup.errors import DataError

    if data_cfg.source == "synthetic":
        from selfsup.pipeline.sources.synthetic import ensure_synthetic

        root = ensure_synthetic(
            data_cfg.path,
            seed=data_cfg.synthetic_seed,
            train_per_class=data_cfg.synthetic_train_per_class,
            val_per_class=data_cfg.synthetic_val_per_class,
        )
        return ImageFolderSource(Path(root) / {"train": "train", "val": "val"}.get(split, split))
    if data_cfg.path is None:
        raise DataError("data.source is 'folder' but data.path is not set; give data.path=DIR")
    root = Path(data_cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {str(root)!r} does not exist; give a directory holding "
            f"{data_cfg.train_split}/ and {data_cfg.val_split}/ class folders"
        )
    return ImageFolderSource(root / split)
