"""The named recipes: each method's published views as a list of ViewSpecs, by name.

``RECIPES`` maps a name to a function ``(size=224) -> list[ViewSpec]``; :func:`recipe` builds
one, rescaled and with field overrides; :func:`register_recipe` adds one. ``selfsup list
recipes`` prints them. Each recipe names the source of its numbers; all of them are gathered,
with the upstream files, in the project's reference/methods.md (section in brackets), and
tests/test_recipes.py checks them against those published tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from selfsup.errors import ConfigError
from selfsup.pipeline.views import ViewSpec, override_views

SWAV_STD = (0.228, 0.224, 0.225)  # sic: SwAV's multicropdataset.py and eval scripts

# "BYOL-style" jitter: ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2 [A.0].
_BYOL_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}


def _simclr(size: int = 224) -> list[ViewSpec]:
    # SimCLR colour distortion s=1: jitter (0.8, 0.8, 0.8, 0.2) p=0.8 in random order,
    # grayscale p=0.2, blur p=0.5 with sigma U[0.1, 2] and a kernel of 10% of the side,
    # bicubic random resized crop (0.08, 1), flip, no solarize. Both views alike.
    # [A.0 "SimCLR-style"; simclr/tf2/data_util.py]
    return [ViewSpec(size=size, count=2)]


def _byol_pair(size: int, count: int = 1, **kw) -> list[ViewSpec]:
    """BYOL's two asymmetric views [A.0; deepmind-research/byol/utils/augmentations.py]:
    bicubic RRC (0.08, 1), flip, BYOL jitter, grayscale 0.2, blur sigma U[0.1, 2] with a
    kernel of 10% of the side (224 -> 23 taps); view 1 blur p=1.0 and no solarize, view 2
    blur p=0.1 and solarize p=0.2."""
    common = {"size": size, "count": count, "blur_kernel": "relative", **_BYOL_JITTER}
    common.update(kw)
    return [
        ViewSpec(blur_p=1.0, solarize_p=0.0, **common),
        ViewSpec(blur_p=0.1, solarize_p=0.2, **common),
    ]


def _byol(size: int = 224) -> list[ViewSpec]:
    return _byol_pair(size)


def _moco_v2(size: int = 224) -> list[ViewSpec]:
    # MoCo v2 "aug+" [A.5; moco/main_moco.py]: torchvision RRC (0.2, 1) bilinear, flip,
    # ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, PIL blur p=0.5 sigma U[0.1, 2]
    # (kernel from sigma), no solarize; both views alike.
    return [
        ViewSpec(
            size=size, count=2, scale=(0.2, 1.0), interpolation="bilinear", brightness=0.4,
            contrast=0.4, saturation=0.4, hue=0.1, blur_kernel="sigma",
        )
    ]  # fmt: skip


def _moco_v3(size: int = 224) -> list[ViewSpec]:
    # MoCo v3 [A.6; moco-v3/main_moco.py]: BYOL's asymmetric pair with torchvision's bilinear
    # RRC from --crop-min .2 (all published recipes), PIL blur (kernel from sigma).
    return _byol_pair(size, scale=(0.2, 1.0), interpolation="bilinear", blur_kernel="sigma")


def _swav(size: int = 224) -> list[ViewSpec]:
    # SwAV multi-crop [A.3; swav/scripts/swav_800ep_pretrain.sh, src/multicropdataset.py]:
    # --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14,
    # torchvision's default bilinear RRC, flip, jitter (0.8, 0.8, 0.8, 0.2) p=0.8,
    # grayscale 0.2, PIL blur p=0.5 with sigma U[0.1, 2] (kernel from sigma, the same sigma
    # on 96-px crops), no solarize, and SwAV's std typo 0.228 kept.
    small = max(1, round(size * 96 / 224))
    common = {"interpolation": "bilinear", "blur_kernel": "sigma", "std": SWAV_STD}
    return [
        ViewSpec(size=size, count=2, scale=(0.14, 1.0), **common),
        ViewSpec(size=small, count=6, scale=(0.05, 0.14), **common),
    ]


def _dino(size: int = 224) -> list[ViewSpec]:
    # DINO multi-crop [A.8; dino/main_dino.py DataAugmentationDINO], ViT defaults:
    # 2 global crops 224 scale (0.4, 1) and 8 local crops 96 scale (0.05, 0.4), bicubic,
    # flip, BYOL jitter p=0.8, grayscale 0.2, PIL blur (kernel from sigma); global 1 blur
    # p=1.0, global 2 blur p=0.1 + solarize p=0.2, locals blur p=0.5, no solarize.
    # The README's ResNet-50 run uses scales (0.14, 1) and (0.05, 0.14): pass a list of
    # ViewSpecs with those scales to reproduce it.
    small = max(1, round(size * 96 / 224))
    common = {"interpolation": "bicubic", "blur_kernel": "sigma", **_BYOL_JITTER}
    g = {"size": size, "scale": (0.4, 1.0), **common}
    return [
        ViewSpec(blur_p=1.0, solarize_p=0.0, **g),
        ViewSpec(blur_p=0.1, solarize_p=0.2, **g),
        ViewSpec(size=small, count=8, scale=(0.05, 0.4), blur_p=0.5, solarize_p=0.0, **common),
    ]


def _dino_resnet(size: int = 224) -> list[ViewSpec]:
    # DINO's ResNet-50 run [A.8; the README's example]: the dino views with
    # --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14.
    g1, g2, local = _dino(size)
    return [
        replace(g1, scale=(0.14, 1.0)), replace(g2, scale=(0.14, 1.0)),
        replace(local, scale=(0.05, 0.14)),
    ]  # fmt: skip


def _relicv2(size: int = 224) -> list[ViewSpec]:
    # ReLICv2 (Tomasev et al. 2022, arXiv 2201.05119) [A.7]: large 224 and small 96 crops,
    # the BYOL augmentation on each, saliency masking with p_m = 0.1 on the large crops
    # only (the paper's pseudo-code masks x before crop_l and aug). Not verified in a
    # primary source, so chosen here and marked as such: 4 large + 2 small crops (the
    # count recalled in methods.md); BYOL's asymmetric blur/solarize alternating between
    # the crops (large: two of each BYOL view; small: one of each); large scale (0.08, 1)
    # as BYOL, small scale (0.05, 0.14) as SwAV; background replaced by the mean colour.
    small = max(1, round(size * 96 / 224))
    return [
        *_byol_pair(size, count=2, mask_p=0.1),
        *_byol_pair(small, count=1, scale=(0.05, 0.14)),
    ]


def _supervised(size: int = 224) -> list[ViewSpec]:
    # The linear-probe / supervised train transform [A.12]: RandomResizedCrop 224 (0.08, 1)
    # with torchvision's default bilinear interpolation, flip, nothing else.
    return [
        ViewSpec(size=size, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, interpolation="bilinear")
    ]


def _jigsaw(size: int = 224) -> list[ViewSpec]:
    # Jigsaw [A.13]: one view cut into 3x3 tiles by the method; grayscale p=0.66 against
    # chromatic-aberration shortcuts (Goyal et al. 2019); no colour jitter or blur. The crop
    # is chosen here (no primary source pinned in the reference): a random resized crop of at
    # least 40% of the image, bilinear, and flip (the paper crops 255 of a 256 resize).
    return [
        ViewSpec(
            size=size, scale=(0.4, 1.0), interpolation="bilinear", jitter_p=0.0,
            grayscale_p=0.66, blur_p=0.0,
        )
    ]  # fmt: skip


def _center_crop_eval(size: int = 224) -> list[ViewSpec]:
    # The evaluation transform [A.12]: Resize 256 + CenterCrop 224, i.e. the central
    # 0.875 of the shorter side, bilinear, no random ops.
    # Every probability 0: no draw turns an op on, and the device and fused chains skip
    # their colour stages outright (only the normalisation runs).
    return [
        ViewSpec(
            size=size, crop="center", interpolation="bilinear", flip_p=0.0, jitter_p=0.0,
            grayscale_p=0.0, blur_p=0.0,
        )
    ]  # fmt: skip


RECIPES: dict[str, Callable[..., list[ViewSpec]]] = {
    "simclr": _simclr,
    "byol": _byol,
    "moco_v2": _moco_v2,
    "moco_v3": _moco_v3,
    "swav": _swav,
    "dino": _dino,
    "dino_resnet": _dino_resnet,
    "relicv2": _relicv2,
    "jigsaw": _jigsaw,
    "supervised": _supervised,
    "center_crop_eval": _center_crop_eval,
}


def register_recipe(name: str, make: Callable[..., list[ViewSpec]]) -> None:
    """Add a recipe: ``make(size=224) -> list[ViewSpec]``, largest view first."""
    if name in RECIPES:
        raise ValueError(f"a recipe named {name!r} is already registered")
    RECIPES[name] = make


def describe(name: str) -> str:
    """One line per kind of view of a recipe at its published size (for ``selfsup list``)."""
    parts = []
    for v in recipe(name):
        ops = [f"{v.count}x{v.size}", v.crop if v.crop == "center" else f"crop {v.scale}"]
        ops.append(v.interpolation)
        if v.jitter_p:
            ops.append(
                f"jitter ({v.brightness}, {v.contrast}, {v.saturation}, {v.hue}) p {v.jitter_p}"
            )
        for label, p in (("gray", v.grayscale_p), ("blur", v.blur_p), ("solarize", v.solarize_p),
                         ("mask", v.mask_p)):  # fmt: skip
            if p:
                ops.append(f"{label} {p}")
        parts.append(", ".join(ops))
    return "; ".join(parts)


def small_view_count(views: list[ViewSpec]) -> int:
    """How many views per image are smaller than the first (largest) view: multi-crop's."""
    return sum(v.count for v in views if v.size < views[0].size)


