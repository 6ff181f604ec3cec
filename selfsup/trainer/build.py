"""Everything a training run is made of, built from a Config: the process group, the device,
the model (global BN, DDP), the optimizer, the schedule and the step itself.

``pretrain`` (loop.py), ``selfsup bench step`` and the 1-vs-N-process tests all build through
here, so they train the same thing.

Batch semantics: ``train.batch_size`` is the **global** batch, as in the papers (SimCLR's 4096
is over all devices). Each of the W processes gets ``batch_size / W`` samples (W must divide
it); the learning-rate scaling, the schedule and the images/sec figures use the global batch.
"""

from __future__ import annotations

import inspect
import math
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import Config
from selfsup.errors import ConfigError, TrainingError
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources import open_split
from selfsup.trainer.methods import build_method
from selfsup.trainer.models import build_model
from selfsup.trainer.optim import build_optimizer, cosine, param_groups, warmup_cosine
from selfsup.trainer.sync_bn import convert_sync_bn


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available; use auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). auto is bf16 on GPU, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "fp64": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_backbone(cfg: Config) -> nn.Module:
    m = cfg.model
    return build_model(
        m.arch, small_input=m.small_input, width=m.width, zero_init_residual=m.zero_init_residual
    )


# torch's CPU backward of a 1x1 stride-2 convolution in channels_last memory with fewer than
# 16 input channels corrupts the heap (torch 2.13, oneDNN: "double free or corruption",
# measured here with 1 to 15 channels at 112 px; 16 and more are fine). A ResNet's first
# downsampling shortcut reads `width` channels (BasicBlock) or 4 x `width` (Bottleneck).
# torch.compile's inductor converts convolutions to channels_last by itself (its layout
# optimisation), so a compiled narrow ResNet crashes the same way (segfaults, measured here).
_CPU_CHANNELS_LAST_MIN_CHANNELS = 16


def narrow_shortcut(cfg: Config, device: torch.device) -> int | None:
    """The input channels of the first strided shortcut when the model runs on a CPU and it
    is too narrow for channels_last memory (see above); else None."""
    if device.type != "cpu":
        return None
    from selfsup.trainer.models import MODELS
    from selfsup.trainer.models.resnet import Bottleneck

    probe = MODELS[cfg.model.arch](width=1)  # the block type, at no cost
    shortcut_in = cfg.model.width * (4 if isinstance(probe.layer1[0], Bottleneck) else 1)
    return shortcut_in if shortcut_in < _CPU_CHANNELS_LAST_MIN_CHANNELS else None


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """``train.channels_last``, except on a CPU for ResNets too narrow for it (see above): the
    model and the loader's views then stay contiguous, and a warning says so."""
    if not cfg.train.channels_last:
        return False
    narrow = narrow_shortcut(cfg, device)
    if narrow is None:
        return True
    # Python's warnings filter shows it once per call site
    warnings.warn(
        f"train.channels_last is off for this run: model.width={cfg.model.width} gives a "
        f"{narrow}-channel strided shortcut, which torch's CPU channels_last backward "
        "mishandles below 16 channels",
        stacklevel=2,
    )
    return False


def scaled_lr(cfg: Config) -> float:
    """The peak learning rate from ``optim.lr`` and the global batch."""
    bs = cfg.train.batch_size
    o = cfg.optim
    return {"linear": o.lr * bs / 256, "sqrt": o.lr * math.sqrt(bs), "none": o.lr}[o.lr_scaling]


def per_process_batch(global_batch: int, world: int, saved_world: int | None = None) -> int:
    """``global_batch / world``, or a one-line error naming both sizes."""
    if global_batch % world == 0:
        return global_batch // world
    fits = [w for w in range(1, min(global_batch, 64) + 1) if global_batch % w == 0]
    was = f"; the run was saved with {saved_world} processes" if saved_world else ""
    raise ConfigError(
        f"train.batch_size={global_batch} is the global batch and {world} processes cannot split "
        f"it evenly{was}; launch with a world size that divides it ({', '.join(map(str, fits))}"
        f"{', ...' if global_batch > 64 else ''}) or change train.batch_size"
    )


