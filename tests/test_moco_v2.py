"""MoCo v2's shuffle-BN: which samples share BatchNorm statistics, and the config checks.

The 1-vs-2-process equality of the whole step is in tests/test_ddp_equality.py."""

from __future__ import annotations

import pytest
import torch

from selfsup.errors import ConfigError
from tests.test_ddp_equality import BASE, METHODS, TINY_CONFIG, _views


def _build(*extra):
    from selfsup.config import load_config
    from selfsup.trainer.build import build_model_and_optimizer

    cfg = load_config(TINY_CONFIG, [*BASE, "method.name=moco_v2", *METHODS["moco_v2"], *extra])
    return cfg, build_model_and_optimizer(cfg, torch.device("cpu")).method


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_queries_use_contiguous_groups_and_keys_interleaved_ones(groups):
    cfg, m = _build(f"method.bn_groups={groups}")
    x = _views(cfg, 0, torch.float32)[0][0]  # [8, 3, S, S]
    with torch.no_grad():
        q, k = m._queries(x), m._shuffled_keys(x)
        n = len(x)
        # each group on its own (BatchNorm in training mode: the group's own statistics)
        q_ref = torch.cat([m.projector(m.backbone(x[i : i + n // groups]))
                           for i in range(0, n, n // groups)])  # fmt: skip
        k_ref = torch.empty_like(k)
        for g in range(groups):
            k_ref[g::groups] = m.key_projector(m.key_backbone(x[g::groups]))
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-6)
    if groups > 1:  # the whole-batch statistics would give other keys
        with torch.no_grad():
            whole = m.key_projector(m.key_backbone(x))
        assert not torch.allclose(k, whole, atol=1e-4)


def test_the_config_checks_the_groups():
    with pytest.raises(ConfigError, match="not a multiple of method.bn_groups 3"):
        _build("method.bn_groups=3")
    with pytest.raises(ConfigError, match="train.sync_bn=false"):
        _build("train.sync_bn=true")
    _build("train.sync_bn=true", "method.bn_groups=1")  # global BN: allowed, one group


def test_the_groups_must_split_over_the_processes(monkeypatch):
    from selfsup import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="does not split over the 3 processes"):
        _build("method.bn_groups=2")


def test_the_head_can_end_in_batchnorm_and_it_learns():
    """``proj_last_bn`` (the demo's change to MoCo v2's head): BatchNorm after the last layer,
    off by default as in the paper, and trained like the rest of the head."""
    cfg, m = _build()
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.projector)
    cfg, m = _build("method.proj_last_bn=true")
    assert isinstance(m.projector[-1], torch.nn.BatchNorm1d)
    m.forward(_views(cfg, 0, torch.float32)).backward()
    assert m.projector[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "extra",
    [("method.bn_groups=4",), ("method.bn_groups=1", "train.sync_bn=true")],
    ids=["shuffle-bn-2-groups-per-rank", "global-bn"],
)
def test_two_processes_train_like_one_with_other_groupings(extra):
    """Two key groups per rank, and one group (global BN): 2 processes step like 1."""
    from tests.ranks import run_ranks
    from tests.test_ddp_equality import assert_same_training, train_steps

    one = train_steps(0, 1, "moco_v2", "float64", extra)
    assert_same_training(one, run_ranks(train_steps, 2, "moco_v2", "float64", extra))
