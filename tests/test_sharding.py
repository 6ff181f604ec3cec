"""Sharding through the Loader: disjoint per-rank shards covering each epoch exactly once,
global unique indices, and the same per-sample views whatever the rank count."""

import numpy as np
import pytest
import torch

from selfsup.pipeline import ImageFolderSource, Loader


@pytest.fixture(scope="module")
def source(synthetic_root):
    return ImageFolderSource(synthetic_root / "train")  # 120 images


def rank_loaders(source, world, per_rank, **kw):
    return [
        Loader(source, "simclr", per_rank, size=16, seed=7, threads=1, prefetch=0,
               rank=r, world_size=world, **kw)
        for r in range(world)
    ]  # fmt: skip


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_epoch_covers_the_dataset_once_across_ranks(source, world):
    loaders = rank_loaders(source, world, 8, drop_last=False)
    for epoch in (0, 1):
        seen = []
        for loader in loaders:
            loader.set_epoch(epoch)
            seen.append(torch.cat([b.indices for b in loader]).tolist())
        flat = [i for s in seen for i in s]
        assert sorted(flat) == list(range(len(source)))  # every sample once, none twice
        for a in range(world):  # disjoint shards
            for b in range(a + 1, world):
                assert not set(seen[a]) & set(seen[b])
        assert len({len(loader) for loader in loaders}) == 1  # same step count on every rank


@pytest.mark.parametrize("world", [2, 3, 4])
def test_views_do_not_depend_on_the_rank_count(source, world):
    """A global batch of 12 on 1 rank equals the concatenation of the ranks' shards."""
    (single,) = rank_loaders(source, 1, 12)
    if 12 % world:
        pytest.skip("global batch must split evenly")
    shards = rank_loaders(source, world, 12 // world)
    for loader in [single, *shards]:
        loader.set_epoch(2)
    one = list(single)
    many = [list(loader) for loader in shards]
    assert len(one) == len(many[0]) == len(source) // 12
    for k, batch in enumerate(one):
        parts = [m[k] for m in many]
        assert torch.equal(batch.indices, torch.cat([p.indices for p in parts]))
        assert torch.equal(batch.labels, torch.cat([p.labels for p in parts]))
        assert torch.equal(batch.views[0], torch.cat([p.views[0] for p in parts], dim=1))


def test_drop_last_keeps_shapes_fixed_and_indices_unique(source):
    loaders = rank_loaders(source, 3, 7)  # global batch 21: 5 full batches of 120
    got = [[b for b in loader] for loader in loaders]
    assert all(len(g) == 120 // 21 for g in got)
    assert all(b.views[0].shape[1] == 7 for g in got for b in g)
    flat = np.concatenate([b.indices.numpy() for g in got for b in g])
    assert len(np.unique(flat)) == len(flat)


def _rank_indices(rank, world, root, port, out):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        loader = Loader(ImageFolderSource(root), "supervised", 6, size=16, seed=3, threads=1)
        assert (loader.sampler.rank, loader.sampler.world_size) == (rank, world)
        torch.save([b.indices for b in loader], f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_come_from_torch_distributed(synthetic_root, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = synthetic_root / "train"
    mp.spawn(_rank_indices, args=(2, root, port, tmp_path), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = Loader(ImageFolderSource(root), "supervised", 12, size=16, seed=3, threads=1)
    for k, batch in enumerate(single):
        assert torch.equal(batch.indices, torch.cat([got[0][k], got[1][k]]))
