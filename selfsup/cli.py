"""The `selfsup` command line.

    selfsup pretrain [--config NAME|PATH] [key.sub=value ...]
    selfsup pretrain --resume RUN_DIR
    selfsup pretrain --nproc N ...              (or: torchrun --nproc-per-node N -m selfsup ...)
    selfsup eval knn|linear RUN_DIR|WEIGHTS [--config NAME] [key.sub=value ...]
    selfsup finetune RUN_DIR --labels 1%|10%|FILE [key.sub=value ...]
    selfsup distill --teacher RUN_DIR [key.sub=value ...]
    selfsup export RUN_DIR OUT [--format torchvision|safetensors]
    selfsup pack SRC OUT.beton [--max-res N] [--quality Q] [--workers K]
    selfsup bench loader --data PATH --recipe NAME [--engine cpu|dali|auto] ...
    selfsup profile [--config NAME|PATH] [--steps N] [--out DIR] [key.sub=value ...]
    selfsup plot RUN_DIR [--out FILE.png]
    selfsup list recipes|methods|models|configs

User errors (bad config, missing data, unknown names) print one line and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from selfsup import __version__
from selfsup.errors import SelfsupError

EPILOG = """\
overrides: any config key as key.sub=value, e.g. train.epochs=5 optim.lr=0.5 data.path=/data
built-in configs ship in the package (selfsup list configs; default: the built-in demo)"""

LISTS = ("recipes", "methods", "models", "configs")


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
        help="a YAML file, or the name of a built-in config (selfsup list configs; "
        "default: %(default)s)",
    )
    pre.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this node: runs torchrun --standalone "
        "--nproc-per-node N -m selfsup pretrain ... (one per GPU; gloo on CPU)",
    )
    pre.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    pre.set_defaults(func=_pretrain)

    from selfsup.bench import add_parser as add_bench
    from selfsup.bench import add_plot_parser, add_profile_parser
    from selfsup.bench import run as run_bench
    from selfsup.downstream.cli import add_parsers as add_downstream
    from selfsup.pipeline.pack import add_parser as add_pack

    add_downstream(sub)
    add_pack(sub)
    add_bench(sub).set_defaults(func=run_bench)
    add_profile_parser(sub)
    add_plot_parser(sub)

    lst = sub.add_parser(
        "list",
        help="list the registered recipes, methods, models or the built-in configs",
        description="List what a config can name: view recipes (data.recipe), methods "
        "(method.name), backbones (model.arch), and the built-in configs (--config NAME).",
    )
    lst.add_argument("what", choices=LISTS, help="what to list")
    lst.set_defaults(func=_list)
    return p


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _first_comment(path) -> str:
    """The first sentence of a YAML file's leading comment block."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _list(args: argparse.Namespace) -> int:
    """One line per registered name, with what it is."""
    rows: list[tuple[str, str]] = []
    if args.what == "recipes":
        from selfsup.pipeline.recipes import RECIPES, describe

        rows = [(name, describe(name)) for name in sorted(RECIPES)]
    elif args.what == "methods":
        from selfsup.trainer.methods import METHODS

        rows = [
            (name, f"{_first_line(sys.modules[cls.__module__].__doc__)} (recipe: {cls.recipe})")
            for name, cls in sorted(METHODS.items())
        ]
    elif args.what == "models":
        from selfsup.trainer.models import MODELS

        rows = [(name, _first_line(fn.__doc__)) for name, fn in MODELS.items()]
    else:
        from selfsup.config import CONFIG_DIR

        rows = [(p.stem, _first_comment(p)) for p in sorted(CONFIG_DIR.glob("*.yaml"))]
    width = max(len(name) for name, _ in rows)
    for name, what in rows:
        print(f"{name:<{width}}  {what}".rstrip())
    return 0


def _spawn_torchrun(args: argparse.Namespace) -> int:
    """``selfsup pretrain --nproc N ...``: the same command under torchrun on this node. The
    exit status is the first failing rank's (2 for a user error), without torchrun's report
    (each rank has printed its own line)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from selfsup import distributed

    # torchrun's agent logs each worker failure at ERROR, after the rank's own one-line error
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    if args.nproc < 1:
        raise SelfsupError(f"--nproc must be at least 1, got {args.nproc}")
    child = ["pretrain", "--config", args.config]
    child += ["--resume", args.resume] if args.resume else []
    child += ["--no-progress"] if args.no_progress else []
    child += list(args.overrides)
    # each process's share of the cores (the trainer sets its threads the same way)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, distributed.node_cores() // args.nproc)))
    torchrun = ["--standalone", "--nproc-per-node", str(args.nproc), "-m", "selfsup", *child]
    try:
        run(parse_args(torchrun))
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from selfsup import distributed
    from selfsup.config import load_config
    from selfsup.trainer.loop import pretrain

    if args.nproc is not None:
        return _spawn_torchrun(args)
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
    if not distributed.is_main():
        return 0  # rank 0 reports
    print(f"run directory: {summary['run_dir']}")
    if summary["world_size"] > 1:
        print(f"processes: {summary['world_size']}  global batch: {summary['global_batch']}")
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may also follow the options
    (``selfsup eval linear RUN --mode protocol linear.epochs=10``)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return args.func(args)
    except SelfsupError as e:
        who = f"rank {os.environ['RANK']}: " if "RANK" in os.environ else ""
        sys.stderr.write(f"selfsup: {who}error: {e}\n")  # one write: ranks share the stream
        sys.stderr.flush()
        if "selfsup.distributed" in sys.modules:
            sys.modules["selfsup.distributed"].leave_together(e)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130
    finally:
        if "selfsup.distributed" in sys.modules:  # a process group may have been started
            sys.modules["selfsup.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
