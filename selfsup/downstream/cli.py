"""The downstream commands of ``selfsup``: eval, finetune, distill, export.

selfsup eval knn RUN_DIR|WEIGHTS [--config NAME] [--k 10,20,100,200] [key=value ...]
selfsup eval linear RUN_DIR|WEIGHTS [--mode fast|protocol] [--preset METHOD] [...]
selfsup export RUN_DIR|WEIGHTS OUT [--format torchvision|safetensors]
"""

from __future__ import annotations

import argparse

from selfsup.errors import ConfigError

TARGET_HELP = (
    "a run directory (its config.yaml and backbone.pt) or a weights file (.pt/.pth/"
    ".safetensors, paired with --config)"
)
OVERRIDES_HELP = "config overrides, e.g. data.source=folder data.path=/data eval.batch_size=128"


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k takes comma-separated integers, got {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be at least 1, got {text!r}")
    return ks


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_DIR|WEIGHTS", help=TARGET_HELP)
    p.add_argument(
        "--config",
        help="a config name or YAML file for the model and data (default: the run directory's "
        "config.yaml; for a weights file: the built-in default)",
    )
    p.add_argument("--out", metavar="FILE.json", help="where to write the results as JSON "
                   "(default: RUN_DIR/<protocol>.json, or beside the weights file)")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help=OVERRIDES_HELP)


