"""The dali engine against the cpu engine (uint8 output), in DALI's CPU-only mode.

Run with ``pytest -m dali tests/test_dali.py`` (the default run deselects the marker); the
tests that need no DALI run by default. Images are small and smooth (low-frequency noise
upsampled, JPEG quality 90) so that interpolation differences look like they do on photos.
"""

from __future__ import annotations

import struct
import sys

import cv2
import numpy as np
import pytest
import simplejpeg
import torch

from selfsup.errors import ConfigError, DataError
from selfsup.kernels.layout import P_FLIP
from selfsup.pipeline.decode import jpeg_orientation
from selfsup.pipeline.engines.cpu import CpuEngine
from selfsup.pipeline.engines.dali import DaliEngine, dali_jpeg_size
from selfsup.pipeline.views import ViewSpec

# Views without colour ops; the engines only crop, resize and flip anyway.
PLAIN = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
VIEWS = [
    ViewSpec(size=32, count=2, **PLAIN),
    ViewSpec(size=16, count=1, interpolation="bilinear", **PLAIN),
]


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = (rng.random((6, 8, 3)) * 255).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # a little texture
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(img, quality=90)


class MemorySource:
    """Payloads in a list; an ``OSError`` payload is raised by ``read``."""

    num_classes = 5

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int):
        payload, label = self.items[index]
        if isinstance(payload, OSError):
            raise payload
        return payload, label

    def describe(self, index: int) -> str:
        return f"memory#{index}"


def _source(n: int = 24, seed: int = 0, side=(48, 96)) -> MemorySource:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = (int(s) for s in rng.integers(side[0], side[1] + 1, 2))
        items.append((_jpeg(_image(rng, h, w)), i % 5))
    return MemorySource(items)


def _engines(source, views, seed=3, threads=2, **kw):
    """A dali engine and the cpu engine to compare it with, decoding at full resolution."""
    dali = DaliEngine(source, views, seed=seed, threads=threads, **kw)
    kw.pop("device_id", None)
    # DALI decodes in full: compare like with like
    cpu = CpuEngine(
        source, views, seed=seed, threads=threads, output="uint8", reduced_decode=False, **kw
    )
    return dali, cpu


@pytest.fixture
def needs_dali():
    """Skip without nvidia-dali, unless SELFSUP_REQUIRE_DALI=1 (CI), when it must be there."""
    from tests.deps import require

    require("nvidia.dali")


# -- no DALI needed --------------------------------------------------------------------


def _exif_jpeg(orientation: int) -> bytes:
    data = _jpeg(np.zeros((16, 24, 3), np.uint8))
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_host_checks_route_only_plain_jpegs_to_dali():
    rng = np.random.default_rng(0)
    img = _image(rng, 30, 40)
    good = _jpeg(img)
    assert dali_jpeg_size(good) == (30, 40)
    assert jpeg_orientation(good) == 1
    assert jpeg_orientation(_exif_jpeg(6)) == 6
    assert dali_jpeg_size(_exif_jpeg(1)) == (16, 24)
    assert dali_jpeg_size(_exif_jpeg(6)) is None  # rotated: decoded on the host
    assert dali_jpeg_size(good[: len(good) // 2]) is None  # truncated
    assert dali_jpeg_size(b"") is None
    assert dali_jpeg_size(b"\xff\xd8\xff" + bytes(64)) is None  # header does not parse
    assert dali_jpeg_size(cv2.imencode(".png", img)[1].tobytes()) is None
    assert dali_jpeg_size(img) is None  # decoded pixels
    sof = good.find(b"\xff\xc0") + 5  # declare a 60000 x 40000 image
    bomb = good[:sof] + struct.pack(">HH", 60000, 40000) + good[sof + 4 :]
    assert dali_jpeg_size(bomb) is None


def test_missing_dali_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ConfigError, match=r"selfsup\[dali\]"):
        DaliEngine(_source(2), VIEWS)


# -- CPU-only DALI ---------------------------------------------------------------------


@pytest.mark.dali
def test_shapes_params_labels_match_cpu_engine(needs_dali):
    dali, cpu = _engines(_source(), VIEWS)
    idx = np.array([5, 0, 17, 3, 9, 22, 11])
    for epoch in (0, 1):
        a, b = dali.load(idx, epoch), cpu.load(idx, epoch)
        assert [tuple(v.shape) for v in a.views] == [(2, 7, 32, 32, 3), (1, 7, 16, 16, 3)]
        assert all(v.dtype == torch.uint8 and v.device.type == "cpu" for v in a.views)
        for pa, pb in zip(a.params, b.params, strict=True):
            assert pa.dtype == np.float32
            np.testing.assert_array_equal(pa, pb)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices)
        assert a.indices.tolist() == idx.tolist()
        for va, vb in zip(a.views, b.views, strict=True):
            diff = (va.float() - vb.float()).abs().mean().item()
            assert diff < 1.0, diff  # same crops; the kernels differ slightly (see OPS)
    assert not dali.bad and dali.dali_failures == 0
    dali.close(), cpu.close()