def with_small_crops(views: list[ViewSpec], n: int) -> list[ViewSpec]:
    """``views`` with ``n`` small (multi-crop) views instead of the recipe's, shared out over
    its kinds of small view in turn (ReLICv2's two kinds: 1 -> one of the first kind); a kind
    left with none is dropped. The large views are unchanged."""
    small = [i for i, v in enumerate(views) if v.size < views[0].size]
    if not small:
        raise ConfigError(
            "data.small_crops is set but the recipe has no small views (multi-crop: SwAV, "
            "DINO, ReLICv2); leave it unset"
        )
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise ConfigError(f"data.small_crops must be an integer >= 0, got {n!r}")
    counts = {i: n // len(small) + (k < n % len(small)) for k, i in enumerate(small)}
    return [
        replace(v, count=counts[i]) if i in counts else v
        for i, v in enumerate(views)
        if counts.get(i, 1) > 0
    ]


def recipe(
    name: str,
    size: int | None = None,
    overrides: dict[str, Any] | None = None,
    small_crops: int | None = None,
) -> list[ViewSpec]:
    """The named recipe's view specs, optionally at another size, with field overrides and
    another number of small views.

    ``size`` rescales the first (largest) view to ``size`` and any smaller views in
    proportion; ``overrides`` replace fields of every view (e.g. ``{"blur_p": 0}``, or
    ``{"mean": [0.5, 0.5, 0.5]}``: values are checked and coerced as a config file's are);
    ``small_crops`` sets the number of small (multi-crop) views (:func:`with_small_crops`).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    views = RECIPES[name]()
    if size is not None:
        base = views[0].size
        views = [replace(v, size=max(1, round(v.size * size / base))) for v in views]
    if small_crops is not None:
        views = with_small_crops(views, small_crops)
    if overrides:
        views = override_views(views, overrides, f"recipe {name!r}")
    return views
