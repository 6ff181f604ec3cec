import shutil

import numpy as np
import pytest
import torch

from selfsup.errors import DataError
from selfsup.pipeline import ImageFolderSource, Loader
from selfsup.pipeline.views import ViewSpec


@pytest.fixture
def source(synthetic_root):
    return ImageFolderSource(synthetic_root / "train")


def collect(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        if n is not None and i >= n:
            break
        out.append(b)
    return out


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.labels, y.labels)
        for vx, vy in zip(x.views, y.views, strict=True):
            assert torch.equal(vx, vy)


def test_batch_shapes_labels_and_indices(source):
    loader = Loader(source, "simclr", 8, size=24, seed=0, threads=2)
    batches = collect(loader)
    assert len(batches) == len(loader) == len(source) // 8
    b = batches[0]
    assert len(b.views) == 1 and b.views[0].shape == (2, 8, 3, 24, 24)
    assert b.views[0].dtype == torch.float32
    assert torch.equal(b.labels, torch.as_tensor(source.labels[b.indices.numpy()]))
    seen = torch.cat([x.indices for x in batches])
    assert len(set(seen.tolist())) == len(seen)
    # the two views of a sample differ (random crops), and values look normalised
    assert not torch.equal(b.views[0][0], b.views[0][1])
    assert -3 < b.views[0].mean() < 3


def test_same_seed_same_batches_whatever_the_threads(source):
    a = collect(Loader(source, "simclr", 8, size=16, seed=5, threads=1, prefetch=0))
    b = collect(Loader(source, "simclr", 8, size=16, seed=5, threads=2, prefetch=3))
    same_batches(a, b)
    c = collect(Loader(source, "simclr", 8, size=16, seed=6, threads=2))
    assert not torch.equal(a[0].views[0], c[0].views[0])


def test_epochs_differ_and_state_dict_resumes_mid_epoch(source):
    loader = Loader(source, "simclr", 8, size=16, seed=1, threads=2)
    loader.set_epoch(3)
    full = collect(loader)
    loader.set_epoch(3)  # same epoch after a full pass: starts again
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state["epoch"] == 3 and state["batch"] == 2
    it.close()
    fresh = Loader(source, "simclr", 8, size=16, seed=1, threads=1)
    fresh.load_state_dict(state)
    fresh.set_epoch(3)  # no-op: resumes where the state says
    same_batches(full[2:], collect(fresh))
    loader.set_epoch(4)
    assert not torch.equal(collect(loader)[0].indices, full[0].indices)


def test_load_state_dict_rejects_a_different_setup(source):
    state = Loader(source, "simclr", 8, size=16, seed=1).state_dict()
    with pytest.raises(DataError, match="global_batch_size"):
        Loader(source, "simclr", 4, size=16, seed=1).load_state_dict(state)


def test_device_augment_path_matches_fused_path(source):
    """The batched device path (used on GPU) and the fused per-sample CPU path agree."""
    spec = [ViewSpec(size=20, count=2, blur_p=0.5, solarize_p=0.3)]
    fused = collect(Loader(source, spec, 8, seed=2, threads=2), 2)
    device = collect(Loader(source, spec, 8, seed=2, threads=2, augment_on_device=True), 2)
    for a, b in zip(fused, device, strict=True):
        assert torch.equal(a.indices, b.indices)
        assert torch.allclose(a.views[0], b.views[0], atol=1e-3)


def test_dtype_and_channels_last(source):
    b = collect(Loader(source, "simclr", 4, size=16, dtype=torch.bfloat16, channels_last=True), 1)
    x = b[0].views[0].flatten(0, 1)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_eval_recipe_is_deterministic_and_covers_everything(source):
    kw = dict(size=16, shuffle=False, drop_last=False, seed=0)
    a = collect(Loader(source, "center_crop_eval", 7, **kw))
    b = collect(
        Loader(
            source, "center_crop_eval", 7, seed=9, **{k: v for k, v in kw.items() if k != "seed"}
        )
    )
    assert torch.equal(torch.cat([x.indices for x in a]), torch.arange(len(source)))
    same_batches(a, b)  # no randomness in the eval recipe


