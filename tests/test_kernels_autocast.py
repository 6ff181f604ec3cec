"""Every loss in ``selfsup.kernels`` computes in its documented precision under autocast.

A caller's ``torch.autocast`` must not reach inside: the tiled NT-Xent used to run its forward
matmuls in bf16 and recompute them in fp32 in backward, so ``exp(s - lse)`` no longer summed
to one (loss off by 1.6e-5 and gradients by 1.5e-4, relative, at 2x96, D 64). fp32 inputs must
give fp32 accuracy (about 1e-7) against the float64 reference whatever the context.
"""

import os

import pytest
import torch

from tests.deps import require  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from selfsup.kernels.contrastive import info_nce, info_nce_reference  # noqa: E402
from selfsup.kernels.sinkhorn import sinkhorn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["reference", "tiled", "triton"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def loss_and_grad(impl, z, alpha, extra, autocast: bool, backward_inside: bool):
    z = z.to(DEVICE).clone().requires_grad_()
    e = None if extra is None else extra.to(DEVICE)
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = info_nce(z, 0.1, extra_negatives=e, relic_alpha=alpha, impl=impl)
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    return loss.detach().cpu(), z.grad.cpu()


# backward() inside the autocast region too, for the custom autograd Functions (tiled and
# triton); the reference is plain autograd, whose backward follows the context backward() runs
# in (torch advises against backward under autocast)
CASES = [
    (impl, alpha, m, inside)
    for impl in IMPLS
    for alpha, m in [(0.0, 0), (0.0, 24), (0.5, 0)]
    for inside in ([False] if impl == "reference" else [False, True])
]


@pytest.mark.parametrize("impl, alpha, m, backward_inside", CASES)
def test_info_nce_under_bf16_autocast_matches_float64(impl, alpha, m, backward_inside):
    if impl == "triton":
        require("triton")
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 96, 64, generator=g)
    extra = torch.randn(m, 64, generator=g) if m else None
    ref_z = z.double().requires_grad_()
    ref = info_nce_reference(
        ref_z, 0.1, extra_negatives=None if extra is None else extra.double(), relic_alpha=alpha
    )
    ref.backward()
    loss, grad = loss_and_grad(impl, z, alpha, extra, True, backward_inside)
    assert loss.dtype == torch.float32
    assert grad.dtype == torch.float32
    # fp32 arithmetic: about 1e-7 (bf16 matmuls gave 1.6e-5 and 1.5e-4 here)
    assert abs(loss.item() - ref.item()) / abs(ref.item()) < 1e-6
    assert rel(grad, ref_z.grad) < 2e-6
    # and exactly what the same call gives outside autocast
    plain_loss, plain_grad = loss_and_grad(impl, z, alpha, extra, False, False)
    assert torch.equal(loss, plain_loss) and torch.equal(grad, plain_grad)


@pytest.mark.parametrize("impl", ["reference", "torch", "triton"])
def test_sinkhorn_under_autocast_is_unchanged(impl):
    if impl == "triton":
        require("triton")
    g = torch.Generator().manual_seed(3)
    scores = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    scores = scores @ torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1).T
    scores = scores.to(DEVICE)
    plain = sinkhorn(scores, 0.05, 3, impl=impl)
    with torch.autocast(scores.device.type, dtype=torch.bfloat16):
        amp = sinkhorn(scores, 0.05, 3, impl=impl)
    assert amp.dtype == torch.float32
    assert torch.equal(plain, amp)
