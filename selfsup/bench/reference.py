"""The reference loader: the same recipe, written the way torchvision-based SSL code does it.

A ``torch.utils.data.Dataset`` opens each file with Pillow, converts it to RGB and, for every
view of the recipe, applies per-sample Pillow ops as torchvision's transforms do on PIL
images (``RandomResizedCrop`` = crop then ``Image.resize``; flip; colour jitter in random
order with ``PIL.ImageEnhance`` and a hue shift through PIL's HSV mode; grayscale;
``ImageFilter.GaussianBlur``; ``ImageOps.solarize``; ``ToTensor`` + ``Normalize`` as torch
ops). A ``DataLoader`` with worker processes batches the samples.

The per-view choices (crop box, flip, jitter factors and order, which ops run, blur sigma)
come from ``views.draw_params`` with the same counter-based generator the selfsup engines
use, keyed by (seed, epoch, index, view): both pipelines therefore read the same
``ViewSpec`` and do the same work, and tests can compare their pixels. The draws use the
torchvision algorithms (``draw_params`` is torchvision's RandomResizedCrop box and
ColorJitter factors), so the reference's cost is that of torchvision-style code.

Known differences from selfsup's engine, all inherent to Pillow: Pillow's resize
antialiases when shrinking and its bicubic uses a = -0.5 (OpenCV: no antialias, a = -0.75);
Pillow rounds to uint8 after every op; ``ImageFilter.GaussianBlur`` sizes its kernel from
sigma (as MoCo/BYOL PIL code does), not at 10% of the side.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from selfsup.kernels.layout import (
    BRIGHTNESS,
    CONTRAST,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_FLIP,
    P_GRAY,
    P_H,
    P_HUE,
    P_JITTER,
    P_ORDER,
    P_SATURATION,
    P_SOLARIZE,
    P_W,
    P_X0,
    P_Y0,
    SATURATION,
)
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.views import ViewSpec, expand, group_by_size

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """torchvision's ``adjust_hue`` for PIL images: shift the H channel of PIL's HSV mode."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.uint8(int(factor * 255) % 256)  # a shift modulo 256, as torchvision's
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def apply_view(img: Image.Image, row: np.ndarray, spec: ViewSpec) -> torch.Tensor:
    """One view of ``img`` (RGB PIL) as torchvision-style transforms make it: float [3, S, S]."""
    y0, x0, h, w = (int(row[i]) for i in (P_Y0, P_X0, P_H, P_W))
    out = img.crop((x0, y0, x0 + w, y0 + h)).resize(
        (spec.size, spec.size), _RESAMPLE[spec.interpolation]
    )
    if row[P_FLIP]:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if row[P_JITTER]:
        for op in row[P_ORDER : P_ORDER + 4].astype(int):
            if op == BRIGHTNESS:
                out = ImageEnhance.Brightness(out).enhance(float(row[P_BRIGHTNESS]))
            elif op == CONTRAST:
                out = ImageEnhance.Contrast(out).enhance(float(row[P_CONTRAST]))
            elif op == SATURATION:
                out = ImageEnhance.Color(out).enhance(float(row[P_SATURATION]))
            else:
                out = adjust_hue(out, float(row[P_HUE]))
    if row[P_GRAY]:
        out = out.convert("L").convert("RGB")
    if row[P_BLUR_SIGMA] > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(row[P_BLUR_SIGMA])))
    if row[P_SOLARIZE]:
        out = ImageOps.solarize(out, threshold=128)
    # ToTensor + Normalize
    x = torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def open_rgb(payload: bytes | np.ndarray) -> Image.Image:
    """A source's sample as an RGB PIL image: encoded bytes through ``Image.open`` (decoded
    in full here: a truncated file fails now), a uint8 pixel array through ``fromarray``."""
    if isinstance(payload, np.ndarray):
        return Image.fromarray(payload).convert("RGB")
    with Image.open(io.BytesIO(payload)) as f:
        return f.convert("RGB")


class ReferenceDataset(torch.utils.data.Dataset):
    """Samples ``(views, label, skipped)``: ``views`` one float [3, S, S] tensor per
    individual view, in the order of ``views.expand`` (the selfsup engine's view numbering).

    Samples come from any selfsup source (``read(i)``: encoded bytes or pixels). ``length``
    may exceed the number of samples: index ``i`` reads sample ``i % len(source)`` but keys its
    random choices by ``i``, so a long benchmark needs no epoch boundary. A sample Pillow
    cannot decode is replaced, as the selfsup engines do, by the next one that it can
    (deterministically); ``skipped`` counts the bad ones passed over for this sample.
    """

    def __init__(
        self,
        source,
        views: list[ViewSpec],
        *,
        seed: int = 0,
        epoch: int = 0,
        length: int | None = None,
    ) -> None:
        self.source = source
        self.specs = expand(views)
        self.seed, self.epoch = seed, epoch
        self.length = len(source) if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int, int]:
        n = len(self.source)
        for skipped in range(n):
            k = (index + skipped) % n
            try:
                payload, label = self.source.read(k)
                img = open_rgb(payload)
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                continue  # truncated, corrupt or unsupported: the next sample
        else:
            raise RuntimeError(f"none of the {n} samples can be decoded by Pillow")
        w, h = img.size
        out = []
        for v, spec in enumerate(self.specs):
            row = draw_params(spec, sample_rng(self.seed, self.epoch, index, v), h, w)
            out.append(apply_view(img, row, spec))
        return out, int(label), skipped


def reference_loader(
    dataset: ReferenceDataset, batch_size: int, workers: int, seed: int = 0
) -> torch.utils.data.DataLoader:
    """The DataLoader SSL code wraps around such a dataset; its shuffle seeded by ``seed``
    (the same order in every run with that seed, whatever the process's RNG)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def to_loader_layout(views: list[torch.Tensor], specs: list[ViewSpec]) -> list[torch.Tensor]:
    """Stack a reference batch's per-view ``[B, 3, S, S]`` tensors into the selfsup Loader's
    layout, one ``[V, B, 3, S, S]`` tensor per view size (for comparisons, not timed)."""
    out, at = [], 0
    for g in group_by_size(specs):
        out.append(torch.stack(views[at : at + g.count]))
        at += g.count
    return out
