"""Every recipe against a table of its published numbers, and per-sample probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.errors import ConfigError
from selfsup.kernels.layout import (
    NPARAM,
    P_BLUR_SIGMA,
    P_FILL,
    P_FLIP,
    P_GRAY,
    P_JITTER,
    P_MASK,
    P_SOLARIZE,
)
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.recipes import RECIPES, SWAV_STD, recipe
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.views import IMAGENET_MEAN, IMAGENET_STD, ViewSpec, expand, group_by_size

BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)

# Per recipe, one tuple per ViewSpec, in order: (size, count, scale, interpolation, jitter
# (b, c, s, h), jitter_p, grayscale_p, blur_p, blur_kernel, solarize_p, mask_p, std).
# Sources: reference/methods.md sections A.0, A.3, A.4, A.7, A.8, A.12.
S08 = (0.08, 1.0)
EXPECTED = {
    "simclr": [(224, 2, S08, "bicubic", SIMCLR_JITTER, 0.8, 0.2, 0.5, "relative", 0.0, 0.0)],
    "byol": [
        (224, 1, S08, "bicubic", BYOL_JITTER, 0.8, 0.2, 1.0, "relative", 0.0, 0.0),
        (224, 1, S08, "bicubic", BYOL_JITTER, 0.8, 0.2, 0.1, "relative", 0.2, 0.0),
    ],
    "swav": [
        (224, 2, (0.14, 1.0), "bilinear", SIMCLR_JITTER, 0.8, 0.2, 0.5, "sigma", 0.0, 0.0),
        (96, 6, (0.05, 0.14), "bilinear", SIMCLR_JITTER, 0.8, 0.2, 0.5, "sigma", 0.0, 0.0),
    ],
    "dino": [
        (224, 1, (0.4, 1.0), "bicubic", BYOL_JITTER, 0.8, 0.2, 1.0, "sigma", 0.0, 0.0),
        (224, 1, (0.4, 1.0), "bicubic", BYOL_JITTER, 0.8, 0.2, 0.1, "sigma", 0.2, 0.0),
        (96, 8, (0.05, 0.4), "bicubic", BYOL_JITTER, 0.8, 0.2, 0.5, "sigma", 0.0, 0.0),
    ],
    "relicv2": [
        (224, 2, S08, "bicubic", BYOL_JITTER, 0.8, 0.2, 1.0, "relative", 0.0, 0.1),
        (224, 2, S08, "bicubic", BYOL_JITTER, 0.8, 0.2, 0.1, "relative", 0.2, 0.1),
        (96, 1, (0.05, 0.14), "bicubic", BYOL_JITTER, 0.8, 0.2, 1.0, "relative", 0.0, 0.0),
        (96, 1, (0.05, 0.14), "bicubic", BYOL_JITTER, 0.8, 0.2, 0.1, "relative", 0.2, 0.0),
    ],
    "supervised": [(224, 1, S08, "bilinear", SIMCLR_JITTER, 0.0, 0.0, 0.0, "relative", 0.0, 0.0)],
}
STD = {"swav": SWAV_STD}


def as_row(v: ViewSpec) -> tuple:
    jitter = (v.brightness, v.contrast, v.saturation, v.hue)
    return (
        v.size,
        v.count,
        v.scale,
        v.interpolation,
        jitter,
        v.jitter_p,
        v.grayscale_p,
        v.blur_p,
        v.blur_kernel,
        v.solarize_p,
        v.mask_p,
    )


def test_every_recipe_has_a_table_entry() -> None:
    assert set(RECIPES) == set(EXPECTED) | {"center_crop_eval"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_matches_the_table(name: str) -> None:
    views = recipe(name)
    assert [as_row(v) for v in views] == EXPECTED[name]
    for v in views:
        assert v.crop == "random_resized" and v.flip_p == 0.5
        assert v.ratio == pytest.approx((3 / 4, 4 / 3))
        assert v.blur_sigma == (0.1, 2.0)
        assert v.mean == IMAGENET_MEAN and v.std == STD.get(name, IMAGENET_STD)


def test_center_crop_eval_is_resize_256_center_224() -> None:
    (v,) = recipe("center_crop_eval")
    assert (v.size, v.crop, v.interpolation) == (224, "center", "bilinear")
    assert v.center_fraction == pytest.approx(224 / 256)
    row = draw_params(v, sample_rng(0, 0, 0, 0), 300, 400)
    assert tuple(row[:4]) == (19, 69, 262, 262)  # central 0.875 * 300 square
    assert not row[4:10].any() and not row[14:].any()  # no random op, no mask


def test_byol_blur_kernel_is_23_taps_at_224() -> None:
    from selfsup.pipeline.views import blur_radius

    for v in recipe("byol"):
        assert 2 * blur_radius(v, 1.0) + 1 == 23


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("simclr", {224: 2}), ("swav", {224: 2, 96: 6}), ("dino", {224: 2, 96: 8})]
    + [("relicv2", {224: 4, 96: 2}), ("byol", {224: 2})],
)
def test_views_group_by_size(name: str, sizes: dict[int, int]) -> None:
    groups = group_by_size(recipe(name))
    assert [(g.size, g.count) for g in groups] == list(sizes.items())
    assert len(expand(recipe(name))) == sum(sizes.values())


def test_dino_global_crops_are_one_group_in_order() -> None:
    (glob, local) = group_by_size(recipe("dino"))
    assert [s.blur_p for s in glob.specs] == [1.0, 0.1]
    assert [s.solarize_p for s in glob.specs] == [0.0, 0.2]
    assert [s.blur_p for s in local.specs] == [0.5]


def test_relicv2_masks_large_crops_only() -> None:
    for v in recipe("relicv2"):
        assert v.mask_p == (0.1 if v.size == 224 else 0.0)
        assert v.mask_fill == "mean"


def test_recipe_size_rescales_small_views_in_proportion() -> None:
    assert [v.size for v in recipe("swav", size=112)] == [112, 48]
    assert [v.size for v in recipe("dino", size=64)] == [64, 64, 27]


def test_recipe_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe("nope")
    with pytest.raises(ConfigError, match="mask_fill"):
        ViewSpec(size=8, mask_fill="plaid")
    with pytest.raises(ConfigError, match="mask_p"):
        recipe("relicv2", None, {"mask_p": 1.5})


# ---------------------------------------------------------------------------------------
# Probabilities are per sample
# ---------------------------------------------------------------------------------------

N = 2000
FLAGS = {
    "flip_p": lambda r: r[P_FLIP] != 0,
    "jitter_p": lambda r: r[P_JITTER] != 0,
    "grayscale_p": lambda r: r[P_GRAY] != 0,
    "blur_p": lambda r: r[P_BLUR_SIGMA] > 0,
    "solarize_p": lambda r: r[P_SOLARIZE] != 0,
    "mask_p": lambda r: r[P_MASK] != 0,
}


def draw_rows(spec: ViewSpec, n: int = N, view: int = 0) -> np.ndarray:
    return np.stack([draw_params(spec, sample_rng(11, 2, i, view), 300, 400) for i in range(n)])


@pytest.mark.parametrize("name", ["byol", "dino", "relicv2", "swav"])
def test_flag_frequencies_match_their_probabilities(name: str) -> None:
    for view, spec in enumerate(recipe(name)):
        rows = draw_rows(spec, view=view)
        for field, flag in FLAGS.items():
            p = getattr(spec, field)
            freq = np.mean([flag(r) for r in rows])
            sigma = np.sqrt(p * (1 - p) / N)
            assert abs(freq - p) <= 4 * sigma + 1e-12, f"{name} view {view} {field}: {freq} vs {p}"


def test_flags_vary_within_one_batch() -> None:
    """Each sample draws its own coins: one batch of 64 mixes on and off for every op."""
    spec = ViewSpec(size=32, blur_p=0.5, solarize_p=0.5, mask_p=0.5, grayscale_p=0.5)
    rows = draw_rows(spec, n=64)
    for field, flag in FLAGS.items():
        flags = np.array([flag(r) for r in rows])
        assert 0 < flags.sum() < 64, field


def test_fill_colour_per_mode() -> None:
    base = ViewSpec(size=16, mask_p=1.0)
    mean_rows = draw_rows(base, n=50)
    np.testing.assert_allclose(mean_rows[:, P_FILL : P_FILL + 3], np.tile(IMAGENET_MEAN, (50, 1)))
    black = draw_rows(ViewSpec(size=16, mask_p=1.0, mask_fill="black"), n=50)
    assert not black[:, P_FILL : P_FILL + 3].any()
    rand = draw_rows(ViewSpec(size=16, mask_p=1.0, mask_fill="random"), n=500)[:, P_FILL:]
    assert rand.shape == (500, 3) and 0 <= rand.min() and rand.max() < 1
    assert abs(rand.mean() - 0.5) < 0.05 and len(np.unique(rand[:, 0])) == 500


def test_fill_draws_leave_the_older_columns_unchanged() -> None:
    """The P_FILL draws come last: mask_fill and mask_p change no other column."""
    a = draw_rows(ViewSpec(size=16), n=100)
    b = draw_rows(ViewSpec(size=16, mask_p=0.3, mask_fill="random"), n=100)
    assert a.shape[1] == NPARAM
    np.testing.assert_array_equal(a[:, :P_MASK], b[:, :P_MASK])


def test_jitter_orders_and_crop_positions_are_uniform() -> None:
    """All 24 jitter orders come up about equally often; crop corners cover their range."""
    from itertools import permutations

    from selfsup.kernels.layout import P_ORDER, P_X0, P_Y0

    rows = draw_rows(ViewSpec(size=16, scale=(0.2, 0.2), ratio=(1.0, 1.0)), n=4800)
    orders = [tuple(int(v) for v in r[P_ORDER : P_ORDER + 4]) for r in rows]
    counts = np.array([orders.count(p) for p in permutations(range(4))])
    assert counts.sum() == 4800 and abs(counts - 200).max() < 4 * np.sqrt(200)
    # a square crop of 20% of a 300x400 image: side 155, so y0 in [0, 145], x0 in [0, 245]
    y0, x0 = rows[:, P_Y0], rows[:, P_X0]
    assert y0.min() == 0 and y0.max() == 145 and x0.min() == 0 and x0.max() == 245
    assert abs(y0.mean() - 72.5) < 3 and abs(x0.mean() - 122.5) < 4
