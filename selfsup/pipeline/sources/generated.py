"""Datasets generated on first use: checked by their ``meta.json``, built atomically.

The built-in synthetic shapes (``synthetic.py``) and the benchmark's ImageNet-like photos
(``selfsup.bench.photos``) both live in the cache directory and are made the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from selfsup.errors import DataError


def default_cache_dir() -> Path:
    """Where datasets are cached: ``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    env = os.environ.get("SELFSUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup"


def check_meta(root: Path, want: dict, what: str) -> bool:
    """True if ``root`` holds the dataset ``want`` describes; DataError if it holds another.

    Only the keys of ``want`` are compared, so ``meta.json`` may record more (e.g. sizes).
    """
    path = root / "meta.json"
    if not path.is_file():
        return False
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete {root} to regenerate it") from e
    diff = [f"{k}={have.get(k)!r} (asked {v!r})" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise DataError(
            f"{path} describes a different {what}: {', '.join(diff)}; "
            f"pass another root or delete {root} to regenerate it"
        )
    return True


def ensure_generated(root: Path, want: dict, what: str, generate: Callable[[Path], dict]) -> Path:
    """Return ``root``, first generating it with ``generate(tmp_dir) -> extra meta`` if absent.

    ``want`` identifies the dataset (written to ``meta.json`` with the extra keys).
    """
    if check_meta(root, want, what):
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists but holds no {what} (no meta.json); "
            f"pass an empty or new directory as the {what} root"
        )
    # Build in a private sibling, then rename: readers never see a half-written dataset, and of
    # two racing processes one rename wins while the other finds the finished copy.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        extra = generate(tmp)
        (tmp / "meta.json").write_text(json.dumps({**want, **extra}, indent=2) + "\n")
        try:
            os.rename(tmp, root)  # replaces an empty directory, fails on a full one
        except OSError:
            if not check_meta(root, want, what):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
