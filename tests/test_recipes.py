"""Every recipe against the published numbers (with their sources), what those numbers do to
the views, and per-sample probabilities."""

from __future__ import annotations

from dataclasses import replace

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
from selfsup.pipeline.recipes import RECIPES, recipe, small_view_count
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.views import IMAGENET_MEAN, IMAGENET_STD, ViewSpec, expand, group_by_size

# The published recipes, each number with its source. Sources are the upstream files named,
# gathered in the project's reference/methods.md (section in brackets). ReLICv2's crop counts,
# small-crop scale and mask fill are not in any primary source (the pretraining code is not
# public): they are marked unverified and the recipe documents its choice.
SIMCLR_STYLE = dict(  # [A.0 "SimCLR-style"] simclr/tf2/data_util.py
    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bicubic", flip_p=0.5,
    brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_p=0.8, grayscale_p=0.2,
    blur_p=0.5, blur_sigma=(0.1, 2.0), blur_kernel="relative", solarize_p=0.0,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
)  # fmt: skip
BYOL_STYLE = dict(  # [A.0 "BYOL-style"] deepmind-research/byol/utils/augmentations.py
    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bicubic", flip_p=0.5,
    brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
    blur_sigma=(0.1, 2.0), blur_kernel="relative", mean=IMAGENET_MEAN, std=IMAGENET_STD,
)  # fmt: skip
BYOL_VIEW1 = dict(BYOL_STYLE, blur_p=1.0, solarize_p=0.0)
BYOL_VIEW2 = dict(BYOL_STYLE, blur_p=0.1, solarize_p=0.2)
# [A.3] swav/scripts/swav_800ep_pretrain.sh: --nmb_crops 2 6 --size_crops 224 96
# --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14; src/multicropdataset.py: torchvision
# RRC (bilinear), SimCLR jitter, PIL blur p 0.5 (sigma-sized), std typo 0.228
SWAV = dict(SIMCLR_STYLE, interpolation="bilinear", blur_kernel="sigma", std=(0.228, 0.224, 0.225))
# [A.8] dino/main_dino.py DataAugmentationDINO: global (0.4, 1) / local (0.05, 0.4), bicubic,
# BYOL jitter, PIL blur: global 1.0, global 0.1 + solarize 0.2, local 0.5
DINO = dict(BYOL_STYLE, blur_kernel="sigma")
# [A.5] moco/main_moco.py aug+: RRC (0.2, 1) bilinear, jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
# grayscale 0.2, PIL blur p 0.5, flip; both views alike
MOCO_V2 = dict(SIMCLR_STYLE, scale=(0.2, 1.0), interpolation="bilinear", brightness=0.4,
               contrast=0.4, saturation=0.4, hue=0.1, blur_kernel="sigma")  # fmt: skip
# [A.6] moco-v3/main_moco.py: BYOL's asymmetric pair, --crop-min .2, bilinear, PIL blur
MOCO_V3 = dict(scale=(0.2, 1.0), interpolation="bilinear", blur_kernel="sigma")
NOTHING_BUT_CROP = dict(  # [A.12] the evaluation transforms: crop, bilinear, no colour
    count=1, interpolation="bilinear", jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
    solarize_p=0.0, mask_p=0.0,
)  # fmt: skip
PUBLISHED = {
    "simclr": [dict(SIMCLR_STYLE, size=224, count=2)],
    "byol": [dict(BYOL_VIEW1, size=224, count=1), dict(BYOL_VIEW2, size=224, count=1)],
    "moco_v2": [dict(MOCO_V2, size=224, count=2)],
    "moco_v3": [
        dict(BYOL_VIEW1, size=224, count=1, **MOCO_V3),
        dict(BYOL_VIEW2, size=224, count=1, **MOCO_V3),
    ],
    "swav": [
        dict(SWAV, size=224, count=2, scale=(0.14, 1.0)),
        dict(SWAV, size=96, count=6, scale=(0.05, 0.14)),
    ],
    "dino": [
        dict(DINO, size=224, count=1, scale=(0.4, 1.0), blur_p=1.0, solarize_p=0.0),
        dict(DINO, size=224, count=1, scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2),
        dict(DINO, size=96, count=8, scale=(0.05, 0.4), blur_p=0.5, solarize_p=0.0),
    ],
    # [A.8] the README's ResNet-50 run: --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14
    "dino_resnet": [
        dict(DINO, size=224, count=1, scale=(0.14, 1.0), blur_p=1.0, solarize_p=0.0),
        dict(DINO, size=224, count=1, scale=(0.14, 1.0), blur_p=0.1, solarize_p=0.2),
        dict(DINO, size=96, count=8, scale=(0.05, 0.14), blur_p=0.5, solarize_p=0.0),
    ],
    # [A.7] BYOL augmentation on every crop, saliency masking p 0.1 on large crops only, large
    # 224 / small 96; unverified: 2+2 large, 1+1 small, small scale (0.05, 0.14)
    "relicv2": [
        dict(BYOL_VIEW1, size=224, count=2, mask_p=0.1),
        dict(BYOL_VIEW2, size=224, count=2, mask_p=0.1),
        dict(BYOL_VIEW1, size=96, count=1, scale=(0.05, 0.14), mask_p=0.0),
        dict(BYOL_VIEW2, size=96, count=1, scale=(0.05, 0.14), mask_p=0.0),
    ],
    # [A.13] grayscale 0.66 (Goyal'19); the crop is the recipe's own choice, not a source's
    "jigsaw": [dict(NOTHING_BUT_CROP, size=224, scale=(0.4, 1.0), flip_p=0.5, grayscale_p=0.66)],
    # [A.12] the linear-probe train transform: RandomResizedCrop 224 (bilinear) + flip
    "supervised": [dict(NOTHING_BUT_CROP, size=224, scale=(0.08, 1.0), flip_p=0.5)],
    # [A.12] Resize 256 + CenterCrop 224 (bilinear), nothing random
    "center_crop_eval": [
        dict(NOTHING_BUT_CROP, size=224, crop="center", center_fraction=224 / 256, flip_p=0.0)
    ],
}
RANDOM_CROP = [n for n in sorted(PUBLISHED) if n != "center_crop_eval"]


