"""``selfsup bench``: throughput benchmarks that print a ratio against a baseline run beside them.

The CLI wires two functions in: :func:`add_parser` adds the ``bench`` command to the
``selfsup`` sub-parsers, and :func:`run` executes parsed arguments, returning the exit status.
:func:`main` runs the ``bench`` command alone (``main(["loader", ...])``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from selfsup.errors import SelfsupError

LOADER_DESCRIPTION = """\
Images/sec of the selfsup Loader and, in the same run, of a reference loader for the same
recipe written the way torchvision-based SSL code does it (a Dataset opening each file with
Pillow and applying per-sample Pillow ops to every view, batched by a torch DataLoader with
--workers worker processes, shuffle, drop_last, persistent workers). Both read the same
ViewSpecs and draw the same per-view parameters, so they do the same work; the selfsup Loader
gets --workers engine threads, so both use the same cores.

How it is measured: every run starts from a fresh loader, discards --warmup batches (worker
start-up, JIT, caches), then times --batches batches of wall time, touching every output
tensor. Images/sec counts samples, not views. The file list is repeated virtually (each
repetition with its own random draws) so warm-up plus timed batches fit in one epoch: no
epoch-boundary stall is timed. The pipelines alternate A B B A ... for --repeats rounds and
each reports its median; the ratio is selfsup / reference."""

LOADER_EPILOG = """\
examples:
  selfsup bench loader --data synthetic-photos --recipe simclr --batch-size 256 --workers 2
  selfsup bench loader --data /data/imagenet/train --recipe simclr --crop-flip-only \\
      --json bench.json

--data synthetic-photos generates (once, into $SELFSUP_CACHE, default ~/.cache/selfsup) a set
of --photos ImageNet-like JPEGs: ~450x380 pixels, quality 90, ~100 KB each. To read a folder
that happens to be called synthetic-photos, write ./synthetic-photos."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` command (with its ``loader`` sub-command) to ``subparsers``."""
    from selfsup.bench.loader import SYNTHETIC_PHOTOS
    from selfsup.pipeline.recipes import RECIPES

    bench = subparsers.add_parser(
        "bench",
        help="throughput benchmarks (images/sec against a baseline in the same run)",
        description="Throughput benchmarks; each prints a ratio against a baseline measured "
        "in the same run.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    sub.required = True
    p = sub.add_parser(
        "loader",
        help="selfsup Loader vs a Pillow + DataLoader reference, same recipe",
        description=LOADER_DESCRIPTION,
        epilog=LOADER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help=f"an image folder in ImageNet layout (PATH/<class>/*.jpg), or {SYNTHETIC_PHOTOS} "
        "for the built-in ImageNet-like photo set",
    )
    p.add_argument(
        "--photos",
        type=int,
        default=512,
        metavar="N",
        help=f"images in the {SYNTHETIC_PHOTOS} set (default: %(default)s)",
    )
    p.add_argument(
        "--recipe",
        default="simclr",
        metavar="NAME",
        help=f"augmentation recipe, one of {', '.join(sorted(RECIPES))} (default: %(default)s)",
    )
    p.add_argument("--size", type=int, metavar="S", help="largest view side (default: recipe's)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=("cpu", "dali", "auto"),
        help="selfsup decode engine (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="default: 256")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="engine threads for selfsup and DataLoader worker processes for the reference "
        f"(default: one per core, here {os.cpu_count()})",
    )
    p.add_argument("--batches", type=int, default=8, metavar="K", help="timed batches per run "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="untimed batches first "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        metavar="R",
        help="rounds of runs, alternating the order A B, B A, ...; medians reported "
        "(default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="permutation and augmentation seed")
    p.add_argument("--json", metavar="FILE", help="write every number and machine facts here")
    p.add_argument("--no-reference", action="store_true", help="time the selfsup Loader only")
    p.add_argument(
        "--crop-flip-only",
        action="store_true",
        help="both sides: random resized crop + flip only (jitter, grayscale, blur, solarize off)",
    )
    p.add_argument(
        "--antialias",
        action="store_true",
        help="selfsup views area-average crops that shrink by more than 1.5x (ViewSpec."
        "antialias), as the Pillow reference always antialiases its resizes",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return bench


def _loader(args: argparse.Namespace) -> int:
    from selfsup.bench.loader import BenchConfig, bench_loader, format_report

    cfg = BenchConfig(
        data=args.data,
        recipe=args.recipe,
        engine=args.engine,
        batch_size=args.batch_size,
        workers=args.workers,
        batches=args.batches,
        warmup=args.warmup,
        repeats=args.repeats,
        size=args.size,
        seed=args.seed,
        photos=args.photos,
        reference=not args.no_reference,
        crop_flip_only=args.crop_flip_only,
        antialias=args.antialias,
        progress=not args.no_progress,
    )
    result = bench_loader(cfg)
    print(format_report(result))
    if args.json:
        path = Path(args.json)
        try:
            path.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise SelfsupError(f"cannot write --json {str(path)!r}: {e.strerror or e}") from e
        print(f"numbers written to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``bench`` command; returns the exit status."""
    return {"loader": _loader}[args.bench_command](args)


def main(argv: list[str] | None = None) -> int:
    """``selfsup bench`` on its own: parse ``argv`` (without "bench"), run, report errors."""
    parser = argparse.ArgumentParser(prog="selfsup")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except SelfsupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
