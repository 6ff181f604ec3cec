"""Backbone weights in and out: find them (a run directory, a ``backbone.pt``, an exported
``.pth`` or ``.safetensors`` file), clean their names, check them against an architecture.

Names are torchvision's ResNet names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...,
``fc.weight``). Weights saved from a wrapped model carry prefixes that are cleaned here:
``module.`` (DistributedDataParallel), ``_orig_mod.`` (``torch.compile``) and ``backbone.``
(a method's or a classifier network's state).

A ``.safetensors`` file is read and written by the few lines below (the format is an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
then the raw little-endian bytes), so no extra package is needed; the tests check the files
against the ``safetensors`` package itself.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch
from torch import nn

from selfsup.errors import CheckpointError

# safetensors dtype names
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod)\.")


def clean_names(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` without DDP's ``module.`` and compile's ``_orig_mod.`` anywhere in a name;
    with ``prefix`` (e.g. ``"backbone."``), only the entries under it, the prefix removed."""
    out = {}
    for name, t in state.items():
        name = _WRAPPERS.sub(r"\1", name)
        while _WRAPPERS.search(name):
            name = _WRAPPERS.sub(r"\1", name)
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix) :]
        out[name] = t
    return out


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write ``state`` as a .safetensors file (tensors made contiguous, on the host)."""
    header: dict = {}
    blobs, offset = [], 0
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        if t.dtype not in _ST_DTYPES:
            raise CheckpointError(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; a damaged file raises CheckpointError."""
    try:
        blob = Path(path).read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        metadata = header.pop("__metadata__", {}) or {}
        base = 8 + n
        state = {}
        for name, info in header.items():
            b, e = info["data_offsets"]
            dtype = _ST_NAMES[info["dtype"]]
            if e == b:  # no elements
                state[name] = torch.empty(info["shape"], dtype=dtype)
                continue
            t = torch.frombuffer(bytearray(blob[base + b : base + e]), dtype=torch.uint8)
            state[name] = t.view(dtype).reshape(info["shape"])
    except (OSError, ValueError, KeyError, struct.error, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
    return state, metadata


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a state dict saved by torch (``.pt``, ``.pth``), a
    ``.safetensors`` file, or a selfsup checkpoint (its method's backbone is taken)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot be loaded as torch weights ({e})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = clean_names(state["model"], "backbone.")  # a pretraining checkpoint
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapping
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    state = clean_names(state)
    if any(k.startswith("backbone.") for k in state):
        state = clean_names(state, "backbone.")
    return state


def describe_resnet(state: dict[str, torch.Tensor]) -> str:
    """What ResNet a state dict holds, e.g. ``resnet50 (width 64, 7x7 stem)``, from its names
    and shapes; ``an unknown network`` when it holds none."""
    from selfsup.trainer.models.resnet import BasicBlock, Bottleneck

    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return "an unknown network (no conv1.weight)"
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(idx))
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    known = {
        (BasicBlock, (2, 2, 2, 2)): "resnet18", (BasicBlock, (3, 4, 6, 3)): "resnet34",
        (Bottleneck, (3, 4, 6, 3)): "resnet50", (Bottleneck, (3, 4, 23, 3)): "resnet101",
        (Bottleneck, (3, 8, 36, 3)): "resnet152",
    }  # fmt: skip
    block = Bottleneck if bottleneck else BasicBlock
    name = known.get((block, tuple(blocks)), f"a ResNet with stages {tuple(blocks)}")
    stem = f"{conv1.shape[-1]}x{conv1.shape[-1]} stem"
    return f"{name} (width {conv1.shape[0]}, {stem})"


def load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``backbone`` (its ``fc`` entries, if any, are left out), or raise a
    one-line CheckpointError naming what the weights hold and what the model is."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        what = (
            f"{len(missing)} missing, {len(extra)} unexpected and {len(shapes)} mis-shaped "
            f"tensors (e.g. {(missing + extra + shapes)[0]})"
        )
        raise CheckpointError(
            f"{where} holds {describe_resnet(state)}, but the model is "
            f"{describe_resnet(own)} ({what}); set model.arch, model.width and "
            "model.small_input to match the weights (or give the run directory's config)"
        )
    backbone.load_state_dict(state, strict=False)
