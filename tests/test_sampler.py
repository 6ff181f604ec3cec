import numpy as np
import pytest

from selfsup.pipeline.sampler import ShardedSampler


def epoch_indices(n, bs, world, epoch=0, seed=0, drop_last=True):
    per_rank = []
    for rank in range(world):
        s = ShardedSampler(n, bs, seed=seed, rank=rank, world_size=world, drop_last=drop_last)
        order = s.order(epoch)
        per_rank.append([s.batch(order, k) for k in range(len(s))])
    return per_rank


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_epoch_covers_dataset_once_with_disjoint_shards(world):
    n = 103
    shards = epoch_indices(n, 5, world, drop_last=False)
    flat = np.concatenate([np.concatenate(b) for b in shards])
    assert sorted(flat.tolist()) == list(range(n))
    dropped = epoch_indices(n, 5, world, drop_last=True)
    flat = np.concatenate([np.concatenate(b) for b in dropped])
    assert len(flat) == len(set(flat.tolist())) == (n // (5 * world)) * 5 * world


def test_global_batch_is_independent_of_world_size():
    one = epoch_indices(64, 8, 1)[0]
    two = epoch_indices(64, 4, 2)
    for k in range(len(one)):
        assert np.array_equal(one[k], np.concatenate([two[0][k], two[1][k]]))


def test_permutation_depends_on_seed_and_epoch_only():
    s = ShardedSampler(50, 10, seed=3)
    assert np.array_equal(s.order(2), ShardedSampler(50, 7, seed=3).order(2))
    assert not np.array_equal(s.order(0), s.order(1))
    assert not np.array_equal(s.order(0), ShardedSampler(50, 10, seed=4).order(0))


def test_bad_rank():
    with pytest.raises(ValueError):
        ShardedSampler(10, 2, rank=2, world_size=2)
