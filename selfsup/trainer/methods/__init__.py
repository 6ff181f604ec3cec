"""Self-supervised methods, registered by name.

A method is an ``nn.Module`` holding the backbone and its heads, with a nested ``Config``
dataclass (its YAML section), a default ``recipe`` name, and ``forward(views) -> loss``
where ``views`` is the loader's list of view tensors, one ``[V, B, 3, S, S]`` per size.
A new method is one new file here plus one YAML recipe.
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


def method_config_class(name: Any, where: str = "config") -> type:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: method.name must be a string, got {name!r}")
    return method_class(name, where).Config


def build_method(cfg: Any, backbone: nn.Module, num_features: int) -> nn.Module:
    return method_class(cfg.name)(cfg, backbone, num_features)


from selfsup.trainer.methods import simclr  # noqa: E402,F401  (registers)
