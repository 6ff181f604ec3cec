import os
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter (on CPU tensors). Triton reads the
# variable when a kernel is decorated, so it is set before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep tests away from the user's cache: the synthetic dataset and anything else cached
# goes to a private temporary directory.
os.environ.setdefault("SELFSUP_CACHE", tempfile.mkdtemp(prefix="selfsup-test-cache-"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (train 12/class, val 4/class), generated once per session."""
    from selfsup.pipeline.sources.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    return ensure_synthetic(root, seed=0, train_per_class=12, val_per_class=4, progress=False)


TINY_OVERRIDES = [
    "data.size=16",
    "data.eval_size=16",
    "model.arch=resnet18",
    "model.width=8",
    "model.small_input=true",
    "method.proj_hidden_dim=32",
    "method.proj_dim=16",
    "train.batch_size=16",
    "train.threads=1",
    "data.threads=1",
    "eval.batch_size=64",
]


@pytest.fixture
def tiny_overrides(synthetic_root, tmp_path) -> list[str]:
    """Overrides making the default config a seconds-long run on the small dataset."""
    return [
        *TINY_OVERRIDES,
        f"data.path={synthetic_root}",
        "data.synthetic_train_per_class=12",
        "data.synthetic_val_per_class=4",
        f"run_dir={tmp_path / 'runs'}",
        "name=tiny",
    ]


@pytest.fixture
def untrained_run_dir(tiny_overrides, tmp_path) -> Path:
    """A run directory as selfsup pretrain leaves it (config.yaml, backbone.pt) for the tiny
    config, with the untrained backbone's weights (seed 0)."""
    from selfsup.config import dump_config, load_config
    from selfsup.trainer.build import build_backbone

    cfg = load_config("default", tiny_overrides)
    d = tmp_path / "runs" / "tiny"
    d.mkdir(parents=True)
    dump_config(cfg, d / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_backbone(cfg).state_dict(), d / "backbone.pt")
    return d


def recompute_knn(cfg, run_dir: Path) -> float:
    """k-NN top-1 of the run's saved backbone.pt on its held-out split, computed afresh (the
    number summary.json must hold)."""
    import torch

    from selfsup.pipeline.sources import open_split
    from selfsup.trainer.build import build_backbone
    from selfsup.trainer.evaluate import extract_features, knn_top1

    net = build_backbone(cfg)
    net.load_state_dict(torch.load(run_dir / "backbone.pt", weights_only=True))
    kw = dict(size=cfg.data.eval_size, batch_size=cfg.eval.batch_size, threads=cfg.data.threads,
              reduced_decode=cfg.data.reduced_decode)  # fmt: skip
    train = extract_features(net, open_split(cfg.data, cfg.data.train_split), **kw)
    val = extract_features(net, open_split(cfg.data, cfg.data.val_split), **kw)
    acc = knn_top1(*train, *val, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    return round(acc, 2)


def pytest_collection_modifyitems(config, items):
    """`pytest -m gpu` on a machine without CUDA skips, saying why, instead of failing."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