def _single_process() -> None:
    """The downstream commands run in one process; under torchrun every rank would repeat
    the whole job and write its own run directory."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "selfsup eval, finetune, distill and export run in one process; start them "
            "without torchrun (they use every core and one GPU)"
        )


def add_parsers(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a backbone: weighted k-NN or a linear probe",
        description="Evaluate a pretrained backbone on the config's data: the train split is "
        "the k-NN bank, the held-out split is scored. Top-1 and top-5 are printed as a table "
        "and written as JSON.",
    )
    protocols = ev.add_subparsers(dest="protocol", metavar="PROTOCOL")
    protocols.required = True
    knn = protocols.add_parser(
        "knn",
        help="weighted k-NN on L2-normalised centre-crop features, several k at once",
        description="Weighted k-NN (cosine similarity, votes exp(sim/T), T = eval."
        "knn_temperature, 0.07 by default) with the train split as the bank, for every k "
        "given. Features come from the centre crop (data.eval_size) through the config's "
        "engine.",
    )
    _target_args(knn)
    knn.add_argument("--k", type=_ks, default=(10, 20, 100, 200),
                     help="comma-separated k values (default: 10,20,100,200)")  # fmt: skip
    knn.set_defaults(func=_eval_knn)

    lin = protocols.add_parser(
        "linear",
        help="a linear classifier on the frozen backbone (fast sweep, or a paper's protocol)",
        description="A linear classifier on the frozen backbone (BatchNorm in eval mode). "
        "--mode fast (default): features extracted once, a sweep of learning rates and "
        "weight decays scored on a class-balanced part of the train split held out from it, "
        "the best retrained on the whole train split. --mode protocol: a method paper's "
        "published recipe (random-resized-crop + flip views every epoch; optimizer, "
        "learning rate and scaling, weight decay, epochs, schedule; centre-crop evaluation); "
        "the preset defaults to the run's method. Change one of its settings with "
        "linear.KEY=VALUE (keys: optimizer, nesterov, momentum, lr, lr_scaling, batch_size, "
        "weight_decay, epochs, warmup_epochs, schedule, milestones, gamma, fc_init, seed).",
    )
    _target_args(lin)
    lin.add_argument("--mode", choices=("fast", "protocol"), default="fast",
                     help="default: %(default)s")  # fmt: skip
    lin.add_argument("--preset", metavar="METHOD",
                     help="protocol mode: whose published recipe (default: the run's method; "
                     "simclr, simclrv2, byol, relicv2, moco_v2, moco_v3, swav, dino, "
                     "barlow_twins, vicreg)")  # fmt: skip
    lin.add_argument("--no-progress", action="store_true", help="no progress bar")
    lin.set_defaults(func=_eval_linear)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune the whole network on a few labels (1%%, 10%%, K/class or a file)",
        description="Fine-tune a pretrained network on a labelled subset of the train split "
        "(crop-and-flip views, a zero-initialised classifier; SimCLRv2 from its projection "
        "head's first layer) and score it on the whole held-out split. Settings: the method "
        "paper's preset (simclrv2, swav, barlow_twins, vicreg; others use simclrv2's) in its "
        "1%% or 10%% variant, changed key by key with finetune.KEY=VALUE (keys as for eval "
        "linear, plus lr_backbone). The batch is capped at the subset's size. Writes a run "
        "directory (run_dir/<run>-finetune-<labels>) with network.pt, backbone.pt, labels.txt, "
        "metrics.jsonl and summary.json.",
    )
    ft.add_argument("target", metavar="RUN_DIR|WEIGHTS", help=TARGET_HELP)
    ft.add_argument("--labels", required=True, metavar="SPEC",
                    help="P%% of every class (1%%, 10%%), K/class, or a file naming the "
                    "labelled images one per line (SimCLR's 1percent.txt format)")  # fmt: skip
    ft.add_argument("--preset", metavar="METHOD", help="whose recipe (default: the run's "
                    "method if it has one, else simclrv2)")  # fmt: skip
    ft.add_argument(
        "--random-init",
        action="store_true",
        help="start from random weights of the same architecture (the baseline)",
    )
    ft.add_argument("--head-layers", type=int, metavar="K",
                    help="projection-head layers kept under the classifier (default: the "
                    "preset's; 1 for simclrv2, else 0)")  # fmt: skip
    ft.add_argument("--config", help="config for a weights file (default: the built-in one)")
    ft.add_argument("--name", help="the run directory's name under run_dir")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="finetune.KEY=VALUE settings and config overrides")  # fmt: skip
    ft.set_defaults(func=_finetune)

    ds = sub.add_parser(
        "distill",
        help="train a student from a fine-tuned teacher on all training images",
        description="Distil a fine-tuned network (a selfsup finetune run directory) into a "
        "student trained from random weights on every training image, labels unused: "
        "--mode soft (SimCLRv2): the teacher's temperature-softened predictions on the same "
        "crop-and-flip views, cross-entropy times T^2; --mode hard (self-training): confident "
        "pseudo-labels from the teacher's centre crops, class-balanced, with noisier views for "
        "the student. The student has the teacher's architecture unless model.* overrides "
        "change it (temperature 0.1 then, 1.0 for another architecture). Settings: "
        "distill.KEY=VALUE (as finetune's, plus temperature, alpha, threshold, balance, "
        "student_recipe, dropout); defaults are SimCLRv2's pretraining schedule (LARS 0.075 x "
        "sqrt(batch), batch 4096, 400 epochs).",
    )
    ds.add_argument("--teacher", required=True, metavar="RUN_DIR",
                    help="a selfsup finetune (or distill) run directory")  # fmt: skip
    ds.add_argument("--mode", choices=("soft", "hard"), help="default: soft")
    ds.add_argument("--labels", metavar="SPEC", help="a labelled subset for the label "
                    "term (distill.alpha < 1); hard mode adds it with its true labels")  # fmt: skip
    ds.add_argument("--name", help="the run directory's name under run_dir")
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="distill.KEY=VALUE settings and config overrides (model.arch=... for "
                    "another student)")  # fmt: skip
    ds.set_defaults(func=_distill)

    exp = sub.add_parser(
        "export",
        help="write a run's backbone (and classifier) as torchvision or safetensors weights",
        description="Write the weights of a run directory (pretrain: the backbone; finetune or "
        "distill: the backbone and its fc) with torchvision's resnet state-dict names and "
        "shapes, loadable with torch.load(path, weights_only=True) and "
        "torchvision.models.resnetNN().load_state_dict. safetensors files carry the run's "
        "config as metadata. A weights file given instead is re-written with clean names "
        "(no module. or _orig_mod. prefixes).",
    )
    exp.add_argument("target", metavar="RUN_DIR|WEIGHTS", help=TARGET_HELP)
    exp.add_argument("out", metavar="OUT", help="the file to write (.pth or .safetensors)")
    exp.add_argument("--format", choices=("torchvision", "safetensors"),
                     help="default: safetensors for an OUT ending in .safetensors, "
                     "else torchvision")  # fmt: skip
    exp.set_defaults(func=_export)


def _eval_knn(args: argparse.Namespace) -> int:
    _single_process()
    from selfsup.downstream.evaluate import run_knn, table, write_result
    from selfsup.downstream.target import open_target

    t = open_target(args.target, args.config, args.overrides)
    result = run_knn(t, args.k)
    path = write_result(result, args.out, t, "eval_knn")
    print(
        f"k-NN (T={result['temperature']}) of {result['weights']}: "
        f"{result['eval_images']} held-out images, bank of {result['train_images']}"
    )
    rows = [(k, f"{v['top1']:.2f}", f"{v['top5']:.2f}") for k, v in result["k"].items()]
    print(table(rows, ("k", "top-1 %", "top-5 %")))
    print(f"written: {path}")
    return 0


def _eval_linear(args: argparse.Namespace) -> int:
    _single_process()
    from selfsup.downstream import linear
    from selfsup.downstream.evaluate import table, write_result
    from selfsup.downstream.settings import (
        LINEAR_PRESETS,
        pick_preset,
        split_overrides,
        with_overrides,
    )
    from selfsup.downstream.target import open_target

    overrides, mine = split_overrides(args.overrides, "linear")
    if args.mode == "fast" and (mine or args.preset):
        raise ConfigError("--preset and linear.* settings belong to --mode protocol")
    t = open_target(args.target, args.config, overrides)
    if args.mode == "fast":
        result = linear.run_fast(t)
        what = (
            f"fast linear probe of {result['weights']}: lr {result['lr']}, weight decay "
            f"{result['weight_decay']} chosen on {result['holdout_images']} held-out train images"
        )
    else:
        name, preset = pick_preset(LINEAR_PRESETS, args.preset, t.cfg.method.name, "linear")
        s = with_overrides(preset, mine, "linear")
        result = linear.run_protocol(t, s, name, progress=not args.no_progress)
        what = f"linear probe of {result['weights']}, {name}'s protocol ({s.epochs} epochs)"
    path = write_result(result, args.out, t, f"eval_linear_{args.mode}")
    print(what)
    rows = [(result["eval_images"], f"{result['top1']:.2f}", f"{result['top5']:.2f}")]
    print(table(rows, ("images", "top-1 %", "top-5 %")))
    print(f"written: {path}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    _single_process()
    from selfsup.downstream.finetune import finetune
    from selfsup.downstream.settings import split_overrides
    from selfsup.downstream.target import open_target

    overrides, mine = split_overrides(args.overrides, "finetune")
    if args.head_layers is not None and args.head_layers < 0:
        raise ConfigError(f"--head-layers must be 0 or more, got {args.head_layers}")
    t = open_target(args.target, args.config, overrides)
    s = finetune(
        t, args.labels, preset=args.preset, settings=mine, random_init=args.random_init,
        head_layers=args.head_layers, name=args.name, progress=not args.no_progress,
    )  # fmt: skip
    print(f"run directory: {s['run_dir']}")
    print(
        f"fine-tuned from {s['from']} on {s['labelled_images']} labelled images "
        f"({s['labels']}, {s['per_class']['min']}-{s['per_class']['max']} per class), "
        f"{s['preset']} preset{_changed(s['changed'])}, {s['settings']['epochs']} epochs, "
        f"{s['seconds']:.0f} s"
    )
    rows = [(s["eval_images"], f"{s['top1']:.2f}", f"{s['top5']:.2f}")]
    print(table_of(rows))
    return 0


def _distill(args: argparse.Namespace) -> int:
    _single_process()
    from pathlib import Path

    from selfsup.downstream.distill import distill
    from selfsup.downstream.settings import split_overrides

    overrides, mine = split_overrides(args.overrides, "distill")
    if args.mode:
        mine["mode"] = args.mode
    s = distill(Path(args.teacher), overrides, mine, labels=args.labels, name=args.name,
                progress=not args.no_progress)  # fmt: skip
    print(f"run directory: {s['run_dir']}")
    extra = ""
    if s["pseudo_labels"]:
        p = s["pseudo_labels"]
        extra = f", {p['confident']} confident pseudo-labels, {p['used']} used"
    print(
        f"distilled ({s['mode']}, T={s['temperature']}) from {s['teacher']} on "
        f"{s['student_images']} images{extra}, {s['settings']['epochs']} epochs, "
        f"{s['seconds']:.0f} s"
    )
    rows = [("teacher", s["eval_images"], f"{s['teacher_top1']:.2f}", f"{s['teacher_top5']:.2f}"),
            ("student", s["eval_images"], f"{s['top1']:.2f}", f"{s['top5']:.2f}")]  # fmt: skip
    from selfsup.downstream.evaluate import table

    print(table(rows, ("network", "images", "top-1 %", "top-5 %")))
    return 0


def _changed(keys: list[str]) -> str:
    return f" with {', '.join(keys)} changed" if keys else ""


def table_of(rows) -> str:
    from selfsup.downstream.evaluate import table

    return table(rows, ("images", "top-1 %", "top-5 %"))


def _export(args: argparse.Namespace) -> int:
    _single_process()
    from selfsup.downstream.export import export

    fmt = args.format or ("safetensors" if args.out.endswith(".safetensors") else "torchvision")
    if fmt == "safetensors" and not args.out.endswith(".safetensors"):
        raise ConfigError(f"--format safetensors writes a .safetensors file; got {args.out!r}")
    info = export(args.target, args.out, fmt)
    fc = " and fc" if info["fc"] else ""
    print(f"exported {info['architecture']}{fc}: {info['tensors']} tensors to {info['path']}")
    if info["note"]:
        print(f"note: {info['note']}")
    return 0
