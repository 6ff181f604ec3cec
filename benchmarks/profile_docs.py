"""The two profiles the README shows, as a user runs them (``make profile-docs``):

1. ``selfsup profile`` on the built-in demo config, into ``docs/profile-demo/``;
2. ``selfsup profile`` on a 224 px SimCLR config reading JPEG photos from a folder (the 512
   generated ImageNet-like photos of ``selfsup bench loader --data synthetic-photos``, made
   once into ``$SELFSUP_CACHE``), with the full SimCLR views, a width-16 ResNet-18 and a batch
   of 64, into ``docs/profile-photos224/``.

Each report holds its verdict, advice, tables and figures; ``report.json`` every number.

    python benchmarks/profile_docs.py [--docs docs] [--steps 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from selfsup.bench.photos import ensure_photos

PHOTOS224 = [
    "data.source=folder", "data.size=224", "data.eval_size=224", "data.view_overrides={}",
    "model.small_input=false", "train.batch_size=64",
]  # fmt: skip


def profile(out: Path, steps: int, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "selfsup", "profile", "--steps", str(steps), "--out", str(out),
           "--no-progress", *overrides]  # fmt: skip
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default="docs", help="where the two report folders go")
    p.add_argument("--steps", type=int, default=10, help="selfsup profile --steps")
    args = p.parse_args()
    docs = Path(args.docs)
    profile(docs / "profile-demo", args.steps, [])
    photos = ensure_photos(progress=True)
    with tempfile.TemporaryDirectory(prefix="selfsup-photos224-") as root:
        (Path(root) / "train").symlink_to(photos, target_is_directory=True)
        profile(docs / "profile-photos224", args.steps, [*PHOTOS224, f"data.path={root}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
