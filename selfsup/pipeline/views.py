"""The augmentation graph as data: `ViewSpec`, the named recipes, and per-sample parameters.

A `ViewSpec` names one kind of view; a recipe is a list of them. Every engine and the
reference implementation read the same spec, and draw the same per-sample parameters
with :func:`draw_params` from the counter-based generator of ``rng.py``, so their outputs
can be compared in tests.

Per-sample parameters travel as one float row of length ``NPARAM`` per (sample, view),
laid out by the ``P_*`` column indices below. The CPU engine applies a row per sample in
its threads; the device path stacks the rows into a ``[B, NPARAM]`` tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from selfsup.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Column layout of a parameter row.
P_Y0, P_X0, P_H, P_W = 0, 1, 2, 3  # crop box in the decoded image (pixels)
P_FLIP = 4  # 1: mirror horizontally
P_JITTER = 5  # 1: apply colour jitter
P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE = 6, 7, 8, 9  # jitter factors
P_ORDER = 10  # 4 columns: the jitter ops in the order applied, as the op codes below
P_GRAY = 14  # 1: convert to 3-channel grayscale
P_BLUR_SIGMA = 15  # Gaussian blur sigma in pixels; 0: no blur
P_SOLARIZE = 16  # 1: solarize (x >= 0.5 -> 1 - x)
P_MASK = 17  # 1: replace the background (saliency masking, ReLICv2)
P_FILL = 18  # 3 columns: the background's replacement colour, RGB in [0, 1]
NPARAM = 21

# Op codes stored in the P_ORDER columns.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL

CROP_MODES = ("random_resized", "center")
INTERPOLATIONS = ("bilinear", "bicubic")
BLUR_KERNEL_RULES = ("relative", "sigma")
MASK_FILLS = ("mean", "black", "random")
SWAV_STD = (0.228, 0.224, 0.225)  # sic: SwAV's multicropdataset.py and eval scripts


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view: how to cut it, how big, and which random ops to apply.

    Probabilities are per sample. ``crop="center"`` cuts the central square whose side is
    ``center_fraction`` of the shorter image side (the same region as "resize the shorter
    side to size / center_fraction, then centre-crop size"), with no random ops.
    ``blur_kernel="relative"`` sizes the Gaussian at 10% of the view side as SimCLR and BYOL
    do; ``"sigma"`` sizes it from sigma (radius ceil(3 sigma)) as PIL-based recipes do.

    Saliency masking (ReLICv2): with probability ``mask_p`` a sample's background (where its
    foreground mask is 0) is replaced by a flat colour before the colour chain, so the
    replaced background is jittered like the rest. ``mask_fill`` picks the colour:
    ``"mean"`` the normalisation mean (the dataset's mean colour), ``"black"`` zero,
    ``"random"`` a uniform random RGB colour per sample. See ``saliency.py`` for the masks.
    """

    size: int
    count: int = 1
    crop: str = "random_resized"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center_fraction: float = 0.875
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: str = "relative"
    solarize_p: float = 0.0
    mask_p: float = 0.0
    mask_fill: str = "mean"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"view spec: {what}")

        if self.size < 1:
            raise bad(f"size must be >= 1, got {self.size}")
        if self.count < 1:
            raise bad(f"count must be >= 1, got {self.count}")
        if self.crop not in CROP_MODES:
            raise bad(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise bad(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.blur_kernel not in BLUR_KERNEL_RULES:
            raise bad(f"blur_kernel must be one of {BLUR_KERNEL_RULES}, got {self.blur_kernel!r}")
        if self.mask_fill not in MASK_FILLS:
            raise bad(f"mask_fill must be one of {MASK_FILLS}, got {self.mask_fill!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise bad(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise bad(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 < self.center_fraction <= 1:
            raise bad(f"center_fraction must be in (0, 1], got {self.center_fraction}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "mask_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise bad(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise bad(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if min(self.std) <= 0:
            raise bad(f"std must be positive, got {self.std}")

    @property
    def blur_radius_max(self) -> int:
        """Largest blur radius this view can use (sizes buffers and kernels)."""
        if self.blur_kernel == "relative":
            return blur_radius(self, self.blur_sigma[1])
        return max(1, math.ceil(3.0 * self.blur_sigma[1]))


def blur_radius(spec: ViewSpec, sigma: float) -> int:
    """Radius of the Gaussian blur kernel (taps = 2 * radius + 1)."""
    if spec.blur_kernel == "relative":
        # SimCLR: kernel_size = side // 10, radius = kernel_size // 2.
        return max(1, (spec.size // 10) // 2)
    return max(1, math.ceil(3.0 * sigma))


def gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian of 2 * radius + 1 taps, float32."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Per-sample parameters
# ---------------------------------------------------------------------------------------


# One view's random numbers come from a single bulk draw of _NDRAW uniforms in [0, 1), laid
# out in fixed slots whatever the spec says, so changing one probability reshuffles nothing
# else, and one call replaces a dozen scalar draws (the per-view cost is Python overhead).
_U_BOX = 0  # 10 tries x (area, log-ratio, y, x)
_U_COIN = 40  # flip, jitter, gray, blur, solarize, mask
_U_FACTOR = 46  # brightness, contrast, saturation, hue
_U_ORDER = 50  # 4 keys: the jitter order is their argsort (a uniform permutation)
_U_SIGMA = 54
_U_FILL = 55  # 3: the random fill colour
_NDRAW = 58


def _random_resized_box(
    spec: ViewSpec, u: list[float], h: int, w: int
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: 10 tries in area and log-ratio, then a fallback."""
    area = h * w
    lo, hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    s0, s1 = spec.scale
    for t in range(_U_BOX, _U_BOX + 40, 4):
        target = area * (s0 + (s1 - s0) * u[t])
        aspect = math.exp(lo + (hi - lo) * u[t + 1])
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = min(h - ch, int(u[t + 2] * (h - ch + 1)))
            x0 = min(w - cw, int(u[t + 3] * (w - cw + 1)))
            return y0, x0, ch, cw
    # Fallback: the whole image, clamped to the allowed aspect ratios, centred.
    in_ratio = w / h
    if in_ratio < spec.ratio[0]:
        cw, ch = w, int(round(w / spec.ratio[0]))
    elif in_ratio > spec.ratio[1]:
        ch, cw = h, int(round(h * spec.ratio[1]))
    else:
        cw, ch = w, h
    ch, cw = max(1, min(ch, h)), max(1, min(cw, w))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _center_box(spec: ViewSpec, h: int, w: int) -> tuple[int, int, int, int]:
    side = max(1, int(round(spec.center_fraction * min(h, w))))
    return (h - side) // 2, (w - side) // 2, side, side


def draw_params(spec: ViewSpec, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Draw one view's parameter row for a decoded image of ``h`` x ``w`` pixels.

    All random numbers come from one bulk draw with a fixed slot per choice, whatever the
    probabilities, so changing one probability does not reshuffle the other choices of the
    same sample.
    """
    p = np.zeros(NPARAM, dtype=np.float32)
    if spec.crop == "center":
        p[P_Y0], p[P_X0], p[P_H], p[P_W] = _center_box(spec, h, w)
        p[P_ORDER : P_ORDER + 4] = (0, 1, 2, 3)
        return p
    draws = rng.random(_NDRAW)
    u = draws.tolist()
    p[P_Y0], p[P_X0], p[P_H], p[P_W] = _random_resized_box(spec, u, h, w)
    coin = [u[_U_COIN + k] for k in range(6)]  # flip, jitter, gray, blur, solarize, mask
    p[P_FLIP] = coin[0] < spec.flip_p
    p[P_JITTER] = coin[1] < spec.jitter_p
    for k, (col, f) in enumerate(
        (
            (P_BRIGHTNESS, spec.brightness),
            (P_CONTRAST, spec.contrast),
            (P_SATURATION, spec.saturation),
        )
    ):
        lo = max(0.0, 1 - f)
        p[col] = lo + (1 + f - lo) * u[_U_FACTOR + k]
    p[P_HUE] = spec.hue * (2 * u[_U_FACTOR + 3] - 1)
    p[P_ORDER : P_ORDER + 4] = np.argsort(draws[_U_ORDER : _U_ORDER + 4], kind="stable")
    p[P_GRAY] = coin[2] < spec.grayscale_p
    s0, s1 = spec.blur_sigma
    p[P_BLUR_SIGMA] = s0 + (s1 - s0) * u[_U_SIGMA] if coin[3] < spec.blur_p else 0.0
    p[P_SOLARIZE] = coin[4] < spec.solarize_p
    p[P_MASK] = coin[5] < spec.mask_p
    if spec.mask_fill == "mean":
        p[P_FILL : P_FILL + 3] = spec.mean
    elif spec.mask_fill == "random":
        p[P_FILL : P_FILL + 3] = draws[_U_FILL : _U_FILL + 3]
    return p


# ---------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------


# Each recipe names the source of its numbers; all of them are gathered, with the
# upstream files, in the project's reference/methods.md (section in brackets).

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
    common = {"size": size, "count": count, "blur_kernel": "relative", **_BYOL_JITTER, **kw}
    return [
        ViewSpec(blur_p=1.0, solarize_p=0.0, **common),
        ViewSpec(blur_p=0.1, solarize_p=0.2, **common),
    ]


def _byol(size: int = 224) -> list[ViewSpec]:
    return _byol_pair(size)


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


def _center_crop_eval(size: int = 224) -> list[ViewSpec]:
    # The evaluation transform [A.12]: Resize 256 + CenterCrop 224, i.e. the central
    # 0.875 of the shorter side, bilinear, no random ops.
    return [ViewSpec(size=size, crop="center", interpolation="bilinear")]


RECIPES = {
    "simclr": _simclr,
    "byol": _byol,
    "swav": _swav,
    "dino": _dino,
    "relicv2": _relicv2,
    "supervised": _supervised,
    "center_crop_eval": _center_crop_eval,
}


def recipe(name: str, size: int | None = None, **overrides) -> list[ViewSpec]:
    """The named recipe's view specs, optionally at another size and with field overrides.

    ``size`` rescales the first (largest) view to ``size`` and any smaller views in
    proportion; ``overrides`` replace fields of every view (e.g. ``blur_p=0``).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    views = RECIPES[name]()
    if size is not None:
        base = views[0].size
        views = [replace(v, size=max(1, round(v.size * size / base))) for v in views]
    if overrides:
        try:
            views = [replace(v, **overrides) for v in views]
        except TypeError as e:
            raise ConfigError(f"recipe {name!r}: {e}") from None
    return views


@dataclass(frozen=True)
class ViewGroup:
    """Views of one size, returned stacked as one tensor ``[count, B, 3, size, size]``."""

    size: int
    specs: list[ViewSpec] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.specs)


def group_by_size(views: list[ViewSpec]) -> list[ViewGroup]:
    """Group a recipe's views by output size, largest first, keeping their order inside."""
    sizes = sorted({v.size for v in views}, reverse=True)
    return [ViewGroup(size=s, specs=[v for v in views if v.size == s]) for s in sizes]


def expand(views: list[ViewSpec]) -> list[ViewSpec]:
    """One entry per individual view (a spec with count=k appears k times), in group order."""
    return [s for g in group_by_size(views) for s in g.specs for _ in range(s.count)]
