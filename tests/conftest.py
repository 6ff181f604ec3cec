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
