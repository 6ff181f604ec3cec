"""The `selfsup` command line.

    selfsup pretrain [--config NAME|PATH] [key.sub=value ...]
    selfsup pretrain --resume RUN_DIR
    selfsup pack SRC OUT.beton [--max-res N] [--quality Q] [--workers K]
    selfsup bench loader --data PATH --recipe NAME [--engine cpu|dali|auto] ...

User errors (bad config, missing data, unknown names) print one line and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from selfsup import __version__
from selfsup.errors import SelfsupError

EPILOG = """\
overrides: any config key as key.sub=value, e.g. train.epochs=5 optim.lr=0.5 data.path=/data
built-in configs live in configs/ (default: configs/default.yaml, the built-in demo)"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised pretraining of image encoders, data-pipeline-first.",
    )
    p.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    pre = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (no arguments: the built-in demo on synthetic data)",
        description="Pretrain an encoder with a self-supervised method, then report weighted "
        "k-NN top-1 on the held-out split for the trained and a randomly initialised backbone. "
        "Writes config.yaml, metrics.jsonl, checkpoints/last.pt, backbone.pt and summary.json "
        "into the run directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pre.add_argument(
        "--config",
        default="default",
        help="a YAML recipe path or a name in configs/ (default: %(default)s)",
    )
    pre.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    pre.set_defaults(func=_pretrain)

    from selfsup.bench import add_parser as add_bench
    from selfsup.bench import run as run_bench
    from selfsup.pipeline.pack import add_parser as add_pack

    add_pack(sub)
    add_bench(sub).set_defaults(func=run_bench)
    return p


def _pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.trainer.loop import pretrain

    if args.resume:
        if args.overrides or args.config != "default":
            raise SelfsupError(
                "--resume continues a run with its saved config.yaml; "
                "drop --config and the overrides"
            )
        summary = pretrain(resume=args.resume, progress=not args.no_progress)
    else:
        cfg = load_config(args.config, args.overrides)
        summary = pretrain(cfg, progress=not args.no_progress)
    print(f"run directory: {summary['run_dir']}")
    print(
        f"steps: {summary['steps']}  epochs: {summary['epochs']:.2f}  "
        f"time: {summary['total_seconds']:.0f} s"
    )
    if summary["bad_samples"]:
        print(f"bad samples skipped: {len(summary['bad_samples'])} (listed in summary.json)")
    if "knn_top1" in summary:
        print(f"k-NN top-1 on the held-out split, trained backbone:     {summary['knn_top1']:.2f}%")
    if "knn_top1_random_init" in summary:
        print(
            f"k-NN top-1 on the held-out split, random-init backbone: "
            f"{summary['knn_top1_random_init']:.2f}%"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except SelfsupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
