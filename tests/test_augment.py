"""The three augmentation paths against the float64 reference and against plain facts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from selfsup.kernels.layout import (
    GRAY_WEIGHTS,
    NPARAM,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_FILL,
    P_FLIP,
    P_GRAY,
    P_H,
    P_HUE,
    P_JITTER,
    P_MASK,
    P_ORDER,
    P_SATURATION,
    P_SOLARIZE,
    P_W,
)
from selfsup.pipeline.augment import augment_cpu, crop_resize, crop_resize_mask, warmup
from selfsup.pipeline.augment_device import augment_batch
from selfsup.pipeline.augment_reference import augment_reference
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.saliency import saliency_mask
from selfsup.pipeline.views import ViewSpec
from tests.deps import require

TOL = 1e-4  # in [0, 1] pixel units
ALL_ON = {"jitter_p": 1.0, "grayscale_p": 1.0, "blur_p": 1.0, "solarize_p": 1.0}
# Output in [0, 1] units: mean 0, std 1 make normalisation the identity.
UNIT = ViewSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **ALL_ON)

SPECS = {
    "simclr32": ViewSpec(size=32),
    "all_on64": ViewSpec(size=64, **ALL_ON),
    "sigma32": ViewSpec(
        size=32, blur_kernel="sigma", jitter_p=1.0, grayscale_p=0.5, blur_p=0.7, solarize_p=0.3
    ),
    "bilinear64": ViewSpec(size=64, interpolation="bilinear", grayscale_p=0.5, solarize_p=0.5),
    "masked64": ViewSpec(size=64, mask_p=0.5, mask_fill="random", jitter_p=1.0, solarize_p=0.3),
}


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warmup()


def run_cpu(crop: np.ndarray, row: np.ndarray, spec: ViewSpec, mask=None) -> np.ndarray:
    out = np.full((3, spec.size, spec.size), np.nan, dtype=np.float32)
    augment_cpu(crop, row, spec, out, mask)
    return out


def run_batch(crops: list[np.ndarray], rows: list[np.ndarray], spec: ViewSpec, **kw):
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return augment_batch(x, torch.from_numpy(np.stack(rows)), spec, **kw)


def all_paths(crop: np.ndarray, row: np.ndarray, spec: ViewSpec = UNIT) -> dict[str, np.ndarray]:
    return {
        "reference": augment_reference(crop, row, spec),
        "cpu": run_cpu(crop, row, spec),
        "batch": run_batch([crop], [row], spec)[0].numpy(),
    }


def to_unit(y: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Undo the normalisation: back to [0, 1] pixel units."""
    return y * np.asarray(spec.std).reshape(3, 1, 1) + np.asarray(spec.mean).reshape(3, 1, 1)


def make_row(cols: dict[int, float] | None = None) -> np.ndarray:
    """A row with every op off (neutral factors, identity order), then ``cols`` set."""
    row = np.zeros(NPARAM, dtype=np.float32)
    row[P_ORDER : P_ORDER + 4] = (0, 1, 2, 3)
    row[[P_BRIGHTNESS, P_CONTRAST, P_SATURATION]] = 1.0
    for col, value in (cols or {}).items():
        row[col] = value
    return row


def jitter_row(order: tuple[int, ...] = (0, 1, 2, 3), **factors: float) -> np.ndarray:
    """Jitter on, in ``order``; factors by initial: b, c, s (neutral 1) and h (neutral 0)."""
    row = make_row({P_JITTER: 1.0})
    row[P_ORDER : P_ORDER + 4] = order
    for name, value in factors.items():
        row[{"b": P_BRIGHTNESS, "c": P_CONTRAST, "s": P_SATURATION, "h": P_HUE}[name]] = value
    return row


def random_image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_mask(seed: int, h: int, w: int) -> np.ndarray:
    """A whole-image uint8 mask: a soft-edged random blob, as a source would supply."""
    rng = np.random.default_rng(seed + 1000)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.4)
    d = np.hypot((yy - cy) / h, (xx - cx) / w) / r
    return (np.clip(1.5 - d, 0, 1) * 255).astype(np.uint8)


def solid(rgb: tuple[int, int, int], size: int = UNIT.size) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


def assert_all_close(paths: dict[str, np.ndarray], want: np.ndarray, atol: float = TOL) -> None:
    for name, got in paths.items():
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=name)


