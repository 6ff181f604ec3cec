"""`selfsup pack`: turn an image folder (ImageNet layout) into an FFCV-compatible .beton file.

Every file is decoded (libjpeg-turbo / OpenCV, in parallel threads), its longest side
optionally capped, and re-encoded as JPEG, as ffcv's ``RGBImageField(write_mode='jpg')``
does. Files that cannot be decoded are skipped, counted and listed with path and reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.errors import DataError
from selfsup.pipeline.decode import DecodeError, decode_image
from selfsup.pipeline.sources.beton_write import write_beton
from selfsup.pipeline.sources.folder import ImageFolderSource


class _Decoded:
    """Reads and decodes one file when called (in a writer thread)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self):
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DecodeError(f"unreadable ({e.strerror or e})") from e
        return decode_image(data)


class _FolderSamples:
    """``(decode-on-call, label)`` pairs for every image of the folder, in its order."""

    def __init__(self, source: ImageFolderSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return _Decoded(self.source.paths[i]), int(self.source.labels[i])


def pack(
    src_dir: str | Path,
    out_path: str | Path,
    max_res: int | None = None,
    quality: int = 90,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Pack ``src_dir/<class>/<image>`` into ``out_path``; return a summary dict.

    The summary has ``images`` (files found), ``written``, ``skipped`` (count),
    ``skipped_files`` (list of ``(path, reason)``), ``classes``, ``bytes`` and ``out``.
    ``workers`` decode/encode threads (0 = one per usable core).
    """
    source = ImageFolderSource(src_dir)
    if str(out_path).endswith("/") or Path(out_path).is_dir():
        raise DataError(f"output {str(out_path)!r} is a directory; give a file name like out.beton")
    result = write_beton(
        out_path,
        _FolderSamples(source),
        max_resolution=max_res,
        jpeg_quality=quality,
        mode="jpg",
        workers=workers,
        progress=progress,
        skip_errors=(DecodeError,),
        describe=source.describe,
    )
    skipped = [(source.describe(i), reason) for i, reason in result.skipped]
    if result.written == 0:
        Path(out_path).unlink(missing_ok=True)
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise DataError(
            f"none of the {len(source)} images under {str(src_dir)!r} could be decoded{first}; "
            "check that the folder holds image files"
        )
    return {
        "out": str(out_path),
        "images": len(source),
        "written": result.written,
        "skipped": len(skipped),
        "skipped_files": skipped,
        "classes": source.num_classes,
        "bytes": result.bytes,
    }


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pack`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "pack",
        help="pack an image folder (ImageNet layout) into an FFCV-compatible .beton file",
        description=(
            "Decode every image under SRC/<class>/, optionally cap its longest side, re-encode "
            "it as JPEG and write an ffcv 1.0.x .beton file with fields 'image' and 'label'. "
            "Undecodable files are skipped and listed."
        ),
    )
    p.add_argument("src", metavar="SRC", help="image folder with one sub-folder per class")
    p.add_argument("out", metavar="OUT.beton", help="the .beton file to write (replaced whole)")
    p.add_argument(
        "--max-res",
        type=int,
        default=None,
        metavar="N",
        help="shrink images whose longest side exceeds N pixels to N (INTER_AREA, as ffcv); "
        "default: keep the original size",
    )
    p.add_argument(
        "--quality", type=int, default=90, metavar="Q", help="JPEG quality 1..100 (default: 90)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="K",
        help="decode/encode threads (default: 0 = one per usable CPU core); "
        "the output does not depend on it",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show the progress bar",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``selfsup pack`` from parsed arguments; 0 on success (DataError propagates)."""
    if args.max_res is not None and args.max_res < 1:
        raise DataError(f"--max-res must be a positive number of pixels, got {args.max_res}")
    if not 1 <= args.quality <= 100:
        raise DataError(f"--quality must be between 1 and 100, got {args.quality}")
    if args.workers < 0:
        raise DataError(f"--workers must be 0 (auto) or a positive count, got {args.workers}")
    summary = pack(
        args.src,
        args.out,
        max_res=args.max_res,
        quality=args.quality,
        workers=args.workers,
        progress=args.progress,
    )
    for path, reason in summary["skipped_files"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(
        f"wrote {summary['out']}: {summary['written']} images, {summary['classes']} classes, "
        f"{summary['bytes'] / 2**20:.1f} MiB; skipped {summary['skipped']} undecodable "
        f"file(s) of {summary['images']}"
    )
    return 0
