"""Backbones by name: ``build_model("resnet50", small_input=True)``."""

from __future__ import annotations

from collections.abc import Callable

from selfsup.errors import ConfigError
from selfsup.trainer.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)

MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}


def build_model(name: str, **kwargs) -> ResNet:
    """Build a registered backbone; ``kwargs`` go to :class:`ResNet`."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "BasicBlock", "Bottleneck", "ResNet", "build_model"]
