"""How the Triton kernels meet the runtime: the launch device, and Triton versions."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest
import torch

from selfsup import kernels
from tests.deps import require

KERNELS = Path(kernels.__file__).parent


def test_launch_guard_enters_the_tensors_cuda_device(monkeypatch):
    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    fake = types.SimpleNamespace(device=torch.device("cuda", 1))  # no GPU needed
    with kernels.launch_guard(fake):
        pass
    assert entered == [torch.device("cuda", 1)]
    monkeypatch.setattr(kernels, "triton_interpreting", lambda: True)
    with kernels.launch_guard(torch.zeros(1)):  # CPU (the interpreter): nothing to enter
        pass
    assert entered == [torch.device("cuda", 1)]


def test_compiled_kernels_refuse_cpu_tensors(monkeypatch):
    """Without the interpreter a CPU tensor would reach a compiled launch and fail inside
    Triton's driver ("Pointer argument cannot be accessed"): refused first, saying why."""
    monkeypatch.setattr(kernels, "triton_interpreting", lambda: False)
    with pytest.raises(ValueError, match="need CUDA tensors.*TRITON_INTERPRET=1"):
        with kernels.launch_guard(torch.zeros(1)):
            pass


def _launches_outside_a_guard(path: Path) -> list[str]:
    """``kernel[grid](...)`` calls not lexically inside ``with launch_guard(...)``."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(i.context_expr, ast.Call)
            and getattr(i.context_expr.func, "id", None) == "launch_guard"
            for i in node.items
        ):
            guarded |= {id(n) for n in ast.walk(node)}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
            if id(node) not in guarded:
                bad.append(f"{path.name}:{node.lineno}")
    return bad


@pytest.mark.parametrize("name", ["contrastive_triton.py", "sinkhorn_triton.py", "color_triton.py"])
def test_every_triton_launch_runs_under_launch_guard(name):
    path = KERNELS / name
    launches = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Subscript)]  # fmt: skip
    assert launches, "no kernel launch found: the check would pass vacuously"
    assert _launches_outside_a_guard(path) == []


def test_the_guard_check_sees_an_unguarded_launch(tmp_path):
    src = tmp_path / "k.py"
    src.write_text("def f(k, g):\n    k[g](1)\n    with launch_guard(x):\n        k[g](2)\n")
    assert _launches_outside_a_guard(src) == ["k.py:2"]


@pytest.mark.gpu
def test_a_batch_on_the_second_gpu_while_the_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from selfsup.kernels.contrastive import info_nce

    torch.cuda.set_device(0)
    z = torch.randn(2, 64, 32, device="cuda:1", requires_grad=True)
    loss = info_nce(z, 0.1, impl="triton")
    loss.backward()
    ref = info_nce(z.detach().double().cpu(), 0.1, impl="reference")
    assert torch.allclose(loss.double().cpu(), ref, rtol=1e-5)


def test_interpreter_flag_without_triton_knobs(monkeypatch):
    """Triton before 3.4 has no ``triton.knobs``: the environment variable decides."""
    triton = require("triton")
    monkeypatch.delattr(triton, "knobs", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.triton_interpreting() is True
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.triton_interpreting() is False