@pytest.mark.dali
def test_deterministic_whatever_threads_and_batching(needs_dali):
    src = _source()
    idx = np.arange(4, 16)
    one = DaliEngine(src, VIEWS, seed=7, threads=1)
    two = DaliEngine(src, VIEWS, seed=7, threads=2)
    a = one.load(idx, 2)
    b = two.load(idx, 2)
    # The same samples split into a full batch and a short last batch.
    c1, c2 = two.load(idx[:9], 2), two.load(idx[9:], 2)
    for g in range(len(VIEWS)):
        assert torch.equal(a.views[g], b.views[g])
        assert torch.equal(a.views[g], torch.cat([c1.views[g], c2.views[g]], dim=1))
        np.testing.assert_array_equal(a.params[g], b.params[g])
    # A larger batch after a short one rebuilds the pipeline with the larger size.
    big = two.load(np.arange(24), 2)
    assert big.views[0].shape[1] == 24
    assert torch.equal(big.views[0][:, 4:16], a.views[0])
    one.close(), two.close()


def _stats(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = v.double().flatten(-3, -2)  # [..., pixels, 3]
    return x.mean(-2).numpy(), x.std(-2).numpy()


# Tolerances, in 8-bit grey levels, from how the two resizers differ (measured on these
# images with seed 1, 32 samples, S=24; each tolerance is about 2-4x the measured value):
# - bilinear (also flip, centre crop): same kernel; OpenCV rounds its weights to 11-bit fixed
#   point, DALI computes in float. Mean absolute difference 0.12, channel means differ by
#   <= 0.17 (a small rounding bias), stds by <= 0.04.
# - bicubic: DALI uses Keys' cubic with a = -0.5 (Catmull-Rom, as PIL), OpenCV a = -0.75
#   (checked against a float64 reference: each matches its own a exactly). a = -0.75 overshoots
#   more, so DALI's crops are a little smoother: mean absolute difference 0.51, channel stds
#   lower by 0.13 on average (<= 0.41), channel means within 0.27.
# - at the crop border DALI's taps may read pixels just outside the box where OpenCV
#   replicates the box's edge; this matters only when upscaling small boxes.
# - antialias: DALI filters every shrink with its own antialiasing kernel, the cpu engine
#   area-averages shrinks above 1.5x (and resizes the others bicubically): mean absolute
#   difference 0.91, channel means within 0.25, stds within 1.3 (the area average is the
#   softer of the two: stds 0.58 lower on average).
OPS = {  # spec, tolerance of the mean absolute difference, of the channel stds
    "bilinear": (ViewSpec(size=24, flip_p=0.0, interpolation="bilinear", **PLAIN), 0.5, 1.0),
    "bicubic": (ViewSpec(size=24, flip_p=0.0, interpolation="bicubic", **PLAIN), 1.0, 1.0),
    "flip": (ViewSpec(size=24, flip_p=1.0, interpolation="bilinear", **PLAIN), 0.5, 1.0),
    "center": (ViewSpec(size=24, crop="center", interpolation="bilinear", **PLAIN), 0.5, 1.0),
    "antialias": (ViewSpec(size=24, flip_p=0.0, antialias=True, **PLAIN), 1.5, 2.5),
}


@pytest.mark.dali
@pytest.mark.parametrize("op", sorted(OPS))
def test_per_op_statistics_match_cpu_engine(needs_dali, op):
    spec, mad_tol, std_tol = OPS[op]
    dali, cpu = _engines(_source(32, seed=1), [spec])
    idx = np.arange(32)
    a, b = dali.load(idx, 0), cpu.load(idx, 0)
    np.testing.assert_array_equal(a.params[0], b.params[0])
    if op == "flip":
        assert (a.params[0][..., P_FLIP] == 1).all()
    va, vb = a.views[0], b.views[0]
    mean_a, std_a = _stats(va)
    mean_b, std_b = _stats(vb)
    np.testing.assert_allclose(mean_a, mean_b, rtol=0, atol=0.6)  # per view, per channel
    np.testing.assert_allclose(std_a, std_b, rtol=0, atol=std_tol)
    assert abs(mean_a - mean_b).mean() < 0.3
    mad = (va.float() - vb.float()).abs().mean().item()
    assert mad < mad_tol, f"{op}: mean absolute difference {mad:.3f}"
    # The crop is where the cpu engine put it: far closer than to the mirrored crop.
    mirrored = (va.flip(-2).float() - vb.float()).abs().mean().item()
    assert mad < 0.25 * mirrored
    dali.close(), cpu.close()


@pytest.mark.dali
def test_unscaled_center_crop_is_the_same_decode(needs_dali):
    # A box as large as the view: both resizers copy, so this compares the two JPEG decoders.
    rng = np.random.default_rng(2)
    src = MemorySource([(_jpeg(_image(rng, 24, 24)), 0) for _ in range(6)])
    spec = ViewSpec(size=24, crop="center", center_fraction=1.0, **PLAIN)
    dali, cpu = _engines(src, [spec])
    a, b = dali.load(np.arange(6), 0), cpu.load(np.arange(6), 0)
    assert (a.views[0].int() - b.views[0].int()).abs().max().item() <= 1
    dali.close(), cpu.close()


def _mixed_source() -> MemorySource:
    src = _source(24, seed=4)
    rng = np.random.default_rng(5)
    good = src.items[1][0]
    src.items[2] = (good[: len(good) // 3], 2)  # truncated
    src.items[3] = (b"\xff\xd8\xff" + bytes(200), 3)  # garbage with a JPEG magic
    src.items[4] = (b"", 4)  # empty file
    src.items[5] = (OSError(5, "Input/output error"), 0)  # unreadable
    src.items[6] = (cv2.imencode(".png", _image(rng, 40, 50))[1].tobytes(), 1)  # PNG: host
    src.items[7] = (_image(rng, 44, 52), 2)  # decoded pixels: host
    src.items[8] = (_exif_jpeg(6), 3)  # EXIF-rotated: host
    return src


@pytest.mark.dali
def test_bad_and_unusual_samples_follow_the_cpu_engine(needs_dali):
    dali, cpu = _engines(_mixed_source(), VIEWS, max_bad_fraction=0.5)
    idx = np.arange(12)
    a, b = dali.load(idx, 1), cpu.load(idx, 1)
    assert sorted(dali.bad) == sorted(cpu.bad) == [2, 3, 4, 5]
    assert {i: s.reason for i, s in dali.bad.items()} == {i: s.reason for i, s in cpu.bad.items()}
    assert "memory#5" in str(dali.bad[5]) and "unreadable" in dali.bad[5].reason
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
    assert all(i not in (2, 3, 4, 5) for i in a.indices.tolist())
    host = [2, 3, 4, 5, 6, 7, 8]  # decoded by the cpu engine's path: identical pixels
    for g in range(len(VIEWS)):
        np.testing.assert_array_equal(a.params[g], b.params[g])
        assert torch.equal(a.views[g][:, host], b.views[g][:, host])
    assert dali.dali_failures == 0
    dali.close(), cpu.close()


@pytest.mark.dali
def test_too_many_bad_samples_raise(needs_dali):
    dali = DaliEngine(_mixed_source(), VIEWS, seed=0, threads=2, max_bad_fraction=0.1)
    with pytest.raises(DataError, match="max_bad_fraction=0.1"):
        dali.load(np.arange(12), 0)
    dali.close()


@pytest.mark.dali
def test_a_failing_dali_batch_is_redone_by_the_cpu_engine(needs_dali, monkeypatch):
    dali, cpu = _engines(_source(), VIEWS)
    idx = np.arange(8)
    dali.load(idx, 0)  # builds the pipeline
    monkeypatch.setattr(dali._pipe, "run", lambda **_: (_ for _ in ()).throw(RuntimeError("x")))
    a, b = dali.load(idx, 0), cpu.load(idx, 0)
    assert dali.dali_failures == 1 and dali._pipe is None
    for g in range(len(VIEWS)):
        assert torch.equal(a.views[g], b.views[g])  # all of it went the cpu path
    again = dali.load(idx, 0)  # a fresh pipeline
    assert dali.dali_failures == 1
    assert (again.views[0].float() - b.views[0].float()).abs().mean() < 1.0
    dali.close(), cpu.close()


# -- GPU (nvJPEG) ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.dali
def test_gpu_decode_matches_cpu_engine(needs_dali):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dali, cpu = _engines(_mixed_source(), VIEWS, device_id=0, max_bad_fraction=0.5)
    idx = np.arange(16)
    a, b = dali.load(idx, 0), cpu.load(idx, 0)
    assert all(v.device.type == "cuda" and v.dtype == torch.uint8 for v in a.views)
    assert sorted(dali.bad) == sorted(cpu.bad)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
    for g in range(len(VIEWS)):
        np.testing.assert_array_equal(a.params[g], b.params[g])
        # nvJPEG's IDCT and upsampling differ a little from libjpeg-turbo's, so looser.
        diff = (a.views[g].cpu().float() - b.views[g].float()).abs().mean().item()
        assert diff < 3.0, diff
    short = dali.load(idx[:5], 0)
    # DALI splits a batch between the hardware JPEG engine and the CUDA decoder depending on
    # its size, and the two may differ in the last bits: allow that, not more.
    d = (short.views[1].int() - a.views[1][:, :5].int()).abs().max().item()
    assert d <= 2, d
    dali.close(), cpu.close()


@pytest.mark.dali
def test_loader_with_the_dali_engine_on_cpu_matches_the_cpu_engine(needs_dali):
    """engine="dali" without a GPU: DALI crops, the colour chain runs on the host threads."""
    from selfsup.pipeline import Loader

    source = _source(16)
    views = [ViewSpec(size=32, count=2)]  # the full colour chain, blur included
    kw = dict(seed=4, threads=2, prefetch=0)
    dali = next(iter(Loader(source, views, 8, engine="dali", **kw)))
    cpu = next(iter(Loader(source, views, 8, engine="cpu", **kw)))
    assert torch.equal(dali.indices, cpu.indices) and torch.equal(dali.labels, cpu.labels)
    assert dali.views[0].shape == cpu.views[0].shape == (2, 8, 3, 32, 32)
    # same rows and ops; only the resampling kernels (and the cpu's reduced decode) differ
    diff = (dali.views[0] - cpu.views[0]).abs().mean()
    assert diff < 0.05, diff


def test_knn_feature_extraction_uses_the_configured_engine(
    needs_dali, tiny_overrides, synthetic_root, monkeypatch
):
    """evaluate_knn extracts features through data.engine, and the dali engine's features
    agree with the cpu engine's."""
    import selfsup.pipeline.loader as loader_module
    import selfsup.trainer.evaluate as evaluate
    from selfsup.config import load_config
    from selfsup.pipeline.sources import ImageFolderSource
    from selfsup.trainer import loop
    from selfsup.trainer.models import build_model

    engines = []
    real = loader_module.Loader

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            engines.append(self.engine_name)

    monkeypatch.setattr(evaluate, "Loader", Spy)
    cfg = load_config(
        "default", [*tiny_overrides, "data.engine=dali", "eval.random_init_baseline=false"]
    )
    net = build_model("resnet18", small_input=True, width=8)
    out = loop.evaluate_knn(cfg, net, torch.device("cpu"))
    assert engines == ["dali", "dali"]
    cfg.data.engine = "cpu"
    on_cpu = loop.evaluate_knn(cfg, net, torch.device("cpu"))
    assert engines[2:] == ["cpu", "cpu"]
    # the two decoders differ by rounding: at most two of the 40 held-out images change vote
    assert abs(out["knn_top1"] - on_cpu["knn_top1"]) <= 2 * 100 / 40, (out, on_cpu)

    src = ImageFolderSource(synthetic_root / "val")
    kw = dict(size=32, batch_size=16, threads=1, reduced_decode=False)
    f_dali, y_dali = evaluate.extract_features(net, src, engine="dali", **kw)
    f_cpu, y_cpu = evaluate.extract_features(net, src, engine="cpu", **kw)
    assert torch.equal(y_dali, y_cpu)
    assert (f_dali * f_cpu).sum(1).min() > 0.99  # cosine similarity of the same image's features