def test_every_recipe_has_a_published_entry() -> None:
    assert set(RECIPES) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_recipe_matches_the_published_table(name: str) -> None:
    views = recipe(name)
    assert len(views) == len(PUBLISHED[name])
    for v, published in zip(views, PUBLISHED[name], strict=True):
        for key, want in published.items():
            got = getattr(v, key)
            assert got == pytest.approx(want), f"{name} {key}: {got} vs published {want}"


# --- what the numbers do ------------------------------------------------------------------


def _rows(spec: ViewSpec, n: int, h: int = 400, w: int = 500, view: int = 0) -> np.ndarray:
    return np.stack([draw_params(spec, sample_rng(5, 1, i, view), h, w) for i in range(n)])


@pytest.mark.parametrize("name", RANDOM_CROP)
def test_crops_cover_the_published_area_and_aspect_ranges(name: str) -> None:
    from selfsup.kernels.layout import P_H, P_W

    for v, published in zip(recipe(name), PUBLISHED[name], strict=True):
        rows = _rows(v, 3000)
        area = rows[:, P_H] * rows[:, P_W] / (400 * 500)
        aspect = rows[:, P_W] / rows[:, P_H]
        lo, hi = published["scale"]
        slack = 0.01 + 2 * (400 + 500) / (400 * 500)  # the box's sides are rounded
        assert area.min() >= lo - slack and area.max() <= hi + slack, (name, v.size)
        # and the whole range is used, not a corner of it
        assert area.min() <= lo + 0.05 * (hi - lo) and area.max() >= hi - 0.05 * (hi - lo)
        assert aspect.min() >= 3 / 4 - 0.02 and aspect.max() <= 4 / 3 + 0.02


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "swav", "relicv2"])
def test_jitter_factors_span_the_published_strengths(name: str) -> None:
    from selfsup.kernels.layout import P_BRIGHTNESS, P_CONTRAST, P_HUE, P_SATURATION

    for v, published in zip(recipe(name), PUBLISHED[name], strict=True):
        rows = _rows(v, 2000)
        rows = rows[rows[:, P_JITTER] != 0]
        for col, key in ((P_BRIGHTNESS, "brightness"), (P_CONTRAST, "contrast"),
                         (P_SATURATION, "saturation")):  # fmt: skip
            s = published[key]
            lo, hi = max(0.0, 1 - s), 1 + s
            f = rows[:, col]
            assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6, (name, key)
            assert f.min() < lo + 0.02 * (hi - lo) and f.max() > hi - 0.02 * (hi - lo)
        hue = rows[:, P_HUE]
        h = published["hue"]
        assert hue.min() >= -h - 1e-6 and hue.max() <= h + 1e-6
        assert hue.min() < -0.95 * h and hue.max() > 0.95 * h


