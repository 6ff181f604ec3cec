"""The training step and the Loader's hand-over on a GPU: no host synchronisation, batches on
the loader's own stream, the bench on CUDA events. Run with ``pytest -m gpu`` on a CUDA machine."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_OVERRIDES

pytestmark = pytest.mark.gpu


def _cfg(synthetic_root, *extra):
    from selfsup.config import load_config

    return load_config("default", [
        *TINY_OVERRIDES, f"data.path={synthetic_root}", "data.synthetic_train_per_class=12",
        "data.synthetic_val_per_class=4", "train.device=cuda", "data.engine=cpu", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_train_step_and_batch_delivery_do_not_sync_the_host(synthetic_root, precision):
    from selfsup.trainer.build import (
        build_loader,
        build_model_and_optimizer,
        describe_launch,
        join,
        train_step,
    )

    cfg = _cfg(synthetic_root, f"train.precision={precision}")
    device = join(cfg)
    loader = build_loader(cfg, device, describe_launch(cfg, device), progress=False)
    model = build_model_and_optimizer(cfg, device)
    it = iter(loader)
    try:
        for _ in range(2):  # warm-up: cuDNN autotuning and allocator growth may synchronise
            train_step(model, next(it).views, 0.1, device)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                batch = next(it)  # the hand-over: an event wait, no host sync
                loss = train_step(model, batch.views, 0.1, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss).item()
    finally:
        loader.close()


def test_batches_come_from_the_loaders_own_stream(synthetic_root):
    from selfsup.trainer.build import build_loader, describe_launch, join

    cfg = _cfg(synthetic_root)
    device = join(cfg)
    loader = build_loader(cfg, device, describe_launch(cfg, device), progress=False)
    try:
        raw = loader._load(loader.sampler.batch(loader.sampler.order(0), 0), 0)
        # the stream is made on the first load (in the thread that loads)
        assert loader._stream is not None and loader._stream != torch.cuda.current_stream()
        assert raw.ready is not None and all(v.is_cuda for v in raw.views)
        assert raw.labels.is_cuda and raw.indices.is_cuda
    finally:
        loader.close()


def test_bench_step_on_cuda_events(synthetic_root, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "selfsup", "bench", "step", "--no-progress", "--steps", "5",
         "--json", str(tmp_path / "s.json"), *TINY_OVERRIDES, f"data.path={synthetic_root}",
         "data.synthetic_train_per_class=12", "data.synthetic_val_per_class=4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["timing"] == "CUDA events"
    assert result["launch"]["device"].startswith("cuda")
    assert all(v > 0 for v in result["images_per_sec"].values())
