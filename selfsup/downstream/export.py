"""``selfsup export``: a run's weights as a torchvision ResNet state dict or a .safetensors file.

The exported names and shapes are exactly torchvision's ``resnet*`` (``fc`` included when the
run trained a classifier on the backbone's features), so ``torchvision.models.resnet50()``
loads them with ``load_state_dict``; the file is a plain dict of tensors that loads with
``torch.load(path, weights_only=True)`` in any process. Prefixes of wrapped models (DDP's
``module.``, compile's ``_orig_mod.``) are gone. A .safetensors export holds the same tensors
and the run's resolved config as metadata.

A network fine-tuned from inside the projection head (SimCLRv2's recipe) has head layers
between the backbone and ``fc``, which torchvision's ResNet has no place for: its export holds
the backbone alone, and says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from selfsup import __version__
from selfsup.config import config_to_dict
from selfsup.downstream.target import NETWORK, load_network, open_target
from selfsup.downstream.weights import describe_resnet, read_state, save_safetensors
from selfsup.errors import CheckpointError

FORMATS = ("torchvision", "safetensors")


def export(target: str | Path, out: str | Path, fmt: str = "torchvision") -> dict:
    """Write ``target``'s weights (a run directory or a weights file) to ``out``; returns what
    was written: ``{"path", "format", "architecture", "tensors", "fc", "note"}``."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise CheckpointError(f"{str(out)!r} is a directory; give the file to write")
    target = Path(target)
    note = ""
    if target.is_dir() and (target / NETWORK).is_file():
        cfg, net = load_network(target)
        state = {k: v for k, v in net.backbone.state_dict().items() if not k.startswith("fc.")}
        if net.head_layers == 0:
            state.update({f"fc.{k}": v for k, v in net.fc.state_dict().items()})
        else:
            note = (
                f"the classifier reads {net.head_layers} projection-head layer(s), which "
                "torchvision's ResNet has no place for: exported the backbone without fc"
            )
    elif target.is_dir():
        t = open_target(target)
        cfg = t.cfg
        state = {k: v for k, v in t.backbone.state_dict().items() if not k.startswith("fc.")}
    else:  # a weights file: its tensors with clean names, checked to be a ResNet
        if not target.exists():
            raise CheckpointError(
                f"{str(target)!r} does not exist; give a run directory or a weights file"
            )
        cfg, state = None, read_state(target)
        if "conv1.weight" not in state:
            raise CheckpointError(f"{target} holds {describe_resnet(state)}, not a ResNet")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    conv1 = state["conv1.weight"]
    width, stem = conv1.shape[0], conv1.shape[-1]
    if fmt == "torchvision" and (width != 64 or stem != 7):
        other = (
            f"torchvision's resnets have width 64 and a 7x7 stem; these weights (width {width}, "
            f"{stem}x{stem} stem) have its names but load only into a model built the same way "
            "(selfsup's model.width, model.small_input)"
        )
        note = f"{note}; {other}" if note else other
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "torchvision":
        torch.save(state, tmp)
    else:
        meta = {
            "format": "torchvision-resnet",
            "architecture": describe_resnet(state),
            "selfsup_version": __version__,
        }
        if cfg is not None:
            meta["config"] = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        save_safetensors(state, tmp, meta)
    tmp.replace(out)
    return {
        "path": str(out),
        "format": fmt,
        "architecture": describe_resnet(state),
        "tensors": len(state),
        "fc": "fc.weight" in state,
        "note": note,
    }