def make_folder_with_bad_files(synthetic_root, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(synthetic_root / "train", root)
    victims = sorted(root.glob("00_*/*.jpg"))[:2]
    data = victims[0].read_bytes()
    victims[0].write_bytes(data[: len(data) // 2])  # truncated JPEG
    victims[1].write_bytes(b"")  # zero bytes
    return root, victims


def test_corrupt_images_are_replaced_counted_and_reported(synthetic_root, tmp_path):
    root, victims = make_folder_with_bad_files(synthetic_root, tmp_path)
    src = ImageFolderSource(root)
    loader = Loader(src, "simclr", 8, size=16, seed=0, max_bad_fraction=0.05, drop_last=False)
    batches = collect(loader)
    assert sum(len(b.indices) for b in batches) == len(src)
    bad = {s.where: s.reason for s in loader.bad_samples}
    assert set(bad) == {str(v) for v in victims}
    assert "truncated" in bad[str(victims[0])] and "empty" in bad[str(victims[1])]
    used = torch.cat([b.indices for b in batches]).numpy()
    victim_idx = {src.paths.index(str(v)) for v in victims}
    assert not victim_idx & set(used.tolist())  # replaced by good samples
    # deterministic replacement
    again = collect(
        Loader(src, "simclr", 8, size=16, seed=0, max_bad_fraction=0.05, drop_last=False)
    )
    same_batches(batches, again)


def test_too_many_bad_samples_stop_with_clear_error(synthetic_root, tmp_path):
    root, _ = make_folder_with_bad_files(synthetic_root, tmp_path)
    loader = Loader(ImageFolderSource(root), "simclr", 8, size=16, max_bad_fraction=0.01)
    with pytest.raises(DataError, match=r"2 of 120 samples .*data\.max_bad_fraction=0\.01"):
        collect(loader)


def test_unreadable_file_is_reported(synthetic_root, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(synthetic_root / "train", root)
    src = ImageFolderSource(root)
    victim = src.paths[3]
    src.paths[3] = victim + ".missing"  # vanished after the scan
    loader = Loader(src, "simclr", 8, size=16, max_bad_fraction=0.5, shuffle=False)
    collect(loader)
    assert [s.reason for s in loader.bad_samples] == ["unreadable (No such file or directory)"]


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        ImageFolderSource(tmp_path / "empty")


def test_too_small_dataset(source):
    with pytest.raises(DataError, match="fewer than one global batch"):
        Loader(source, "simclr", 1000)


def test_replacement_keeps_label_consistent(synthetic_root, tmp_path):
    root, victims = make_folder_with_bad_files(synthetic_root, tmp_path)
    src = ImageFolderSource(root)
    loader = Loader(src, "simclr", 8, size=16, max_bad_fraction=0.05, drop_last=False)
    for b in collect(loader):
        assert np.array_equal(b.labels.numpy(), src.labels[b.indices.numpy()])


@pytest.mark.parametrize("recipe_name", ["simclr", "byol", "dino"])
def test_device_path_keeps_channels_last_in_every_group(source, recipe_name):
    """byol and dino put two specs in one size group; their concatenation stays NHWC."""
    loader = Loader(
        source, recipe_name, 4, size=32, seed=0, threads=1, prefetch=0,
        augment_on_device=True, channels_last=True,
    )  # fmt: skip
    batch = next(iter(loader))
    for v in batch.views:
        assert v.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_device_chain_ignores_a_callers_autocast(source):
    """Iterating inside autocast must not move the chain (convolutions) to bf16."""
    kw = dict(size=32, seed=3, threads=1, prefetch=0, augment_on_device=True)
    plain = next(iter(Loader(source, "byol", 4, **kw)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = next(iter(Loader(source, "byol", 4, **kw)))
    for a, b in zip(plain.views, cast.views, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)
