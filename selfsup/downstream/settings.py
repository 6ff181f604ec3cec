"""Hyperparameters of the supervised stages (linear probe, fine-tuning, distillation), with
each paper's published protocol as a named preset, and ``prefix.key=value`` overrides.

One dataclass, :class:`Supervised`, describes all three: optimizer, learning rate(s) and their
scaling with the batch, weight decay, epochs and schedule. A preset fills it; command-line
overrides such as ``linear.epochs=10`` or ``finetune.lr=0.1`` replace single fields and are
checked like every config key (unknown key, wrong type, impossible value: one line).
The numbers are from the papers' code and READMEs (shared reference, methods.md A.12 and
methods_more.md sections 7 and 9).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import yaml

from selfsup.errors import ConfigError
from selfsup.fields import bounded, build_dataclass, choice


@dataclass
class Supervised:
    optimizer: str = choice("sgd", "sgd", "lars", "adamw")
    nesterov: bool = False
    momentum: float = bounded(0.9, 0.0, 1.0)
    lr: float = bounded(0.1, 0.0)  # the classifier's (fine-tuning: the new layers') base lr
    lr_backbone: float | None = None  # fine-tuning: the pretrained layers' base lr (None: lr)
    lr_scaling: str = choice("linear", "linear", "sqrt", "none")  # linear: lr * batch / 256
    batch_size: int = bounded(256, 1)
    weight_decay: float = bounded(0.0, 0.0)
    epochs: int = bounded(100, 1)
    warmup_epochs: float = bounded(0.0, 0.0)
    schedule: str = choice("cosine", "cosine", "step", "constant")
    milestones: list[int] = field(default_factory=list)  # step schedule: epochs of each drop
    gamma: float = bounded(0.1, 0.0, 1.0)  # step schedule: the factor at each milestone
    fc_init: str = choice("zero", "zero", "normal")  # normal: N(0, 0.01) (MoCo v3), bias 0
    # the training views' random-resized-crop area range (Inception's (0.08, 1) in every paper)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = bounded(0, 0)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {lo}, {hi}")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs:g} must be below epochs={self.epochs}"
            )
        late = [m for m in self.milestones if not 0 < m < self.epochs]
        if self.schedule == "step" and late:
            raise ConfigError(f"milestones {late} must lie between 0 and epochs={self.epochs}")

    def scaled(self, lr: float) -> float:
        """``lr`` scaled by the batch as ``lr_scaling`` says."""
        bs = self.batch_size
        return {"linear": lr * bs / 256, "sqrt": lr * math.sqrt(bs), "none": lr}[self.lr_scaling]

    def factor(self, epoch: float) -> float:
        """The schedule's multiplier of the learning rate at (fractional) ``epoch``."""
        if epoch < self.warmup_epochs:
            return epoch / self.warmup_epochs
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        span = max(self.epochs - self.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - self.warmup_epochs) / span)))


@dataclass
class Distill(Supervised):
    """Distillation: :class:`Supervised`'s optimisation settings plus how the teacher teaches."""

    # soft: the teacher's softened predictions on the student's own views (SimCLRv2);
    # hard: confident pseudo-labels from the teacher's centre crops, class-balanced, and
    # noisier views for the student (self-training, as Noisy Student)
    mode: str = choice("soft", "soft", "hard")
    # softmax temperature; None: 0.1 for a student of the teacher's architecture
    # (self-distillation), 1.0 for another (SimCLRv2's two settings)
    temperature: float | None = None
    # weight of the distillation term; the labelled subset's cross-entropy gets 1 - alpha
    # (SimCLRv2: L = (1 - a) * CE(labels) + a * L_distill; 1: labels unused)
    alpha: float = bounded(1.0, 0.0, 1.0)
    threshold: float = bounded(0.3, 0.0, 1.0)  # hard: the least teacher confidence kept
    balance: bool = True  # hard: as many pseudo-labelled images of every class
    student_recipe: str = "simclr"  # hard: the student's views (this recipe's first view)
    dropout: float = bounded(0.0, 0.0, 0.99)  # before the student's fc (Noisy Student: 0.5)


def _s(**kw) -> Supervised:
    return Supervised(**kw)


# Linear evaluation on a frozen backbone, per method's paper (methods.md A.12, methods_more.md
# section 9). Batch sizes are the papers' global batches.
LINEAR_PRESETS: dict[str, Supervised] = {
    # SimCLR v1/v2: Nesterov SGD 0.1 x bs/256 (4096), wd 1e-6, 90 epochs cosine, zero-init fc
    "simclr": _s(nesterov=True, lr=0.1, batch_size=4096, weight_decay=1e-6, epochs=90),
    "simclrv2": _s(nesterov=True, lr=0.1, batch_size=4096, weight_decay=1e-6, epochs=90),
    # BYOL: Nesterov SGD 0.2 x bs/256 (swept on a held-out split), wd 0, 80 epochs cosine
    "byol": _s(nesterov=True, lr=0.2, batch_size=1024, epochs=80),
    # ReLICv2: Nesterov SGD 0.3 x bs/256, 100 epochs
    "relicv2": _s(nesterov=True, lr=0.3, batch_size=1024, epochs=100),
    # MoCo v1/v2: SGD lr 30 at batch 256, wd 0, 100 epochs, x0.1 at 60 and 80
    "moco_v2": _s(
        lr=30.0, lr_scaling="none", batch_size=256, epochs=100, schedule="step", milestones=[60, 80]
    ),  # fmt: skip
    # MoCo v3: SGD 0.1 x bs/256 (1024), wd 0, 90 epochs cosine, fc ~ N(0, 0.01)
    "moco_v3": _s(lr=0.1, batch_size=1024, epochs=90, fc_init="normal"),
    # SwAV: SGD 0.3 at batch 256, wd 1e-6, 100 epochs cosine
    "swav": _s(lr=0.3, lr_scaling="none", batch_size=256, weight_decay=1e-6, epochs=100),
    # DINO: SGD 0.001 x bs/256 (1024; tuned for ViTs), wd 0, 100 epochs cosine
    "dino": _s(lr=0.001, batch_size=1024, epochs=100),
    # Barlow Twins: SGD, classifier 0.3 at batch 256, wd 1e-6, 100 epochs cosine
    "barlow_twins": _s(lr=0.3, lr_scaling="none", batch_size=256, weight_decay=1e-6, epochs=100),
    # VICReg: SGD, head 0.02 at batch 256, wd 1e-6, 100 epochs cosine
    "vicreg": _s(lr=0.02, lr_scaling="none", batch_size=256, weight_decay=1e-6, epochs=100),
}

