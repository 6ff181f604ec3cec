"""Parity of the fused Triton NT-Xent kernels with the float64 reference.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set here before the kernel module is
imported: triton reads it when the kernels are decorated), on small sizes."""

import os

import pytest
import torch

from tests.deps import require  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

require("triton")

from selfsup.kernels.contrastive import info_nce  # noqa: E402
from selfsup.kernels.contrastive_triton import info_nce_triton  # noqa: E402
from tests.test_contrastive import check_against_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(fn):
    def wrapped(z, t, *, extra_negatives=None, relic_alpha=0.0):
        e = extra_negatives.to(DEVICE) if extra_negatives is not None else None
        return fn(z.to(DEVICE), t, extra_negatives=e, relic_alpha=relic_alpha).cpu()

    return wrapped


# every block edge case: one sample, ragged tiles, more than one row/column tile, extras
SMALL = [
    (2, 1, 16, 3, 0.0),
    (2, 7, 16, 0, 0.0),
    (4, 7, 32, 5, 0.0),
    (2, 64, 32, 0, 0.0),
    (4, 20, 16, 40, 0.0),
    (2, 9, 16, 4, 0.5),  # ReLIC term: tiled fallback added to the kernel's NT-Xent
]


@pytest.mark.parametrize("v,n,d,m,alpha", SMALL)
def test_triton_matches_reference_fp32(v, n, d, m, alpha):
    check_against_reference(
        on_device(info_nce_triton), v, n, d, m, alpha, torch.float32, 1e-5, seed=v + n + d + m
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v,n,d,m", [(2, 64, 16, 0), (4, 9, 32, 11)])
def test_triton_matches_reference_half(v, n, d, m, dtype):
    check_against_reference(on_device(info_nce_triton), v, n, d, m, 0.0, dtype, 1e-2, seed=n + d)


def test_dispatch_forces_triton():
    z = torch.randn(2, 5, 16, device=DEVICE)
    ref = info_nce(z, 0.2, impl="reference")
    assert torch.allclose(info_nce(z, 0.2, impl="triton"), ref, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("v,n,d,m", [(2, 1024, 128, 0), (4, 300, 256, 4096), (8, 64, 128, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_large_on_gpu(v, n, d, m, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    check_against_reference(on_device(info_nce_triton), v, n, d, m, 0.0, dtype, tol, seed=n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_uses_triton_on_cuda(monkeypatch):
    import selfsup.kernels.contrastive_triton as kt

    calls = []
    monkeypatch.setattr(kt, "info_nce_triton", lambda *a, **k: calls.append(1) or torch.zeros(()))
    info_nce(torch.randn(2, 4, 16, device="cuda"), 0.1)
    assert calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_kernels_really_run_in_the_interpreter():
    from triton.runtime.interpreter import InterpretedFunction

    import selfsup.kernels.contrastive_triton as kt

    assert isinstance(kt._fwd, InterpretedFunction)


def test_kernel_limits_and_precision_choice():
    from selfsup.kernels import contrastive_triton as ct
    from selfsup.kernels import triton_interpreting

    # numpy in the interpreter; compiled fp32 dots take three TF32 passes
    assert ct._precision() == ("ieee" if triton_interpreting() else "tf32x3")
    assert ct._blocks(128, torch.bfloat16) == (64, 64, 128)
    assert ct._blocks(128, torch.float32) == (32, 32, 128)  # fp32 tiles: smaller blocks
    with pytest.raises(ValueError, match="D <= 256"):
        ct._blocks(300, torch.float32)