@dataclass
class Launch:
    """How a run was launched; written to the run directory and the checkpoint."""

    world_size: int
    local_world_size: int
    backend: str | None
    device: str
    global_batch: int
    per_process_batch: int
    torch_threads: int
    engine_threads: int
    host: str

    def record(self) -> dict:
        return asdict(self)


def join(cfg: Config) -> torch.device:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU) and pick
    this process's device (``LOCAL_RANK`` on CUDA)."""
    device = resolve_device(cfg.train.device)
    distributed.init_from_env(device.type)
    if device.type == "cuda" and distributed.launched():
        device = torch.device("cuda", distributed.local_rank())
    if device.type == "cuda" and device.index is not None:
        # object collectives and CUDA events use the current device
        torch.cuda.set_device(device)
    return device


def describe_launch(cfg: Config, device: torch.device, saved_world: int | None = None) -> Launch:
    """This process's share of the global batch and of the node's cores (torch threads set)."""
    world = distributed.world_size()
    per = per_process_batch(cfg.train.batch_size, world, saved_world)
    threads = cfg.train.threads or distributed.cores_per_process()
    torch.set_num_threads(threads)
    backend = str(torch.distributed.get_backend()) if distributed.is_distributed() else None
    return Launch(
        world_size=world, local_world_size=distributed.local_world_size(), backend=backend,
        device=str(device), global_batch=cfg.train.batch_size, per_process_batch=per,
        torch_threads=threads, engine_threads=cfg.data.threads or distributed.cores_per_process(),
        host=socket.gethostname(),
    )  # fmt: skip


def build_loader(
    cfg: Config,
    device: torch.device,
    launch: Launch,
    progress: bool = True,
    source=None,
    **changes,
):
    """The training Loader: this rank's share of each global batch of the config's data (or
    of ``source``, a Source given in code, e.g. in-memory arrays). ``changes``: Loader
    arguments to use instead of the config's (selfsup profile's thread counts, prefetch,
    stage timing and candidate engines)."""
    data = cfg.data
    if source is None:
        source = open_split(data, data.train_split, progress=progress)
    kw = dict(
        batch_size=launch.per_process_batch, device=device, seed=cfg.train.seed, size=data.size,
        view_overrides=data.view_overrides, small_crops=data.small_crops,
        channels_last=use_channels_last(cfg, device), threads=launch.engine_threads,
        prefetch=data.prefetch, max_bad_fraction=data.max_bad_fraction, engine=data.engine,
        reduced_decode=data.reduced_decode,
    )  # fmt: skip
    return Loader(source, data.recipe, **{**kw, **changes})


@dataclass
class Model:
    """The method (backbone + heads) and what trains it."""

    method: nn.Module  # unwrapped: state dicts, evaluation, the backbone
    forward: nn.Module  # what the step calls: DDP(method) across processes, else method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    base_lr: float
    input_dtype: torch.dtype | None = None  # views are cast to it (fp64 runs)
    wd_at: Callable[[int], float] | None = None  # step -> weight decay, when scheduled


