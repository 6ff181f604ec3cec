"""Jigsaw (Noroozi & Favaro, 2016): predict which permutation shuffled an image's 3x3 tiles.

Made on the device from the loader's batch, with no loop over samples: each view is cut into a
``grid`` x ``grid`` grid; inside every cell a square tile of ``tile_fraction`` of the cell is
taken at a random offset (the paper's patch jitter: 64 px inside 85 px cells), the tiles are
shuffled by one of ``num_permutations`` permutations, chosen once, greedily, for maximal
minimal Hamming distance (the paper's set), and each tile goes through the shared backbone;
a per-tile MLP (``tile_dim``, BN, ReLU), the concatenation of the tiles and a linear layer
predict the permutation's index (cross-entropy). The random offsets and permutation indices
are drawn for the whole global batch from a generator keyed by (``seed``, step) and each rank
takes its slice, so W processes make the same puzzles as one. A pretext baseline: expect far
less than the contrastive methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.fields import bounded
from selfsup.trainer.methods import register


def max_hamming_permutations(count: int, size: int = 9, seed: int = 0) -> np.ndarray:
    """``count`` permutations of ``range(size)``: the first at random, each next one the
    permutation whose smallest Hamming distance to those chosen is largest (ties: the first)."""
    every = np.array(list(permutations(range(size))), dtype=np.int8)
    if not 1 <= count <= len(every):
        raise ValueError(f"num_permutations must be between 1 and {len(every)}, got {count}")
    first = np.random.default_rng(seed).integers(len(every))
    chosen = [first]
    nearest = (every != every[first]).sum(1)
    for _ in range(count - 1):
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = np.minimum(nearest, (every != every[pick]).sum(1))
    return every[chosen].astype(np.int64)


def cut_tiles(x: torch.Tensor, grid: int, tile: int, offsets: torch.Tensor) -> torch.Tensor:
    """[N, grid*grid, C, tile, tile]: from each image of x [N, C, S, S], the tile of cell k
    (row-major) whose top-left corner is the cell's corner plus ``offsets[n, k]`` (y, x)."""
    n, _, s, _ = x.shape
    cell = s // grid
    k = torch.arange(grid * grid, device=x.device)
    top = (k // grid) * cell + offsets[..., 0]  # [N, G]
    left = (k % grid) * cell + offsets[..., 1]
    steps = torch.arange(tile, device=x.device)
    rows = (top[..., None] + steps)[..., :, None]  # [N, G, tile, 1]
    cols = (left[..., None] + steps)[..., None, :]  # [N, G, 1, tile]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    patches = x[batch, :, rows, cols]  # advanced indices first: [N, G, tile, tile, C]
    return patches.permute(0, 1, 4, 2, 3)


@register("jigsaw")
class Jigsaw(nn.Module):
    recipe = "jigsaw"
    min_views = 1
    sync_bn = False
    online_features = False  # the backbone sees tiles, never whole images: no eval.online_linear

    @dataclass
    class Config:
        name: ClassVar[str]
        num_permutations: int = bounded(100, 1)  # the paper's set size
        grid: int = bounded(3, 2)
        tile_fraction: float = bounded(64 / 85, 0.1, 1.0)  # tile side / cell side
        tile_dim: int = bounded(1000, 1)
        seed: int = 0  # the permutation set and the per-step puzzle draws

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        perms = max_hamming_permutations(cfg.num_permutations, cfg.grid**2, cfg.seed)
        self.register_buffer("perms", torch.from_numpy(perms))
        self.tile_head = nn.Sequential(
            nn.Linear(num_features, cfg.tile_dim, bias=False), nn.BatchNorm1d(cfg.tile_dim),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        self.classifier = nn.Linear(cfg.grid**2 * cfg.tile_dim, cfg.num_permutations)

    def puzzles(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled tiles [N * G, C, t, t] (sample-major) and permutation indices [N]."""
        c, g = self.cfg, self.cfg.grid**2
        cell = x.shape[-1] // c.grid
        tile = max(1, round(cell * c.tile_fraction))
        world, n = distributed.world_size(), len(x)
        gen = torch.Generator(device=x.device)
        gen.manual_seed(c.seed * 1_000_003 + self.step)
        total = n * world  # draws for the global batch, this rank's slice kept
        offsets = torch.randint(0, cell - tile + 1, (total, g, 2), generator=gen, device=x.device)
        labels = torch.randint(0, c.num_permutations, (total,), generator=gen, device=x.device)
        mine = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
        offsets, labels = offsets[mine], labels[mine]
        tiles = cut_tiles(x, c.grid, tile, offsets)  # [N, G, C, t, t]
        order = self.perms[labels]  # [N, G]: position k shows tile order[k]
        shuffled = tiles[torch.arange(n, device=x.device)[:, None], order]
        return shuffled.flatten(0, 1), labels

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = views[0].flatten(0, 1)
        tiles, labels = self.puzzles(x)
        if x.is_contiguous(memory_format=torch.channels_last):
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        features = self.tile_head(self.backbone(tiles))  # [N * G, tile_dim], shared trunk
        logits = self.classifier(features.reshape(len(x), -1))
        return F.cross_entropy(logits.float(), labels)
