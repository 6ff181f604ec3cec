"""`pip install .` works: a wheel built from the repository, installed into a fresh venv, runs
the built-in demo config from another directory (its configs ship inside the package).

The fresh venv gets torch through the same constraints file as ``make`` (the Makefile passes
``SELFSUP_PIP_CONSTRAINTS``: the local CPU wheel on machines without a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo_config(tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)])
    (wheel,) = wheels.glob("selfsup-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "selfsup/configs/default.yaml" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q"]
    if os.environ.get("SELFSUP_PIP_CONSTRAINTS"):
        pip += ["-c", os.environ["SELFSUP_PIP_CONSTRAINTS"]]
    run([*pip, str(wheel)])

    elsewhere = tmp_path / "elsewhere"  # neither the repository nor its parent
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["SELFSUP_CACHE"] = str(tmp_path / "cache")
    selfsup = str(env_dir / "bin" / "selfsup")
    listed = run([selfsup, "list", "configs"], cwd=elsewhere, env=env).stdout
    names = [line.split()[0] for line in listed.splitlines()]
    assert "default" in names and "simclr_imagenet" in names  # the configs shipped in the wheel
    run([selfsup, "pretrain", "train.max_steps=2", "eval.knn=false"], cwd=elsewhere, env=env)
    where = run([str(py), "-c", "import selfsup; print(selfsup.__file__)"], cwd=elsewhere, env=env)
    assert str(env_dir) in where.stdout  # the installed copy, not the repository
    (summary,) = (elsewhere / "runs").glob("simclr-*/summary.json")
    assert json.loads(summary.read_text())["steps"] == 2