# ---------------------------------------------------------------------------------------
# The fast paths against the reference, on rows drawn from real specs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fast_paths_match_reference(name: str) -> None:
    spec = SPECS[name]
    crops, rows, masks = [], [], []
    for i in range(24):
        rng = sample_rng(7, 0, i, 0)
        h, w = (int(v) for v in rng.integers(20, 90, size=2))
        row = draw_params(spec, rng, h, w)
        crops.append(crop_resize(random_image(i, h, w), row, spec))
        masks.append(crop_resize_mask(random_mask(i, h, w), row, spec))
        rows.append(row)
    batch = run_batch(crops, rows, spec, masks=torch.from_numpy(np.stack(masks))).numpy()
    for i, (crop, row, mask) in enumerate(zip(crops, rows, masks, strict=True)):
        want = to_unit(augment_reference(crop, row, spec, mask), spec)
        for path, got in (("cpu", run_cpu(crop, row, spec, mask)), ("batch", batch[i])):
            err = np.abs(to_unit(got, spec) - want).max()
            assert err < TOL, f"{name} sample {i} {path}: max error {err:.2e}, row {row}"
    # the rows exercised every op at least once
    stacked = np.stack(rows)
    for col, p in ((P_JITTER, spec.jitter_p), (P_GRAY, spec.grayscale_p)):
        assert (stacked[:, col] != 0).any() == (p > 0)
    assert (stacked[:, P_BLUR_SIGMA] > 0).any() == (spec.blur_p > 0)
    assert (stacked[:, P_MASK] != 0).any() == (spec.mask_p > 0)


# ---------------------------------------------------------------------------------------
# Each op against an independent fact
# ---------------------------------------------------------------------------------------


def test_brightness_half_halves_values() -> None:
    crop = random_image(1, 16, 16)
    want = crop.transpose(2, 0, 1) / 255.0 * 0.5
    assert_all_close(all_paths(crop, jitter_row(b=0.5)), want)


def test_contrast_zero_gives_the_mean_gray() -> None:
    crop = random_image(2, 16, 16)
    gray = (crop / 255.0) @ np.asarray(GRAY_WEIGHTS)
    assert_all_close(all_paths(crop, jitter_row(c=0.0)), np.full((3, 16, 16), gray.mean()))


def test_saturation_zero_gives_gray() -> None:
    crop = random_image(3, 16, 16)
    gray = (crop / 255.0) @ np.asarray(GRAY_WEIGHTS)
    assert_all_close(all_paths(crop, jitter_row(s=0.0)), np.broadcast_to(gray, (3, 16, 16)))


@pytest.mark.parametrize(
    ("shift", "source", "target"),
    [
        (1 / 3, (255, 0, 0), (0, 1, 0)),  # red -> green
        (1 / 3, (0, 255, 0), (0, 0, 1)),  # green -> blue
        (-1 / 3, (255, 0, 0), (0, 0, 1)),  # red -> blue
        (0.5, (255, 0, 0), (0, 1, 1)),  # red -> cyan
    ],
)
def test_hue_shift_rotates_primaries(shift: float, source: tuple, target: tuple) -> None:
    want = np.broadcast_to(np.asarray(target, float).reshape(3, 1, 1), (3, 16, 16))
    assert_all_close(all_paths(solid(source), jitter_row(h=shift)), want)


def test_hue_shift_zero_is_identity() -> None:
    crop = random_image(4, 16, 16)
    assert_all_close(all_paths(crop, jitter_row(h=0.0)), crop.transpose(2, 0, 1) / 255.0, atol=1e-5)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_grayscale_weights(channel: int) -> None:
    rgb = [0, 0, 0]
    rgb[channel] = 255
    want = np.full((3, 16, 16), GRAY_WEIGHTS[channel])
    assert_all_close(all_paths(solid(tuple(rgb)), make_row({P_GRAY: 1.0})), want, atol=1e-6)


def test_solarize_threshold_is_128() -> None:
    crop = np.zeros((16, 16, 3), np.uint8)
    crop[:, :8], crop[:, 8:] = 127, 128
    want = np.empty((3, 16, 16))
    want[:, :, :8], want[:, :, 8:] = 127 / 255, 1 - 128 / 255
    assert_all_close(all_paths(crop, make_row({P_SOLARIZE: 1.0})), want, atol=1e-6)