def _impulse_support(spec: ViewSpec, sigma: float) -> int:
    """Width of the blur's footprint on a single bright pixel, through the CPU engine's path
    (normalisation off, so that the Gaussian's far taps stay visible)."""
    from dataclasses import replace

    from selfsup.kernels.layout import P_ORDER
    from selfsup.pipeline.augment import augment_cpu

    spec = replace(spec, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    s = spec.size
    crop = np.zeros((s, s, 3), np.uint8)
    crop[s // 2, s // 2] = 255
    row = np.zeros(NPARAM, np.float32)
    row[P_ORDER : P_ORDER + 4] = (0, 1, 2, 3)
    row[P_BLUR_SIGMA] = sigma
    out = np.empty((3, s, s), np.float32)
    augment_cpu(crop, row, spec, out)
    lit = np.nonzero(out[0, s // 2])[0]
    return int(lit.max() - lit.min() + 1)


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "swav"])
def test_blur_kernel_size_follows_the_published_rule(name: str) -> None:
    """SimCLR and BYOL size the kernel at 10% of the side (224 -> 23 taps) whatever sigma;
    the PIL-based recipes (SwAV, DINO) size it from sigma (radius ceil(3 sigma))."""
    for v in recipe(name):
        rows = _rows(v, 500)
        sigma = rows[:, P_BLUR_SIGMA][rows[:, P_BLUR_SIGMA] > 0]
        assert sigma.min() >= 0.1 and sigma.max() <= 2.0
        if v.blur_kernel == "relative":  # sigma 2: the 11th tap is still 2.7e-7, visible
            assert _impulse_support(v, 2.0) == 2 * (v.size // 10 // 2) + 1, (name, v.size)
        else:
            for s in (0.5, 1.2, 2.0):
                assert _impulse_support(v, s) == 2 * int(np.ceil(3 * s)) + 1, (name, v.size)
    if name in ("simclr", "byol"):
        assert _impulse_support(recipe(name)[0], 2.0) == 23  # the published 224 -> 23 taps
    else:  # the same sigma-sized kernel on the small crops, as PIL's blur has it
        assert _impulse_support(recipe(name)[-1], 2.0) == 13


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_interpolation_is_the_published_one(name: str) -> None:
    """Enlarging a step edge: bicubic overshoots past both sides of the step, bilinear never
    leaves the range of its inputs."""
    from selfsup.kernels.layout import P_H, P_W
    from selfsup.pipeline.augment import crop_resize

    v = recipe(name)[0]
    img = np.full((20, 20, 3), 100, np.uint8)
    img[:, 10:] = 150
    row = np.zeros(NPARAM, np.float32)
    row[P_H], row[P_W] = 20, 20
    out = crop_resize(img, row, v)
    overshoots = out.min() < 100 or out.max() > 150
    assert overshoots == (PUBLISHED[name][0]["interpolation"] == "bicubic"), name


@pytest.mark.parametrize("name", ["simclr", "swav"])
def test_normalisation_uses_the_published_mean_and_std(name: str) -> None:
    from selfsup.kernels.layout import P_ORDER
    from selfsup.pipeline.augment import augment_cpu

    v = recipe(name, 16)[0]
    crop = np.full((16, 16, 3), 128, np.uint8)
    row = np.zeros(NPARAM, np.float32)
    row[P_ORDER : P_ORDER + 4] = (0, 1, 2, 3)
    out = np.empty((3, 16, 16), np.float32)
    augment_cpu(crop, row, v, out)
    mean, std = PUBLISHED[name][0]["mean"], PUBLISHED[name][0]["std"]
    want = [(128 / 255 - m) / s for m, s in zip(mean, std, strict=True)]
    assert np.allclose(out[:, 0, 0], want, atol=1e-5)


def test_center_crop_eval_is_resize_256_center_224() -> None:
    (v,) = recipe("center_crop_eval")
    assert (v.size, v.crop, v.interpolation) == (224, "center", "bilinear")
    assert v.center_fraction == pytest.approx(224 / 256)
    row = draw_params(v, sample_rng(0, 0, 0, 0), 300, 400)
    assert tuple(row[:4]) == (19, 69, 262, 262)  # central 0.875 * 300 square
    assert not row[4:10].any() and not row[14:].any()  # no random op, no mask


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


def test_a_registered_recipe_is_usable_by_name(monkeypatch) -> None:
    from selfsup.pipeline import RECIPES, register_recipe

    monkeypatch.setattr("selfsup.pipeline.recipes.RECIPES", dict(RECIPES))
    from selfsup.pipeline import recipes

    register_recipe("tiny_pair", lambda size=64: [ViewSpec(size=size, count=2, blur_p=0.0)])
    assert [(v.size, v.count) for v in recipes.recipe("tiny_pair", 32)] == [(32, 2)]
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("tiny_pair", lambda size=64: [])


@pytest.mark.parametrize(
    "name, n, expected",
    [
        ("swav", 2, [(224, 2), (96, 2)]),
        ("swav", 0, [(224, 2)]),
        ("dino", 3, [(224, 1), (224, 1), (96, 3)]),
        # ReLICv2's two kinds of small view take the count in turn; a kind left empty goes
        ("relicv2", 1, [(224, 2), (224, 2), (96, 1)]),
        ("relicv2", 5, [(224, 2), (224, 2), (96, 3), (96, 2)]),
    ],
)
def test_small_crops_sets_the_number_of_small_views(name, n, expected) -> None:
    views = recipe(name, small_crops=n)
    assert [(v.size, v.count) for v in views] == expected
    assert small_view_count(views) == n
    # the large views and the small ones' other fields are the recipe's
    full = recipe(name)
    large = [v for v in full if v.size == full[0].size]
    assert views[: len(large)] == large
    kinds = [replace(v, count=1) for v in full]
    assert all(replace(v, count=1) in kinds for v in views)


def test_small_crops_on_a_recipe_without_small_views_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no small views"):
        recipe("simclr", small_crops=2)
    with pytest.raises(ConfigError, match="integer >= 0"):
        recipe("swav", small_crops=-1)