# Fine-tuning of the whole network on 1% / 10% of the labels (methods.md A.12). ``lr`` is the
# new layers' rate, ``lr_backbone`` the pretrained layers'; the 1% and 10% variants differ.
FINETUNE_PRESETS: dict[str, dict[str, Supervised]] = {
    # SimCLRv2: LARS 0.005 x sqrt(bs) (1024), wd 0, no warm-up, 60 (1%) / 30 (10%) epochs,
    # from the projection head's first layer, zero-init fc
    "simclrv2": {
        "1%": _s(optimizer="lars", lr=0.005, lr_scaling="sqrt", batch_size=1024, epochs=60),
        "10%": _s(optimizer="lars", lr=0.005, lr_scaling="sqrt", batch_size=1024, epochs=30),
    },
    # SwAV: SGD 20 epochs, trunk / head 0.02 / 5 (1%), 0.01 / 0.2 (10%), x0.2 at 12 and 16
    "swav": {
        share: _s(
            lr=head,
            lr_backbone=trunk,
            lr_scaling="none",
            epochs=20,
            schedule="step",
            milestones=[12, 16],
            gamma=0.2,
        )
        for share, trunk, head in (("1%", 0.02, 5.0), ("10%", 0.01, 0.2))
    },  # fmt: skip
    # Barlow Twins: 20 epochs, backbone 0.005, head 0.5, wd 0, cosine
    "barlow_twins": {
        p: _s(lr=0.5, lr_backbone=0.005, lr_scaling="none", epochs=20) for p in ("1%", "10%")
    },
    # VICReg: 20 epochs, backbone / head 0.03 / 0.08 (1%) and 0.01 / 0.1 (10%), wd 0, cosine
    "vicreg": {
        "1%": _s(lr=0.08, lr_backbone=0.03, lr_scaling="none", epochs=20),
        "10%": _s(lr=0.1, lr_backbone=0.01, lr_scaling="none", epochs=20),
    },
}
# The student trains like SimCLRv2's pretraining: LARS 0.075 x sqrt(batch) (4096), weight
# decay 1e-4, 400 epochs with a warm-up over the first 5% (methods_more.md section 7).
DISTILL_DEFAULT = Distill(
    optimizer="lars", lr=0.075, lr_scaling="sqrt", batch_size=4096, weight_decay=1e-4,
    epochs=400, warmup_epochs=20,
)  # fmt: skip

FINETUNE_HEAD_LAYERS = {"simclrv2": 1}  # SimCLRv2 fine-tunes from the head's first layer


def pick_preset(presets: dict, name: str | None, method: str, what: str) -> tuple[str, object]:
    """The preset ``name``, or the method's own, else SimCLR's (returned with its name)."""
    if name is not None:
        if name not in presets:
            raise ConfigError(
                f"no {what} preset {name!r}; choose one of {', '.join(sorted(presets))}"
            )
        return name, presets[name]
    if method in presets:
        return method, presets[method]
    fallback = "simclrv2" if "simclrv2" in presets else "simclr"
    return fallback, presets[fallback]


def split_overrides(overrides: list[str], prefix: str) -> tuple[list[str], dict]:
    """(config overrides, the ``prefix.key=value`` ones as a mapping of parsed YAML values)."""
    rest, mine = [], {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key.startswith(prefix + "."):
            try:
                mine[key[len(prefix) + 1 :]] = yaml.safe_load(raw) if raw else None
            except yaml.YAMLError:
                mine[key[len(prefix) + 1 :]] = raw
        else:
            rest.append(item)
    return rest, mine


def with_overrides(base: Supervised, values: dict, prefix: str) -> Supervised:
    """``base`` with ``values`` (``prefix.key`` on the command line) replaced, validated.

    A preset's warm-up and step milestones are parts of its schedule: when ``epochs`` is
    changed and they are not, they scale with it (MoCo's drops at 60 and 80 of 100 epochs fall
    at 6 and 8 of 10)."""
    data = {**dataclasses.asdict(base), **values}
    epochs = values.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0:
        f = epochs / base.epochs
        if "warmup_epochs" not in values:
            data["warmup_epochs"] = base.warmup_epochs * f
        if "milestones" not in values:
            data["milestones"] = sorted({max(1, round(m * f)) for m in base.milestones})
    return build_dataclass(type(base), data, prefix + ".", "command line")