@pytest.mark.parametrize("kernel", ["relative", "sigma"])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_keeps_a_constant_image(kernel: str, sigma: float) -> None:
    spec = ViewSpec(size=16, blur_kernel=kernel, mean=(0, 0, 0), std=(1, 1, 1), **ALL_ON)
    want = np.broadcast_to(np.array([40, 128, 220]).reshape(3, 1, 1) / 255, (3, 16, 16))
    paths = all_paths(solid((40, 128, 220)), make_row({P_BLUR_SIGMA: sigma}), spec)
    assert_all_close(paths, want, atol=1e-6)


def test_blur_spreads_but_keeps_the_sum_away_from_borders() -> None:
    spec = ViewSpec(size=32, blur_kernel="sigma", mean=(0, 0, 0), std=(1, 1, 1), **ALL_ON)
    crop = np.zeros((32, 32, 3), np.uint8)
    crop[14:18, 15:17] = (255, 100, 30)
    for name, got in all_paths(crop, make_row({P_BLUR_SIGMA: 1.5}), spec).items():
        np.testing.assert_allclose(got.sum(axis=(1, 2)), crop.sum(axis=(0, 1)) / 255, rtol=1e-5)
        assert (got[:, 12, 16] > 0).all() and got.max() < 0.9, name  # it did spread


def test_jitter_order_matters() -> None:
    crop = random_image(5, 16, 16)
    b_then_c = jitter_row((0, 1, 2, 3), b=1.8, c=0.3)
    c_then_b = jitter_row((1, 0, 2, 3), b=1.8, c=0.3)
    one, two = all_paths(crop, b_then_c), all_paths(crop, c_then_b)
    assert np.abs(one["reference"] - two["reference"]).max() > 0.05
    # and each against the two ops written out in that order
    x = crop.transpose(2, 0, 1) / 255.0

    def contrast(v: np.ndarray) -> np.ndarray:
        m = (v.transpose(1, 2, 0) @ np.asarray(GRAY_WEIGHTS)).mean()
        return np.clip(m + 0.3 * (v - m), 0, 1)

    assert_all_close(one, contrast(np.clip(x * 1.8, 0, 1)))
    assert_all_close(two, np.clip(contrast(x) * 1.8, 0, 1))


