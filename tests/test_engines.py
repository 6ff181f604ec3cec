"""Engine selection and the cpu engine's decode strategy."""

import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.pipeline import loader as loader_mod
from selfsup.pipeline.loader import resolve_engine


def test_auto_engine_is_cpu_without_cuda():
    assert resolve_engine("auto", torch.device("cpu")) == "cpu"
    assert resolve_engine("cpu", torch.device("cuda")) == "cpu"
    assert resolve_engine("dali", torch.device("cpu")) == "dali"


def test_auto_engine_is_dali_on_cuda_when_installed(monkeypatch):
    monkeypatch.setattr(loader_mod, "dali_installed", lambda: True)
    assert resolve_engine("auto", torch.device("cuda")) == "dali"
    monkeypatch.setattr(loader_mod, "dali_installed", lambda: False)
    assert resolve_engine("auto", torch.device("cuda")) == "cpu"


def test_unknown_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown engine 'fast'"):
        resolve_engine("fast", torch.device("cpu"))
