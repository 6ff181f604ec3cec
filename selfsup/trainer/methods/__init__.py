"""Self-supervised methods, registered by name.

A method is an ``nn.Module`` holding the backbone and its heads, with a nested ``Config``
dataclass (its YAML section, fields typed with ``selfsup.fields``), a ``recipe`` name (the
views it trains on unless ``data.recipe`` says otherwise), ``min_views`` (the fewest views per
image it can use), ``sync_bn`` (whether its paper normalises over the global batch: the default
of ``train.sync_bn``), optionally ``online_features = False`` (its backbone never sees whole
images, as Jigsaw's tiles: ``eval.online_linear`` is refused), and ``forward(views) -> loss``
where ``views`` is the loader's list of view tensors, one ``[V, B, 3, S, S]`` per size. Under W
processes ``forward`` sees this rank's B = global batch / W samples and returns its local part
of the loss, such that DDP's average of the ranks' gradients is the gradient of the single-
process loss on the global batch; it reaches other ranks only through ``selfsup.distributed``'s
autograd-aware collectives. Optional hooks: ``after_backward()`` (between backward and the
optimizer) and ``after_step()`` (after it: EMA targets, queues, centres),
``prepare(global_batch)`` (once, before weights load: buffers sized by the batch, checks
against the process count) and the classmethod ``check_config(cfg, where)`` (constraints on the
whole config, raising ``ConfigError`` when it loads); the trainer sets ``step`` (this step's
index, before forward), ``total_steps`` and ``steps_per_epoch`` on the method for their
schedules, as host ints. A new method is one new file here plus one YAML recipe. Methods never
import the config layer; it imports this registry.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from selfsup.errors import ConfigError

METHODS: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator adding a method to ``METHODS`` under ``name``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        cls.name = name
        cls.Config.name = name
        METHODS[name] = cls
        return cls

    return add


def method_class(name: str, where: str = "config") -> type[nn.Module]:
    if name not in METHODS:
        raise ConfigError(
            f"{where}: unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def build_method(cfg: Any, backbone: nn.Module, num_features: int) -> nn.Module:
    return method_class(cfg.name)(cfg, backbone, num_features)


from selfsup.trainer.methods import (  # noqa: E402,F401  (registers)
    barlow_twins,
    byol,
    dino,
    jigsaw,
    moco_v2,
    moco_v3,
    relicv2,
    rotnet,
    simclr,
    simclrv2,
    swav,
    vicreg,
)
