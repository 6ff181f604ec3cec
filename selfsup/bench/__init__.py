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

from selfsup.errors import ConfigError, SelfsupError

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
        help="an image folder in ImageNet layout (PATH/<class>/*.jpg), a .beton file, a .tar "
        f"shard or a directory of them, or {SYNTHETIC_PHOTOS} for the built-in ImageNet-like "
        "photo set",
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
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="undecodable samples are passed over and counted by both loaders; above this "
        "fraction the benchmark stops, naming the first (default: %(default)s, as "
        "data.max_bad_fraction)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_step_parser(sub)
    return bench


STEP_DESCRIPTION = """\
Where a training step's time goes, from one run of a config (built exactly as `selfsup
pretrain` builds it): images/sec of (a) the model alone, on synthetic batches already on the
device with the loader's shapes, dtype and memory format, (b) the loader alone, and (c) end to
end; the ratio end-to-end / model-only; and each step's time split into waiting for data,
forward, backward (DDP's gradient all-reduce overlaps it) and optimizer, as median and 90th
percentile (CUDA events on a GPU, wall clock on a CPU). Under torchrun the figures are global:
images/sec counts the global batch over the slowest rank's time."""

STEP_EPILOG = """\
examples:
  selfsup bench step                                    # the built-in demo config
  selfsup bench step --config my.yaml train.batch_size=512 --steps 50 --json step.json
  torchrun --nproc-per-node 8 -m selfsup bench step --config my.yaml"""


def _add_step_parser(sub) -> None:
    p = sub.add_parser(
        "step",
        help="model-only, loader-only and end-to-end images/sec of a config, with the "
        "step-time breakdown",
        description=STEP_DESCRIPTION,
        epilog=STEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default="default",
        help="a YAML file or a built-in config name (default: %(default)s)",
    )
    p.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps of each "
                   "kind (default: %(default)s)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed steps before "
                   "each kind (default: %(default)s)")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _step(args: argparse.Namespace) -> int:
    from selfsup import distributed
    from selfsup.bench.step import bench_step, format_report
    from selfsup.config import load_config

    _check_steps(args)
    cfg = load_config(args.config, args.overrides)
    result = bench_step(cfg, steps=args.steps, warmup=args.warmup, progress=not args.no_progress)
    if not distributed.is_main():
        return 0
    print(format_report(result))
    if args.json:
        _write_json(args.json, result)
    return 0


def _check_steps(args: argparse.Namespace) -> None:
    """``bench step`` and ``profile``: at least one timed step, no negative warm-up."""
    if args.steps < 1 or args.warmup < 0:
        raise SelfsupError(
            f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}"
        )


def _write_json(where: str, result: dict) -> None:
    path = Path(where)
    try:
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise SelfsupError(f"cannot write --json {str(path)!r}: {e.strerror or e}") from e
    print(f"numbers written to {path}")


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
        max_bad_fraction=args.max_bad_fraction,
    )
    result = bench_loader(cfg)
    print(format_report(result))
    if args.json:
        _write_json(args.json, result)
    return 0


def add_profile_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``profile`` command to the ``selfsup`` sub-parsers."""
    from selfsup.bench.profile import CHANGES
    from selfsup.bench.profile import __doc__ as doc

    p = subparsers.add_parser(
        "profile",
        help="what limits a config's images/sec (loader or model), by how much, what helps",
        description=doc.split("\n\n", 1)[1] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default="default",
        help="a YAML file or a built-in config name (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        metavar="N",
        help="timed steps or batches of each measurement (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="W",
        help="untimed ones before each (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write report.json and report.md here (default: profile-<method>-<date>-<time>)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="also record --steps end-to-end steps with torch.profiler, the loader's stages "
        "added as named ranges, into trace.json (trace-rank<N>.json under torchrun): open it "
        "in https://ui.perfetto.dev or chrome://tracing",
    )
    p.add_argument(
        "--changes",
        default="all",
        metavar="LIST",
        help="candidate changes to measure, comma-separated, from "
        f"{', '.join(CHANGES)}; 'all' (default) or 'none'",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=_profile)
    return p


def _changes(text: str) -> tuple[str, ...]:
    """``--changes``: 'all', 'none' or a comma-separated list of CHANGES' names."""
    from selfsup.bench.profile import CHANGES, check_changes

    if text in ("all", "none"):
        return CHANGES if text == "all" else ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        return check_changes(names or [text])
    except ConfigError as e:
        raise ConfigError(f"--changes: {e}") from None


def _profile(args: argparse.Namespace) -> int:
    import time

    from selfsup import distributed
    from selfsup.bench.profile import format_report, profile, write_report
    from selfsup.config import load_config

    _check_steps(args)
    changes = _changes(args.changes)
    from selfsup.trainer.build import join

    cfg = load_config(args.config, args.overrides)
    join(cfg)  # the process group under torchrun (idempotent): the ranks agree on --out
    out = Path(args.out or f"profile-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(distributed.broadcast_object(str(out)))  # one name on every rank
    trace = None
    if args.trace:
        name = f"trace-rank{distributed.rank()}.json" if distributed.world_size() > 1 else None
        trace = out / (name or "trace.json")
    result = profile(cfg, steps=args.steps, warmup=args.warmup, progress=not args.no_progress,
                     changes=changes, trace_path=trace)  # fmt: skip
    if not distributed.is_main():
        return 0
    paths = write_report(result, out)
    if trace is not None:
        paths.append(trace)
    print(format_report(result))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``plot`` command: a run's curves from its metrics.jsonl."""
    p = subparsers.add_parser(
        "plot",
        help="draw a run's loss, learning rate, images/sec and k-NN curves (a PNG)",
        description="Draw a run directory's metrics.jsonl (selfsup pretrain, finetune or "
        "distill): loss, learning rate, images/sec and, when logged (eval.knn_every), k-NN "
        "top-1, against the step. Needs matplotlib (pip install 'selfsup[plot]').",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    p.add_argument("--out", metavar="FILE.png", help="default: RUN_DIR/curves.png")
    p.set_defaults(func=_plot)
    return p


def _plot(args: argparse.Namespace) -> int:
    from selfsup.bench.plots import run_figures

    paths = run_figures(Path(args.run_dir), Path(args.out) if args.out else None)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``bench`` command; returns the exit status."""
    return {"loader": _loader, "step": _step}[args.bench_command](args)


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