def build_model_and_optimizer(
    cfg: Config, device: torch.device, total_steps: int = 1, steps_per_epoch: int = 1
) -> Model:
    """The same initial weights on every rank (seeded), BatchNorm over the global batch when
    ``train.sync_bn`` and W > 1, DDP across processes (gradients averaged, overlapping
    backward; no buffer broadcast: with global BN every rank's running statistics are equal,
    without it they are averaged at checkpoints)."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg)
    method = build_method(cfg.method, backbone, backbone.num_features)
    # the run's length, for the methods' own schedules (EMA momentum, warm-ups, freezing)
    method.step, method.total_steps, method.steps_per_epoch = 0, total_steps, steps_per_epoch
    if hasattr(method, "prepare"):  # state sized by the run (SwAV's queue)
        method.prepare(global_batch=cfg.train.batch_size)
    if cfg.train.sync_bn and distributed.world_size() > 1:
        method = convert_sync_bn(method, device.type)
    fp64 = cfg.train.precision == "fp64"
    method = method.to(device, torch.float64 if fp64 else None)
    if use_channels_last(cfg, device):
        method = method.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        # In place, so parameter names (checkpoints, exported weights) stay the same. Static
        # shapes: each view size (224 and 96 in multi-crop) gets its own graph.
        # A narrow ResNet on a CPU: without inductor's own switch to channels_last (above).
        narrow = narrow_shortcut(cfg, device) is not None
        method.backbone.compile(
            dynamic=False, options={"layout_optimization": False} if narrow else None
        )
    o = cfg.optim
    lr_scale_1d = 1.0 if o.lr_1d is None or o.lr == 0 else o.lr_1d / o.lr
    groups = param_groups(method, o.weight_decay, o.exclude_1d, lr_scale_1d)
    base_lr = scaled_lr(cfg)
    optimizer = build_optimizer(
        cfg.optim.name, groups, base_lr, cfg.optim.weight_decay, momentum=cfg.optim.momentum
    )
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward = method
    if distributed.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        # Buffers are synced once at construction, never in forward (torch >= 2.13 names the
        # switch forward_sync_buffers; older releases call it broadcast_buffers).
        ddp = nn.parallel.DistributedDataParallel
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp).parameters
            else {"broadcast_buffers": False}
        )
        forward = ddp(method, device_ids=ids, **no_sync)
    wd_at = None
    if o.weight_decay_end is not None:

        def wd_at(step: int) -> float:
            return cosine(step, total_steps, o.weight_decay, o.weight_decay_end)

    return Model(
        method, forward, optimizer, scaler, amp_dtype, base_lr,
        torch.float64 if fp64 else None, wd_at,
    )  # fmt: skip


def lr_schedule(cfg: Config, base_lr: float, steps_per_epoch: int):
    """step -> learning rate: linear warm-up then cosine, over the run's global steps."""
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    final = base_lr * cfg.optim.final_lr_fraction

    def lr_at(step: int) -> float:
        return warmup_cosine(step, total, warmup, base_lr, final)

    return lr_at


def train_step(
    model: Model, views: list[torch.Tensor], lr: float, device, mark=None, step: int = 0
) -> torch.Tensor:
    """One optimisation step (``step``: its index in the run); returns the detached local loss
    (still on the device).

    The method's ``step`` attribute is set to ``step`` before its forward; its
    ``after_backward()`` runs between backward and the optimizer, and its ``after_step()``
    after the optimizer (EMA targets, queues, centres), when it has them. ``mark(phase)``,
    when given, is called after the forward, backward and optimizer phases (``selfsup bench
    step`` times them with it; it must not synchronise on its own)."""
    wd = None if model.wd_at is None else model.wd_at(step)
    for group in model.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if wd is not None and group.get("name") == "decay":
            group["weight_decay"] = wd
    if model.input_dtype is not None:
        views = [v.to(model.input_dtype) for v in views]
    model.method.step = step  # a host int: schedules inside the method need no sync
    with torch.autocast(device.type, dtype=model.amp_dtype, enabled=model.amp_dtype is not None):
        loss = model.forward(views)
    if mark:
        mark("forward")
    model.optimizer.zero_grad(set_to_none=True)
    model.scaler.scale(loss).backward()  # DDP's gradient all-reduce overlaps this
    after_backward = getattr(model.method, "after_backward", None)
    if after_backward is not None:  # e.g. SwAV drops its prototypes' gradient while frozen
        after_backward()
    if mark:
        mark("backward")
    model.scaler.step(model.optimizer)
    model.scaler.update()
    after_step = getattr(model.method, "after_step", None)
    if after_step is not None:
        after_step()
    if mark:
        mark("optimizer")
    return loss.detach()
