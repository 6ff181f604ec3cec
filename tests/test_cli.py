import subprocess
import sys

import pytest

from selfsup.cli import main


def run_main(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, pattern):
    import re

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def test_missing_data_path(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "pretrain", "data.source=folder", f"data.path={tmp_path / 'nope'}",
        f"run_dir={tmp_path}",
    )  # fmt: skip
    assert_one_line_error(code, err, r"data\.path .*nope.* does not exist")


def test_folder_source_without_path(capsys, tmp_path):
    code, _, err = run_main(capsys, "pretrain", "data.source=folder", f"run_dir={tmp_path}")
    assert_one_line_error(code, err, r"data\.path is not set")


def test_unreadable_and_invalid_configs(capsys, tmp_path):
    code, _, err = run_main(capsys, "pretrain", "--config", str(tmp_path / "none.yaml"))
    assert_one_line_error(code, err, r"config file .*none\.yaml.* not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [\n")
    code, _, err = run_main(capsys, "pretrain", "--config", str(bad))
    assert_one_line_error(code, err, r"bad\.yaml: not valid YAML at line")
    bad.write_text("train: {epochs: -2}\n")
    code, _, err = run_main(capsys, "pretrain", "--config", str(bad))
    assert_one_line_error(code, err, r"train\.epochs must be >= 1")
    unreadable = tmp_path / "dir.yaml"
    unreadable.mkdir()
    code, _, err = run_main(capsys, "pretrain", "--config", str(unreadable))
    assert_one_line_error(code, err, r"cannot read config file")


def test_unknown_method_and_model(capsys, tmp_path):
    code, _, err = run_main(capsys, "pretrain", "method.name=simsiam")
    assert_one_line_error(
        code, err, r"unknown method 'simsiam' in method.name; choose one of .*simclr"
    )
    code, _, err = run_main(capsys, "pretrain", "model.arch=resnet7", f"run_dir={tmp_path}")
    assert_one_line_error(
        code, err, r"unknown model 'resnet7' in model.arch; choose one of .*resnet50"
    )


def test_bad_override_and_resume_errors(capsys, tmp_path):
    code, _, err = run_main(capsys, "pretrain", "train.epochs")
    assert_one_line_error(code, err, r"must look like key\.sub=value")
    code, _, err = run_main(capsys, "pretrain", "--resume", str(tmp_path))
    assert_one_line_error(code, err, r"is not a run directory")
    code, _, err = run_main(capsys, "pretrain", "--resume", str(tmp_path), "train.epochs=3")
    assert_one_line_error(code, err, r"--resume continues a run with its saved config")


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "selfsup", "pretrain", "optim.name=adam"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().startswith("selfsup: error:") and "Traceback" not in r.stderr
    assert "optim.name must be one of 'lars', 'larc', 'sgd', 'adamw'" in r.stderr


def test_help_documents_commands():
    r = subprocess.run(
        [sys.executable, "-m", "selfsup", "pretrain", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--resume" in r.stdout and "key.sub=value" in r.stdout


@pytest.mark.parametrize("arch", ["resnet18"])
def test_corrupt_image_in_folder_run_is_reported(capsys, synthetic_root, tmp_path, arch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "train").glob("03_*/*.jpg"))[0]
    victim.write_bytes(b"\x00garbage" * 10)
    from tests.conftest import TINY_OVERRIDES

    code, out, err = run_main(
        capsys, "pretrain", "--no-progress", *TINY_OVERRIDES, "data.source=folder",
        f"data.path={root}", f"model.arch={arch}", "train.epochs=1", f"run_dir={tmp_path}",
        "name=r", "data.max_bad_fraction=0.05",
    )  # fmt: skip
    assert code == 0, err
    assert f"skipped bad sample {victim}: not a decodable image" in err
    assert "bad samples skipped: 1" in out


def test_bench_loader_through_the_cli(synthetic_root, tmp_path, capsys):
    import json

    from selfsup.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "loader", "--data", str(synthetic_root / "train"), "--size", "32"]
    args += ["--batch-size", "8", "--batches", "1", "--warmup", "1", "--repeats", "1"]
    args += ["--workers", "1", "--no-progress", "--json", str(out)]
    assert main(args) == 0
    assert "ratio selfsup / reference" in capsys.readouterr().out
    summary = json.loads(out.read_text())["summary"]
    assert summary["selfsup"]["images_per_sec"] > 0 and summary["reference"]["images_per_sec"] > 0


def test_bench_loader_missing_data_is_one_line_error(tmp_path, capsys):
    from selfsup.cli import main

    assert main(["bench", "loader", "--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfsup: error:") and "Traceback" not in err


@pytest.mark.parametrize("what", ["recipes", "methods", "models", "configs"])
def test_list_prints_every_registered_name(capsys, what):
    from selfsup.config import CONFIG_DIR
    from selfsup.pipeline.recipes import RECIPES
    from selfsup.trainer.methods import METHODS
    from selfsup.trainer.models import MODELS

    names = {
        "recipes": set(RECIPES),
        "methods": set(METHODS),
        "models": set(MODELS),
        "configs": {p.stem for p in CONFIG_DIR.glob("*.yaml")},
    }[what]
    code, out, _ = run_main(capsys, "list", what)
    assert code == 0
    lines = out.strip().splitlines()
    assert {line.split()[0] for line in lines} == names
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each with what it is


def test_list_recipe_lines_describe_the_views(capsys):
    _, out, _ = run_main(capsys, "list", "recipes")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "2x224, crop (0.14, 1.0), bilinear" in lines["swav"]
    assert "6x96" in lines["swav"] and "mask 0.1" in lines["relicv2"]
    assert lines["center_crop_eval"].split(maxsplit=1)[1] == "1x224, center, bilinear"
