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


def _photo_folder(root, n=6, h=300, w=400):
    import cv2
    import numpy as np
    import simplejpeg

    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(n):
        small = rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)  # smooth, photo-like
        (root / "a" / f"{i}.jpg").write_bytes(simplejpeg.encode_jpeg(img, 90))
    return root


def test_reduced_decode_is_used_and_close_to_the_full_decode(tmp_path, monkeypatch):
    import numpy as np

    from selfsup.pipeline import ImageFolderSource, decode
    from selfsup.pipeline.engines import cpu
    from selfsup.pipeline.views import ViewSpec

    source = ImageFolderSource(_photo_folder(tmp_path))
    views = [ViewSpec(size=32, count=2, scale=(0.3, 1.0)), ViewSpec(size=16, count=2)]
    idx = np.arange(len(source))
    asked = []

    def spy(data, **kw):
        asked.append(kw.get("max_reduction", 1))
        return decode.decode_image(data, **kw)

    monkeypatch.setattr(cpu, "decode_image", spy)
    fast = cpu.CpuEngine(source, views, seed=3, threads=1, output="uint8").load(idx, 0)
    assert max(asked) >= 2  # crops of >= 90 px for 32 px views: at least 1/2 decode
    full = cpu.CpuEngine(
        source, views, seed=3, threads=1, output="uint8", reduced_decode=False
    ).load(idx, 0)
    for a, b in zip(fast.params, full.params, strict=True):
        assert np.array_equal(a, b)  # the same full-resolution parameter rows
    for a, b in zip(fast.views, full.views, strict=True):
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < 2.0, (
            diff.mean()
        )  # same boxes; DCT scaling filters slightly differently


def test_reduction_never_shrinks_a_crop_below_its_view(tmp_path):

    from selfsup.kernels.layout import P_H, P_W
    from selfsup.pipeline import ImageFolderSource
    from selfsup.pipeline.engines.cpu import CpuEngine
    from selfsup.pipeline.views import ViewSpec

    source = ImageFolderSource(_photo_folder(tmp_path, n=2))
    engine = CpuEngine(source, [ViewSpec(size=24, count=4)], seed=0, threads=1)
    for index in range(2):
        for epoch in range(20):
            rows = engine._rows(index, epoch, 300, 400)
            r = engine._max_reduction(rows)
            assert r >= 1
            assert all(min(row[P_H], row[P_W]) / r >= 24 for row in rows.rows)


class _MaskedArraySource:
    """An in-memory source whose precomputed masks keep only the left half (at half size)."""

    def __init__(self, n=8, side=40):
        import numpy as np

        from selfsup.pipeline.sources.array import ArraySource

        rng = np.random.default_rng(1)
        self.inner = ArraySource(rng.integers(30, 226, (n, side, side, 3), dtype=np.uint8))
        self.mask = np.zeros((side // 2, side // 2), np.uint8)
        self.mask[:, : side // 4] = 255
        self.num_classes = 1

    def __len__(self):
        return len(self.inner)

    def read(self, i):
        return self.inner.read(i)

    def describe(self, i):
        return f"masked#{i}"

    def read_mask(self, i):
        return self.mask


def test_precomputed_masks_replace_the_background_on_both_paths():
    import numpy as np
    import torch

    from selfsup.pipeline import Loader
    from selfsup.pipeline.views import ViewSpec

    source = _MaskedArraySource()
    view = ViewSpec(
        size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
        grayscale_p=0.0, blur_p=0.0, mask_p=1.0, mask_fill="black",
    )  # fmt: skip
    fused = next(iter(Loader(source, [view], 8, seed=0, threads=1, prefetch=0)))
    dev = next(iter(Loader(source, [view], 8, seed=0, threads=1, augment_on_device=True)))
    mean, std = np.array(view.mean), np.array(view.std)
    black = torch.tensor(-mean / std, dtype=torch.float32).view(3, 1, 1)
    for batch in (fused, dev):
        x = batch.views[0][0]  # [B, 3, 20, 20]
        # right half: background filled with black; left half: the image itself
        assert torch.allclose(x[:, :, :, 12:], black.expand(8, 3, 20, 8), atol=1e-5)
        assert (x[:, :, :, :8] - black).abs().amax() > 0.5
    assert torch.allclose(fused.views[0], dev.views[0], atol=1e-3)


def test_buffer_pool_reuses_only_buffers_nobody_holds():
    import torch

    from selfsup.pipeline.buffers import BufferPool

    pool = BufferPool(keep=2)
    a = pool.empty((4, 5))
    view = a[1:].flatten()  # a view keeps the storage in use
    del a
    b = pool.empty((4, 5))
    assert b.data_ptr() != view.data_ptr() - 5 * 4  # not handed out again while viewed
    arr = b.numpy()  # so does a numpy array
    del b
    c = pool.empty((4, 5))
    assert c.data_ptr() != arr.ctypes.data
    del view, arr, c
    d = pool.empty((4, 5))
    assert pool.reused == 1 and d.shape == (4, 5)
    assert pool.empty((2, 2), torch.uint8).dtype == torch.uint8


def test_batches_a_caller_keeps_are_never_overwritten(synthetic_root):
    from selfsup.pipeline import ImageFolderSource, Loader

    source = ImageFolderSource(synthetic_root / "train")
    kw = dict(batch_size=8, size=16, seed=2, threads=2)
    kept = list(Loader(source, "simclr", **kw))  # every batch held at once
    cloned = [[v.clone() for v in b.views] for b in Loader(source, "simclr", **kw)]
    for b, c in zip(kept, cloned, strict=True):
        for v, w in zip(b.views, c, strict=True):
            assert torch.equal(v, w)
    # and when batches are dropped, the pool recycles their memory
    loader = Loader(source, "simclr", **kw)
    for _ in loader:
        pass
    assert loader.engine._buffers.reused > 0


def test_stored_masks_keep_auto_on_the_cpu_engine_and_refuse_dali(monkeypatch):
    from selfsup.pipeline import Loader
    from selfsup.pipeline import loader as loader_mod
    from selfsup.pipeline.views import ViewSpec

    source = _MaskedArraySource()
    masked = [ViewSpec(size=16, mask_p=0.5)]
    monkeypatch.setattr(loader_mod, "dali_installed", lambda: True)
    loader = Loader(source, masked, 4, device="cuda:0", engine="auto", prefetch=0)
    assert loader.engine_name == "cpu"
    with pytest.raises(ConfigError, match="precomputed saliency masks"):
        Loader(source, masked, 4, engine="dali")
