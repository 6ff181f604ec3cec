"""What a downstream command works on: a run directory or a weights file, with its config.

``open_target("runs/simclr-...")`` reads the run's ``config.yaml`` and its backbone
(``backbone.pt``, else the last checkpoint's); ``open_target("resnet50.pth", "default",
["model.arch=resnet50"])`` pairs a bare weights file with a config. Command-line overrides go
on top either way, so the same weights can be evaluated on other data (``data.path=...``).
A run directory of ``selfsup finetune`` or ``selfsup distill`` also holds ``network.pt``, the
whole classifier (backbone, optional head layers, ``fc``), which :func:`load_network` builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.config import Config, load_config
from selfsup.downstream.weights import load_backbone_state, read_state
from selfsup.errors import CheckpointError, ConfigError
from selfsup.trainer.build import build_backbone
from selfsup.trainer.classifier import Classifier
from selfsup.trainer.methods import build_method

NETWORK = "network.pt"  # a classifier's state: backbone.*, head.*, fc.*
NETWORK_INFO = "network.json"  # how to rebuild it: head layers, classes


@dataclass
class Target:
    """A backbone with its weights loaded (on the host) and the config it goes with."""

    cfg: Config
    backbone: nn.Module
    where: str  # the weights' path, for messages
    run_dir: Path | None  # None for a bare weights file


def run_config(run_dir: Path, overrides: list[str]) -> Config:
    """A run directory's saved config with ``overrides`` on top."""
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run directory {str(run_dir)!r} does not exist; give a directory made by "
            "selfsup pretrain, finetune or distill, or a weights file"
        )
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a run directory (no config.yaml); give a directory made "
            "by selfsup pretrain, finetune or distill, or a weights file"
        )
    return load_config(run_dir / "config.yaml", overrides)


def _weights_in(run_dir: Path) -> Path:
    for name in ("backbone.pt", "checkpoints/last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(
        f"{str(run_dir)!r} holds no weights yet (no backbone.pt or checkpoints/last.pt); "
        "let the run save a checkpoint first"
    )


def open_target(target: str | Path, config: str | None = None, overrides=()) -> Target:
    """The backbone and config of a run directory or a weights file (see the module doc).

    ``config`` replaces a run directory's own config (its model section must still match the
    weights); for a weights file it defaults to the built-in ``default``."""
    path = Path(target)
    overrides = list(overrides)
    if path.is_dir() or not path.suffix:
        run_dir = path
        cfg = load_config(config, overrides) if config else run_config(run_dir, overrides)
        if config:
            run_config(run_dir, [])  # still a run directory
        weights = _weights_in(run_dir)
    else:
        run_dir, weights = None, path
        if not path.is_file():
            raise CheckpointError(f"weights file {str(path)!r} does not exist")
        cfg = load_config(config or "default", overrides)
    state = read_state(weights)
    backbone = build_backbone(cfg)
    load_backbone_state(backbone, state, str(weights))
    return Target(cfg, backbone, str(weights), run_dir)


def save_network(net: Classifier, run_dir: Path, head_layers: int) -> None:
    """``network.pt`` and ``network.json`` (what :func:`load_network` rebuilds from)."""
    torch.save(net.state_dict(), run_dir / NETWORK)
    info = {"head_layers": head_layers, "num_classes": net.fc.out_features}
    (run_dir / NETWORK_INFO).write_text(json.dumps(info, indent=2) + "\n")


def build_network(
    cfg: Config,
    head_layers: int,
    num_classes: int,
    backbone: nn.Module | None = None,
    method_state: dict | None = None,
) -> Classifier:
    """A classifier of ``backbone`` (default: a new one of ``cfg``'s), the first
    ``head_layers`` layers of the method's projection head (SimCLRv2 fine-tunes from layer 1)
    with their weights from ``method_state`` (a pretraining checkpoint's ``model``) when
    given, and a zero-initialised ``fc``."""
    backbone = backbone if backbone is not None else build_backbone(cfg)
    head = None
    if head_layers:
        method = build_method(cfg.method, build_backbone(cfg), backbone.num_features)
        if not hasattr(method, "head_blocks"):
            raise CheckpointError(
                f"method {cfg.method.name!r} keeps no projection head layers to fine-tune "
                "from; use finetune.head_layers=0 (simclrv2 fine-tunes from its first)"
            )
        hidden = getattr(cfg.method, "proj_layers", 1) - 1
        if head_layers > hidden:
            raise ConfigError(
                f"--head-layers {head_layers}: the {cfg.method.name} head has {hidden} hidden "
                f"layer(s) to fine-tune from; give 0 to {hidden}"
            )
        if method_state is not None:
            prefix = "projector."
            part = {k[len(prefix) :]: v for k, v in method_state.items() if k.startswith(prefix)}
            try:
                method.projector.load_state_dict(part)
            except RuntimeError as e:
                raise CheckpointError(f"the checkpoint's head does not fit: {e}") from None
        head = method.head_blocks(head_layers)
    return Classifier(backbone, head, num_classes)


def load_network(run_dir: Path, overrides=()) -> tuple[Config, Classifier]:
    """The classifier network a finetune or distill run saved, with its config."""
    cfg = run_config(run_dir, list(overrides))
    if not (run_dir / NETWORK).is_file() or not (run_dir / NETWORK_INFO).is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no classifier ({NETWORK}); give a run directory made by "
            "selfsup finetune or selfsup distill"
        )
    info = json.loads((run_dir / NETWORK_INFO).read_text())
    net = build_network(cfg, info["head_layers"], info["num_classes"])
    try:
        state = torch.load(run_dir / NETWORK, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # unpickling and shape errors come in many types
        raise CheckpointError(f"{run_dir / NETWORK}: cannot be loaded ({e})") from None
    return cfg, net
