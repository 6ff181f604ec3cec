"""The augmentation graph as data: `ViewSpec`, one kind of view, and how views group by size.

A recipe (``recipes.py``) is a list of ViewSpecs. Every engine and the reference implementation
read the same spec and draw the same per-sample parameter rows from it (``params.py``), so
their outputs can be compared in tests.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from selfsup.errors import ConfigError
from selfsup.fields import coerce
from selfsup.kernels.blur import radius_for_sigma

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_MODES = ("random_resized", "center")
INTERPOLATIONS = ("bilinear", "bicubic")
BLUR_KERNEL_RULES = ("relative", "sigma")
MASK_FILLS = ("mean", "black", "random")
ANTIALIAS_ABOVE = 1.5  # shrink factor above which an antialias view averages areas


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

    ``antialias``: a crop that shrinks by more than ``ANTIALIAS_ABOVE`` (1.5x) on its longer
    side is resized with area averaging (OpenCV's ``INTER_AREA``, a box filter over each
    output pixel's footprint) instead of ``interpolation``, which samples a fixed 2x2 or 4x4
    neighbourhood and aliases fine detail when shrinking, as torchvision's tensor resize
    without ``antialias`` does; Pillow (torchvision's PIL path) always antialiases. Off by
    default: the published recipes' TF and tensor pipelines do not antialias either.
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
    antialias: bool = False

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"view spec: {what}")

        # Types first (a YAML list for a tuple, an int for a float), so that nothing
        # ill-formed reaches an engine thread; values are coerced in place.
        hints = _hints()
        for f in dataclasses.fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], f.name, "view spec")
            object.__setattr__(self, f.name, value)
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
        return blur_radius(self, self.blur_sigma[1])

    @property
    def colour_stages(self) -> bool:
        """Whether any per-pixel colour op (mask, jitter, gray, blur) can run on this view."""
        return max(self.mask_p, self.jitter_p, self.grayscale_p, self.blur_p) > 0


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(ViewSpec)


def blur_radius(spec: ViewSpec, sigma: float) -> int:
    """Radius of the Gaussian blur kernel (taps = 2 * radius + 1)."""
    if spec.blur_kernel == "relative":
        # SimCLR: kernel_size = side // 10, radius = kernel_size // 2.
        return max(1, (spec.size // 10) // 2)
    return radius_for_sigma(sigma)


def antialiased(spec: ViewSpec, h: float, w: float) -> bool:
    """Whether a crop of ``h`` x ``w`` pixels is resized to this view with area averaging
    (``spec.antialias`` and both sides shrink, the longer by more than ``ANTIALIAS_ABOVE``)."""
    s = spec.size
    return spec.antialias and min(h, w) >= s and max(h, w) > ANTIALIAS_ABOVE * s


def view_fields() -> list[str]:
    """The names of ViewSpec's fields (what a view override may set)."""
    return [f.name for f in dataclasses.fields(ViewSpec)]


def override_views(
    views: list[ViewSpec], overrides: dict[str, Any], where: str = "view overrides"
) -> list[ViewSpec]:
    """``views`` with ``overrides`` (ViewSpec field -> value) replaced in every view.

    Unknown fields, wrong types (coerced where lossless: a list for a tuple, an int for a
    float) and impossible values raise one-line :class:`ConfigError` naming ``where``.
    """
    unknown = sorted(set(overrides) - set(view_fields()))
    if unknown:
        raise ConfigError(
            f"{where}: unknown view field {unknown[0]!r}; allowed: {', '.join(view_fields())}"
        )
    try:
        return [replace(v, **overrides) for v in views]
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


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
