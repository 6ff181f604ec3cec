"""The layers depend one way: errors/fields/distributed <- kernels <- pipeline <- trainer <-
config <- trainer.build, trainer.loop, bench, downstream, cli.

Checked on the source (every ``import`` statement, also inside functions) and by importing a
layer in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "selfsup"

LEAVES = {"selfsup.errors", "selfsup.fields", "selfsup.distributed", "selfsup.__version__"}
# module prefix -> the selfsup modules it may import (prefixes)
ALLOWED = {
    "selfsup.errors": set(),
    "selfsup.fields": {"selfsup.errors"},
    "selfsup.distributed": {"selfsup.errors"},
    "selfsup.kernels": LEAVES | {"selfsup.kernels"},
    # the public losses: pure functions over the kernels and the collectives
    "selfsup.losses": LEAVES | {"selfsup.kernels"},
    "selfsup.pipeline": LEAVES | {"selfsup.kernels", "selfsup.pipeline"},
    # the trainer's building blocks; the loop (below) is above the config layer
    "selfsup.trainer": LEAVES
    | {"selfsup.kernels", "selfsup.losses", "selfsup.pipeline", "selfsup.trainer"},
}
TOP = (
    "selfsup.trainer.loop",
    "selfsup.trainer.build",
    "selfsup.config",
    "selfsup.cli",
    "selfsup.bench",
    "selfsup.downstream",
    "selfsup.__main__",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def selfsup_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "selfsup"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "selfsup":
                # `from selfsup.x import y` may import the module selfsup.x.y
                out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def allowed(importer: str, imported: str) -> bool:
    if importer.startswith(TOP):
        return True
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if importer == layer or importer.startswith(layer + "."):
            ok = ALLOWED[layer]
            return any(imported == p or imported.startswith(p + ".") for p in ok)
    return True  # selfsup/__init__, __main__


def test_every_module_imports_only_lower_layers():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        for imported in selfsup_imports(path):
            if not allowed(me, imported):
                bad.append(f"{me} imports {imported}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_layering_check_catches_a_violation():
    assert not allowed("selfsup.kernels.color", "selfsup.pipeline.augment_device")
    assert not allowed("selfsup.trainer.methods.simclr", "selfsup.config.bounded")
    assert not allowed("selfsup.pipeline.loader", "selfsup.trainer.models")
    assert allowed("selfsup.trainer.loop", "selfsup.config.load_config")
    assert allowed("selfsup.pipeline.views", "selfsup.kernels.blur.radius_for_sigma")


@pytest.mark.parametrize(
    "module, absent",
    [
        ("selfsup.kernels.color", ("selfsup.pipeline", "selfsup.trainer", "selfsup.config")),
        ("selfsup.kernels.contrastive", ("selfsup.pipeline", "selfsup.trainer", "selfsup.config")),
        ("selfsup.kernels.sinkhorn", ("selfsup.pipeline", "selfsup.trainer", "selfsup.config")),
        ("selfsup.pipeline", ("selfsup.trainer", "selfsup.config", "triton")),
        ("selfsup.trainer.methods", ("selfsup.config", "selfsup.trainer.loop")),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(module, absent):
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.startswith({absent!r})]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"importing {module} loaded {r.stdout.strip()} {r.stderr[-2000:]}"
