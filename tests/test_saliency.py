"""Spectral-residual saliency masks: they find objects, and numpy and torch agree."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from selfsup.pipeline.saliency import (
    area_matrix,
    bilinear_matrix,
    saliency_mask,
    saliency_masks_torch,
)


def scene(seed: int, size: int = 224, textured: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A noisy elliptic object on a flat (or finely textured) background, and its truth."""
    rng = np.random.default_rng(seed)
    img = np.broadcast_to(rng.integers(60, 200, 3).astype(np.float64), (size, size, 3)).copy()
    if textured:
        img = cv2.GaussianBlur(img + rng.normal(0, 12, img.shape), (0, 0), 1.0)
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = rng.integers(size // 10, size // 5)
    yy, xx = np.mgrid[:size, :size]
    obj = (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.6, 1.4)) ** 2 < r * r
    img[obj] = rng.integers(0, 256, 3) + rng.normal(0, 30, (obj.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8), obj


SCENES = [scene(seed, textured=bool(seed % 2)) for seed in range(16)]


def test_mask_covers_the_object_far_more_than_the_background() -> None:
    inside, outside, iou = [], [], []
    for img, obj in SCENES:
        m = saliency_mask(img) / 255.0
        assert m.shape == obj.shape
        inside.append(m[obj].mean())
        outside.append(m[~obj].mean())
        fg = m > 0.5
        iou.append((fg & obj).sum() / (fg | obj).sum())
    assert np.mean(inside) > 0.8 and np.mean(outside) < 0.1, (inside, outside)
    assert min(i - o for i, o in zip(inside, outside, strict=True)) > 0.4
    assert np.mean(iou) > 0.4


def test_flat_image_is_all_foreground() -> None:
    flat = np.full((96, 96, 3), 120, np.uint8)
    assert (saliency_mask(flat) == 255).all()
    x = torch.from_numpy(flat[None]).permute(0, 3, 1, 2)
    assert (saliency_masks_torch(x) == 255).all()


def test_mask_size_and_brightness_invariance() -> None:
    img, _ = SCENES[0]
    assert saliency_mask(img, (50, 70)).shape == (50, 70)
    # the DC term is dropped and the map min-max scaled: a brightness offset changes nothing
    brighter = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    same = (saliency_mask(img) == saliency_mask(brighter)).mean()
    assert same > 0.97


@pytest.mark.parametrize("size", [224, 96, 32])
def test_torch_matches_numpy(size: int) -> None:
    """float64 torch reproduces the numpy masks; float32 may flip a pixel on the threshold
    or move a mask value by one step, on at most 1% of pixels."""
    imgs = [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img, _ in SCENES]
    want = np.stack([saliency_mask(i) for i in imgs]).astype(int)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)  # NHWC strides, as the loader
    for dtype, bad in ((torch.float64, 0.0), (torch.float32, 0.01)):
        got = saliency_masks_torch(x, dtype)
        assert got.dtype == torch.uint8 and got.shape == (16, size, size)
        diff = np.abs(got.numpy().astype(int) - want)
        assert (diff > 1).mean() <= bad, (dtype, (diff > 1).mean())


def test_batch_samples_are_independent() -> None:
    x = torch.from_numpy(np.stack([img for img, _ in SCENES[:6]])).permute(0, 3, 1, 2)
    together = saliency_masks_torch(x, torch.float64)
    for i in range(6):
        np.testing.assert_array_equal(
            together[i], saliency_masks_torch(x[i : i + 1], torch.float64)[0]
        )


@pytest.mark.parametrize(("n_out", "n_in"), [(64, 224), (64, 96), (64, 32), (224, 64), (7, 5)])
def test_resampling_matrices_match_opencv(n_out: int, n_in: int) -> None:
    """The torch path's matrices are OpenCV's INTER_AREA (down) and INTER_LINEAR (up)."""
    x = np.random.default_rng(0).random((n_in, n_in)).astype(np.float32)
    assert np.allclose(area_matrix(n_out, n_in).sum(axis=1), 1.0)
    if n_out <= n_in:
        want = cv2.resize(x, (n_out, n_out), interpolation=cv2.INTER_AREA)
        got = area_matrix(n_out, n_in) @ x @ area_matrix(n_out, n_in).T
    else:
        want = cv2.resize(x, (n_out, n_out), interpolation=cv2.INTER_LINEAR)
        got = bilinear_matrix(n_out, n_in) @ x @ bilinear_matrix(n_out, n_in).T
    np.testing.assert_allclose(got, want, atol=1e-6)
