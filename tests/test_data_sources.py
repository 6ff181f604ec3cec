"""Every data.source kind through the config and the training loop: folder, beton, tar."""

import io
import tarfile
from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.errors import DataError
from selfsup.pipeline.sources import BetonSource, ImageFolderSource, TarShardSource, open_split
from selfsup.trainer.loop import pretrain


@pytest.fixture(scope="module")
def packed(synthetic_root, tmp_path_factory):
    """The small synthetic dataset as train.beton / val.beton (through the CLI)."""
    root = tmp_path_factory.mktemp("beton")
    for split in ("train", "val"):
        args = ["pack", str(synthetic_root / split), str(root / f"{split}.beton")]
        assert main([*args, "--workers", "2", "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def shards(synthetic_root, tmp_path_factory):
    """The small synthetic dataset as webdataset-style tar shards, 2 per split."""
    root = tmp_path_factory.mktemp("tar")
    for split in ("train", "val"):
        src = ImageFolderSource(synthetic_root / split)
        (root / split).mkdir()
        half = (len(src) + 1) // 2
        for shard in range(2):  # in the folder's order: the same samples at the same indices
            with tarfile.open(root / split / f"{shard:04d}.tar", "w") as tar:
                for i in range(shard * half, min(len(src), (shard + 1) * half)):
                    data, label = src.read(i)
                    for ext, payload in (("jpg", data), ("cls", str(label).encode())):
                        info = tarfile.TarInfo(f"{i:06d}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    return root


def _cfg(overrides, source, path):
    return load_config("default", [*overrides, f"data.source={source}", f"data.path={path}"])


def test_open_split_for_each_source(synthetic_root, packed, shards, tiny_overrides):
    folder = open_split(_cfg(tiny_overrides, "folder", synthetic_root).data, "train")
    beton = open_split(_cfg(tiny_overrides, "beton", packed).data, "train")
    tar = open_split(_cfg(tiny_overrides, "tar", shards).data, "train")
    assert isinstance(beton, BetonSource) and isinstance(tar, TarShardSource)
    assert len(folder) == len(beton) == len(tar) == 120
    assert sorted(beton.read(i)[1] for i in range(120)) == sorted(folder.labels.tolist())
    assert sorted(tar.read(i)[1] for i in range(120)) == sorted(folder.labels.tolist())


@pytest.fixture(scope="module")
def folder_run(synthetic_root, tmp_path_factory):
    """One epoch on the image folder, the run the other sources are compared with."""
    from tests.conftest import TINY_OVERRIDES

    runs = tmp_path_factory.mktemp("runs")
    overrides = [*TINY_OVERRIDES, f"run_dir={runs}", "name=folder", "train.epochs=1",
                 "eval.random_init_baseline=false"]  # fmt: skip
    return pretrain(_cfg(overrides, "folder", synthetic_root), progress=False)


@pytest.mark.parametrize("source", ["beton", "tar"])
def test_pretrain_runs_on_each_source(source, packed, shards, tiny_overrides, folder_run):
    from tests.conftest import recompute_knn

    path = packed if source == "beton" else shards
    cfg = _cfg(tiny_overrides, source, path)
    cfg.train.epochs, cfg.eval.random_init_baseline = 1, False
    summary = pretrain(cfg, progress=False)
    assert summary["steps"] == 120 // 16
    # the summary's k-NN is that of the saved backbone on this source's held-out split
    assert summary["knn_top1"] == recompute_knn(cfg, Path(summary["run_dir"]))
    if source == "tar":  # the folder's very bytes in the folder's order: the same run
        assert summary["knn_top1"] == folder_run["knn_top1"]


@pytest.mark.parametrize(
    ("source", "what"),
    [("beton", "train.beton and val.beton"), ("tar", "train/*.tar and val/*.tar shards")],
)
def test_missing_files_name_the_expected_layout(source, what, tmp_path, tiny_overrides):
    with pytest.raises(DataError, match=what.replace("*", r"\*")):
        open_split(_cfg(tiny_overrides, source, tmp_path).data, "train")
    with pytest.raises(DataError, match="data.path is not set"):
        cfg = load_config("default", [*tiny_overrides, f"data.source={source}"])
        cfg.data.path = None
        open_split(cfg.data, "train")
