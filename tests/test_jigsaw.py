"""Jigsaw's puzzles: tiles cut where they should be, shuffled by the chosen permutation, the
permutation set spread out, and the same puzzles for any number of processes."""

import numpy as np
import torch

from selfsup.trainer.methods.jigsaw import cut_tiles, max_hamming_permutations
from tests.test_methods import _build


def test_permutation_set_is_unique_and_spread_out():
    perms = max_hamming_permutations(30, 9, seed=0)
    assert len({tuple(p) for p in perms}) == 30
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1) + np.eye(30, dtype=int) * 9
    assert d.min() >= 7  # greedy max-min Hamming: far apart (at most 9 positions differ)


def test_tiles_are_the_cells_crops_at_their_offsets():
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    offsets = torch.randint(0, 2, (2, 9, 2))
    tiles = cut_tiles(x, 3, 3, offsets)  # cells of 4, tiles of 3
    for n in range(2):
        for k in range(9):
            y = (k // 3) * 4 + int(offsets[n, k, 0])
            xx = (k % 3) * 4 + int(offsets[n, k, 1])
            assert torch.equal(tiles[n, k], x[n, :, y : y + 3, xx : xx + 3])


def test_puzzles_shuffle_the_tiles_by_the_labelled_permutation():
    _, model = _build("jigsaw")
    m = model.method
    m.step = 5
    x = torch.randn(4, 3, 15, 15)
    shuffled, labels = m.puzzles(x)
    shuffled = shuffled.unflatten(0, (4, 9))
    # the same draws again, unshuffled: position k must show tile perms[label][k]
    m.step = 5
    gen = torch.Generator().manual_seed(m.cfg.seed * 1_000_003 + 5)
    cell = 5
    tile = max(1, round(cell * m.cfg.tile_fraction))
    offsets = torch.randint(0, cell - tile + 1, (4, 9, 2), generator=gen)
    tiles = cut_tiles(x, 3, tile, offsets)
    for n in range(4):
        order = m.perms[labels[n]]
        for k in range(9):
            assert torch.equal(shuffled[n, k], tiles[n, order[k]])