def test_all_ops_off_gives_the_normalised_input() -> None:
    spec = ViewSpec(size=16, **ALL_ON)
    crop = random_image(6, 16, 16)
    mean, std = np.asarray(spec.mean).reshape(3, 1, 1), np.asarray(spec.std).reshape(3, 1, 1)
    want = (crop.transpose(2, 0, 1) / 255.0 - mean) / std
    assert_all_close(all_paths(crop, make_row(), spec), want, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crop_resize_full_box_same_size_is_identity(interpolation: str) -> None:
    spec = ViewSpec(size=24, interpolation=interpolation)
    img = random_image(7, 24, 24)
    np.testing.assert_array_equal(crop_resize(img, make_row({P_H: 24, P_W: 24}), spec), img)


def test_crop_resize_cuts_the_box_and_flips() -> None:
    spec = ViewSpec(size=10)
    img = random_image(8, 30, 40)
    row = make_row({P_H: 10, P_W: 10})
    row[:2] = (5, 17)  # y0, x0
    plain = crop_resize(img, row, spec)
    np.testing.assert_array_equal(plain, img[5:15, 17:27])
    row[P_FLIP] = 1
    out = np.empty((10, 10, 3), np.uint8)
    assert crop_resize(img, row, spec, out) is out
    np.testing.assert_array_equal(out, plain[:, ::-1])


# ---------------------------------------------------------------------------------------
# The batched path: dtype, layout, independence of samples
# ---------------------------------------------------------------------------------------


def drawn_batch(spec: ViewSpec, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rows = [draw_params(spec, sample_rng(3, 1, i, 0), 48, 48) for i in range(n)]
    crops = [crop_resize(random_image(100 + i, 48, 48), r, spec) for i, r in enumerate(rows)]
    return crops, rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_dtype_and_layout(dtype: torch.dtype, channels_last: bool) -> None:
    spec = SPECS["all_on64"]
    crops, rows = drawn_batch(spec, 4)
    y = run_batch(crops, rows, spec, dtype=dtype, channels_last=channels_last)
    assert y.dtype == dtype and y.shape == (4, 3, 64, 64)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert y.is_contiguous() != channels_last
    full = run_batch(crops, rows, spec).numpy()
    np.testing.assert_allclose(y.float().numpy(), full, atol=0.02 if dtype != torch.float32 else 0)


def test_batch_accepts_nhwc_strided_input() -> None:
    spec = SPECS["sigma32"]
    crops, rows = drawn_batch(spec, 6)
    nhwc = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # as the loader passes it
    got = augment_batch(nhwc, torch.from_numpy(np.stack(rows)), spec)
    np.testing.assert_array_equal(got.numpy(), run_batch(crops, rows, spec).numpy())


@pytest.mark.parametrize("name", ["all_on64", "sigma32"])
def test_batch_samples_are_independent(name: str) -> None:
    spec = SPECS[name]
    crops, rows = drawn_batch(spec, 8)
    together = run_batch(crops, rows, spec).numpy()
    for i in range(8):
        alone = run_batch([crops[i]], [rows[i]], spec)[0].numpy()
        np.testing.assert_allclose(together[i], alone, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------
# The CPU path from several threads
# ---------------------------------------------------------------------------------------


def test_cpu_path_is_thread_safe() -> None:
    spec = SPECS["all_on64"]
    crops, rows = drawn_batch(spec, 16)
    sequential = np.stack([run_cpu(c, r, spec) for c, r in zip(crops, rows, strict=True)])
    parallel = np.full_like(sequential, np.nan)

    def work(part: range) -> None:
        for _ in range(3):
            for i in part:
                augment_cpu(crops[i], rows[i], spec, parallel[i])

    threads = [threading.Thread(target=work, args=(range(k, 16, 2),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(parallel, sequential)


def test_cpu_path_rejects_wrong_buffers() -> None:
    spec = ViewSpec(size=16)
    crop = random_image(9, 16, 16)
    with pytest.raises(ValueError, match="C-contiguous"):
        augment_cpu(crop, make_row(), spec, np.empty((3, 16, 32), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match="crop"):
        augment_cpu(random_image(9, 16, 17), make_row(), spec, np.empty((3, 16, 16), np.float32))


@pytest.mark.gpu
def test_batch_path_does_not_sync_the_host() -> None:
    spec = SPECS["all_on64"]
    crops, rows = drawn_batch(spec, 8)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().cuda()
    params = torch.from_numpy(np.stack(rows)).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = augment_batch(x, params, spec, dtype=torch.bfloat16, channels_last=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = run_batch(crops, rows, spec).numpy()
    np.testing.assert_allclose(y.float().cpu().numpy(), want, atol=0.02)


# ---------------------------------------------------------------------------------------
# Saliency masking
# ---------------------------------------------------------------------------------------


def mask_row(fill: tuple[float, float, float], **cols: float) -> np.ndarray:
    row = make_row({P_MASK: 1.0, **cols})
    row[P_FILL : P_FILL + 3] = fill
    return row


def masked_paths(crop, row, spec, mask) -> dict[str, np.ndarray]:
    m = None if mask is None else torch.from_numpy(mask[None])
    return {
        "reference": augment_reference(crop, row, spec, mask),
        "cpu": run_cpu(crop, row, spec, mask),
        "batch": run_batch([crop], [row], spec, masks=m)[0].numpy(),
    }


MASKED_UNIT = ViewSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mask_p=1.0, **ALL_ON)


def test_mask_replaces_the_background_with_the_fill() -> None:
    crop = random_image(20, 16, 16)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    mask[0, 0] = 51  # a soft pixel: 20% image, 80% fill
    fill = (0.25, 0.5, 0.75)
    want = np.broadcast_to(np.asarray(fill).reshape(3, 1, 1), (3, 16, 16)).copy()
    want[:, 4:12, 4:12] = crop[4:12, 4:12].transpose(2, 0, 1) / 255.0
    want[:, 0, 0] = 0.2 * crop[0, 0] / 255.0 + 0.8 * np.asarray(fill)
    assert_all_close(masked_paths(crop, mask_row(fill), MASKED_UNIT, mask), want)


def test_mask_flag_off_or_full_mask_changes_nothing() -> None:
    crop = random_image(21, 16, 16)
    plain = crop.transpose(2, 0, 1) / 255.0
    zeros = np.zeros((16, 16), np.uint8)
    off = mask_row((1.0, 0.0, 0.0))
    off[P_MASK] = 0.0
    assert_all_close(masked_paths(crop, off, MASKED_UNIT, zeros), plain, atol=1e-6)
    full = np.full((16, 16), 255, np.uint8)
    assert_all_close(masked_paths(crop, mask_row((1, 0, 0)), MASKED_UNIT, full), plain, atol=1e-6)


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (0, 1, 2, 3), (3, 2, 1, 0)])
def test_masking_comes_before_the_colour_chain(order: tuple[int, ...]) -> None:
    """The filled background is jittered too, and contrast sees the filled image's mean,
    whether contrast runs first (the one-pass mean) or later (the two-pass mean)."""
    crop = random_image(22, 16, 16)
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255
    fill = (0.9, 0.1, 0.4)
    row = mask_row(fill)
    row[[P_JITTER, P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE]] = (1, 1.3, 0.4, 1.5, 0.1)
    row[P_ORDER : P_ORDER + 4] = order
    filled = np.where(mask[..., None] > 0, crop, np.rint(np.asarray(fill) * 255)).astype(np.uint8)
    paths = masked_paths(crop, row, MASKED_UNIT, mask)
    # as if the source had already had its background replaced (fill on the 1/255 grid
    # differs by < 0.5/255 from the exact fill, hence the looser bar)
    unmasked = row.copy()
    unmasked[P_MASK] = 0
    want = augment_reference(filled, unmasked, MASKED_UNIT)
    assert_all_close(paths, want, atol=4e-3)
    ref = paths["reference"]
    assert_all_close(paths, ref, atol=TOL)


def test_estimated_masks_without_a_source_mask() -> None:
    """mask=None: CPU and reference estimate the same numpy mask; the batch path its torch
    twin (float32 FFT), whose rounding may move a few mask values by one step (< 2e-3 in
    pixel units where it does; within TOL almost everywhere)."""
    spec = ViewSpec(size=64, mean=(0, 0, 0), std=(1, 1, 1), mask_p=1.0, jitter_p=1.0)
    crops, rows = [], []
    for i in range(8):
        img = np.zeros((64, 64, 3), np.uint8) + np.uint8(40 + 10 * i)
        img[20 + i : 40 + i, 16:44] = random_image(i, 20, 28)  # a textured object
        row = draw_params(spec, sample_rng(5, 0, i, 0), 64, 64)
        row[:4] = (0, 0, 64, 64)
        crops.append(crop_resize(img, row, spec))
        rows.append(row)
    batch = run_batch(crops, rows, spec).numpy()
    for i, (crop, row) in enumerate(zip(crops, rows, strict=True)):
        ref = augment_reference(crop, row, spec)
        np.testing.assert_allclose(run_cpu(crop, row, spec), ref, atol=TOL, rtol=0)
        err = np.abs(batch[i] - ref)
        assert err.max() < 2e-2 and (err > TOL).mean() < 0.01, (i, err.max())
        # and the estimated mask did replace some background but kept the object
        mask = saliency_mask(crop)
        assert 0 < (mask == 0).mean() < 0.9 and mask[30 + i, 30] == 255


def test_source_mask_is_cut_with_the_view_box_and_flip() -> None:
    spec = ViewSpec(size=10, interpolation="bicubic")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 17:22] = 255
    row = make_row({P_H: 10, P_W: 10})
    row[:2] = (5, 17)
    np.testing.assert_array_equal(crop_resize_mask(mask, row, spec), mask[5:15, 17:27])
    row[P_FLIP] = 1
    np.testing.assert_array_equal(crop_resize_mask(mask, row, spec), mask[5:15, 17:27][:, ::-1])


def test_batch_masks_accept_both_shapes_and_skip_when_mask_p_is_zero() -> None:
    spec = SPECS["masked64"]
    crops, rows = drawn_batch(spec, 6)
    masks = np.stack([random_mask(i, 64, 64) for i in range(6)])
    a = run_batch(crops, rows, spec, masks=torch.from_numpy(masks)).numpy()
    b = run_batch(crops, rows, spec, masks=torch.from_numpy(masks[:, None])).numpy()
    np.testing.assert_array_equal(a, b)
    off = ViewSpec(size=64, mask_fill="random", jitter_p=1.0, solarize_p=0.3)
    plain = run_batch(crops, [r * (np.arange(NPARAM) != P_MASK) for r in rows], off).numpy()
    np.testing.assert_array_equal(run_batch(crops, rows, off, masks=torch.zeros(6, 64, 64)), plain)


def test_masked_cpu_path_rejects_a_wrong_mask() -> None:
    with pytest.raises(ValueError, match="mask"):
        run_cpu(
            random_image(9, 16, 16), mask_row((0, 0, 0)), MASKED_UNIT, np.zeros((8, 8), np.uint8)
        )


@pytest.mark.gpu
def test_masked_batch_path_does_not_sync_the_host() -> None:
    spec = SPECS["masked64"]
    crops, rows = drawn_batch(spec, 8)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().cuda()
    params = torch.from_numpy(np.stack(rows)).cuda()
    augment_batch(x, params, spec)  # the first call copies the saliency matrices over
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = augment_batch(x, params, spec)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = run_batch(crops, rows, spec).numpy()
    err = np.abs(y.cpu().numpy() - want)
    assert (err > 1e-3).mean() < 0.01  # cuFFT vs pocketfft may flip a mask pixel or two


@pytest.mark.parametrize("solarize", [0.0, 1.0])
def test_table_path_equals_the_kernel_chain_bit_for_bit(solarize):
    """Rows with no colour op take a lookup-table shortcut; it must change no bit."""
    from selfsup.kernels.layout import NPARAM, P_SOLARIZE
    from selfsup.pipeline import augment as aug

    spec = ViewSpec(size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    crop = np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    row = np.zeros(NPARAM, np.float32)
    row[P_SOLARIZE] = solarize
    fast = np.empty((3, 24, 24), np.float32)
    aug.augment_cpu(crop, row, spec, fast)
    slow = np.empty((3, 24, 24), np.float32)
    aug._colour_kernel(crop, row, slow, aug._NO_MASK)
    mean = np.asarray(spec.mean, np.float32)
    inv_std = (1.0 / np.asarray(spec.std)).astype(np.float32)
    aug._finish_kernel(slow, bool(solarize), mean, inv_std, slow)
    assert np.array_equal(fast, slow)


# ---------------------------------------------------------------------------------------
# The evaluation crop runs no colour stage at all
# ---------------------------------------------------------------------------------------


def _forbid(monkeypatch, module, *names):
    def boom(*a, **k):
        raise AssertionError("a colour stage ran for the evaluation crop")

    for name in names:
        monkeypatch.setattr(module, name, boom)


def _eval_batch():
    from selfsup.pipeline.recipes import recipe

    (spec,) = recipe("center_crop_eval", 16)
    rng = np.random.default_rng(3)
    rows = np.stack([draw_params(spec, sample_rng(0, 0, i, 0), 30, 20) for i in range(5)])
    x = torch.from_numpy(rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return spec, x, torch.from_numpy(rows), (x.float() / 255 - mean) / std


def test_eval_recipe_has_no_random_op():
    spec, _, rows, _ = _eval_batch()
    assert not spec.colour_stages and spec.flip_p == 0 and spec.solarize_p == 0
    assert not rows[:, 4:10].any() and not rows[:, 14:].any()


def test_eval_crop_device_chain_only_normalises(monkeypatch):
    from selfsup.kernels import color
    from selfsup.pipeline import augment_device

    spec, x, rows, want = _eval_batch()
    _forbid(monkeypatch, color, "color_head_torch", "color_jitter_torch", "hue_t", "gray_t")
    _forbid(monkeypatch, augment_device, "blur_torch", "saliency_masks_torch")
    out = augment_batch(x, rows, spec, fused=False)
    assert torch.allclose(out, want, atol=1e-5)


def test_eval_crop_fused_chain_only_normalises(monkeypatch):
    """The Triton path (on the GPU, or interpreted on CPU): only the tail kernel, no gray-sum
    pre-pass."""
    require("triton")
    from selfsup.kernels import color_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec, x, rows, want = _eval_batch()
    _forbid(monkeypatch, color_triton, "color_head_fused", "color_jitter_fused")
    monkeypatch.setattr(color_triton, "_gray_sum_kernel", None)  # launching it would fail
    out = augment_batch(x.to(device), rows.to(device), spec, fused=True)
    assert torch.allclose(out.cpu(), want, atol=1e-5)


def test_eval_crop_cpu_path_takes_the_table(monkeypatch):
    from selfsup.pipeline import augment

    spec, x, rows, want = _eval_batch()
    _forbid(monkeypatch, augment, "_colour_kernel", "_finish_kernel", "saliency_mask")
    out = np.empty((3, 16, 16), np.float32)
    crop = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
    augment_cpu(crop, rows[0].numpy(), spec, out)
    assert np.allclose(out, want[0].numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------
# Antialiased downscaling (ViewSpec.antialias)
# ---------------------------------------------------------------------------------------


def _stripes(h: int, w: int, period: int = 2) -> np.ndarray:
    """Vertical black/white stripes: every frequency a plain shrink folds back (aliases)."""
    col = ((np.arange(w) // (period // 2)) % 2 * 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(col[None, :, None], (h, w, 3)))


def _full_row(h: int, w: int) -> np.ndarray:
    row = np.zeros(NPARAM, np.float32)
    row[P_H], row[P_W] = h, w
    return row


def test_antialias_averages_areas_when_shrinking_more_than_one_and_a_half():
    import cv2

    img = _stripes(128, 128, period=6)
    plain = crop_resize(img, _full_row(128, 128), ViewSpec(size=32))
    smooth = crop_resize(img, _full_row(128, 128), ViewSpec(size=32, antialias=True))
    area = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(smooth, area)
    # the 4x shrink of a 6-px period: bicubic samples alias into high-contrast bars, the
    # area average keeps the true mean with a much smaller swing
    assert plain.astype(float).std() > 2 * smooth.astype(float).std()
    assert abs(smooth.mean() - img.mean()) < 3


def test_antialias_leaves_mild_shrinks_and_enlargements_alone():
    img = _stripes(40, 40, period=4)
    for side in (40, 30, 24):  # 1x, 1.33x and 1.67x: only the last one is area-averaged
        box = _full_row(side, side)
        a = crop_resize(img, box, ViewSpec(size=24))
        b = crop_resize(img, box, ViewSpec(size=24, antialias=True))
        assert np.array_equal(a, b) == (side <= 1.5 * 24), side


def test_antialias_in_the_reduced_decode_path():
    """A crop that still shrinks by more than 1.5x after a 1/2 DCT decode is area-averaged
    from the rounded box of the reduced image."""
    import cv2

    from selfsup.pipeline.engines.cpu import _crop_resize_reduced

    full = _stripes(256, 256, period=10)
    reduced = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)  # stands in for 1/2
    row = _full_row(256, 256)
    spec = ViewSpec(size=32, antialias=True)
    out = _crop_resize_reduced(reduced, row, 2, spec)
    assert np.array_equal(out, cv2.resize(reduced, (32, 32), interpolation=cv2.INTER_AREA))
    plain = _crop_resize_reduced(reduced, row, 2, ViewSpec(size=32))
    assert plain.astype(float).std() > out.astype(float).std()


def test_host_taps_are_rows_of_the_batched_taps():
    """The CPU engine's per-view taps (numpy) and the device path's batched taps (torch) are
    the same Gaussians: equal to float64 rounding, zero beyond each radius, summing to one."""
    from selfsup.kernels.blur import gaussian_taps, gaussian_taps_host

    sigma = torch.tensor([0.0, 0.1, 0.7, 1.3, 2.0, 5.5], dtype=torch.float64)
    radius = torch.tensor([3, 1, 3, 4, 6, 17])
    batched = gaussian_taps(sigma, radius)
    width = batched.shape[1] // 2
    for s, r, row in zip(sigma.tolist(), radius.tolist(), batched.numpy(), strict=True):
        host = gaussian_taps_host(s, r, width)
        np.testing.assert_allclose(host, row, rtol=1e-14, atol=1e-300)
        assert abs(host.sum() - 1.0) < 1e-14 and not host[: width - r].any()
    assert gaussian_taps_host(0.0, 2).tolist() == [0, 0, 1, 0, 0]  # sigma 0: the identity
    torch.testing.assert_close(gaussian_taps(1.3, 4), torch.from_numpy(gaussian_taps_host(1.3, 4)))
