"""Parity of the fused colour kernel (selfsup/kernels/color.py) with its torch reference.

Triton 3.x reads TRITON_INTERPRET when ``triton.jit`` decorates a function, i.e. when
``selfsup.kernels.color`` is first imported, so setting it inside a test that shares a
process with others is unreliable. ``test_kernels_under_interpreter`` therefore reruns this
file in a subprocess with TRITON_INTERPRET=1, where the ``interp`` tests run the Triton
kernels on CPU tensors; in the parent process those tests are skipped (they run directly
when the whole suite is started with TRITON_INTERPRET=1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.kernels.layout import NPARAM, P_SOLARIZE
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.views import ViewSpec
from tests.deps import require  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(
    not INTERPRETED, reason="runs in test_kernels_under_interpreter's TRITON_INTERPRET=1 child"
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def test_kernels_under_interpreter():
    require("triton")
    if INTERPRETED:
        pytest.skip("already interpreted: the interp tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " skipped" in r.stdout, r.stdout[-2000:]


def _spec(size: int = 16, **kw) -> ViewSpec:
    # Every probability ~0.5 so each combination of ops and orders turns up in a batch.
    base = dict(size=size, jitter_p=0.5, grayscale_p=0.5, solarize_p=0.5, blur_p=0.0)
    base.update(mean=MEAN, std=STD, **kw)
    return ViewSpec(**base)


def _batch(spec: ViewSpec, b: int, seed: int, channels_last: bool = False):
    rng = np.random.default_rng(seed)
    s = spec.size
    params = torch.from_numpy(np.stack([draw_params(spec, rng, s + 8, s + 8) for _ in range(b)]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, params


def _near_solarize_threshold(x, params, masks=None) -> torch.Tensor:
    """Pixels whose value before solarize is within rounding of 0.5 (may flip either way)."""
    from selfsup.kernels.color import color_jitter_torch

    p = params.clone()
    p[:, P_SOLARIZE] = 0
    y = color_jitter_torch(x, p, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.float32, False, masks)
    return (y - 0.5).abs() < 1e-4


def _assert_close(out, ref, skip=None):
    """Within 1/255 per pixel before normalisation (difference scaled back by std)."""
    std = torch.tensor(STD).view(1, 3, 1, 1)
    err = (out.float() - ref.float()).abs() * std
    if skip is not None:
        err = torch.where(skip, 0.0, err)
    assert err.max().item() <= 1 / 255, f"max error {err.max().item() * 255:.3f}/255"


@interp
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_fused_matches_torch(out_dtype, channels_last):
    from selfsup.kernels.color import color_jitter_torch
    from selfsup.kernels.color_triton import color_jitter_fused

    spec = _spec()
    seed = DTYPES.index(out_dtype) * 2 + channels_last
    x, params = _batch(spec, 6, seed, channels_last=channels_last)
    out = color_jitter_fused(x, params, MEAN, STD, out_dtype, channels_last)
    ref = color_jitter_torch(x, params, MEAN, STD, out_dtype, channels_last)
    assert out.dtype == out_dtype and out.shape == x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    _assert_close(out, ref, _near_solarize_threshold(x, params))
    # fp32 is tight, not just within the 1/255 budget
    if out_dtype == torch.float32:
        skip = _near_solarize_threshold(x, params)
        assert torch.where(skip, 0.0, (out - ref).abs()).max().item() < 1e-4


@interp
def test_every_op_order_and_flag_combination_seen():
    # Many samples, all on, every order: the contrast mean before/after each other op.
    from selfsup.kernels.color import color_jitter_torch
    from selfsup.kernels.color_triton import color_jitter_fused

    spec = _spec(jitter_p=1.0)
    x, params = _batch(spec, 24, seed=11)
    assert len({tuple(r) for r in params[:, 10:14].tolist()}) >= 12
    out = color_jitter_fused(x, params, MEAN, STD)
    ref = color_jitter_torch(x, params, MEAN, STD)
    _assert_close(out, ref, _near_solarize_threshold(x, params))


@interp
def test_odd_sizes_and_strided_input():
    from selfsup.kernels.color import color_jitter_torch
    from selfsup.kernels.color_triton import color_jitter_fused

    spec = _spec(size=13)
    x, params = _batch(spec, 5, seed=3)
    big = torch.zeros(5, 3, 20, 30, dtype=torch.uint8)
    big[:, :, 2:15, 5:18] = x
    view = big[:, :, 2:15, 5:18]  # neither NCHW- nor NHWC-contiguous
    out = color_jitter_fused(view, params, MEAN, STD, torch.float16, True)
    ref = color_jitter_torch(x, params, MEAN, STD, torch.float16, True)
    _assert_close(out, ref, _near_solarize_threshold(x, params))


@interp
def test_masks_blend_before_the_chain():
    from selfsup.kernels.color import color_jitter_torch
    from selfsup.kernels.color_triton import color_jitter_fused

    spec = _spec(mask_p=0.5, mask_fill="random")
    x, params = _batch(spec, 6, seed=5)
    g = torch.Generator().manual_seed(5)
    masks = torch.randint(0, 256, (6, 16, 16), dtype=torch.uint8, generator=g)
    out = color_jitter_fused(x, params, MEAN, STD, masks=masks)
    ref = color_jitter_torch(x, params, MEAN, STD, masks=masks)
    _assert_close(out, ref, _near_solarize_threshold(x, params, masks))


@interp
@pytest.mark.parametrize("blur_p", [0.0, 0.5])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_augment_batch_uses_fused_path(monkeypatch, blur_p, out_dtype):
    # The CUDA dispatch in augment_batch, forced on for CPU tensors under the interpreter:
    # blur_p 0 runs the one fused pass, blur_p > 0 the head kernel -> torch blur -> tail.
    import selfsup.kernels.color_triton as fused
    from selfsup.pipeline import augment_device

    spec = _spec(blur_p=blur_p, mask_p=0.5)
    x, params = _batch(spec, 6, seed=7, channels_last=True)
    ref = augment_device.augment_batch(x, params, spec, out_dtype, True, fused=False)
    calls = []
    for name in ("color_jitter_fused", "color_head_fused", "color_tail_fused"):
        real = getattr(fused, name)

        def spy(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(fused, name, spy)
    monkeypatch.setattr(augment_device, "_use_fused", lambda t: True)
    out = augment_device.augment_batch(x, params, spec, out_dtype, True)
    want = ["color_jitter_fused"] if blur_p == 0 else ["color_head_fused", "color_tail_fused"]
    assert calls == want, "augment_batch did not take the fused path"
    assert out.dtype == out_dtype and out.is_contiguous(memory_format=torch.channels_last)
    _assert_close(out, ref, _near_solarize_threshold(x, params) if blur_p == 0 else None)


@interp
def test_head_and_tail_match_torch():
    from selfsup.kernels import color, color_triton

    spec = _spec()
    x, params = _batch(spec, 6, seed=9)
    head = color_triton.color_head_fused(x, params)
    head_ref = color.color_head_torch(x, params)
    assert head.dtype == torch.float32
    assert (head - head_ref).abs().max().item() < 1e-4
    out = color_triton.color_tail_fused(head_ref, params, MEAN, STD, torch.float16, True)
    ref = color.color_tail_torch(head_ref, params, MEAN, STD, torch.float16, True)
    _assert_close(out, ref)
    # the tail also takes uint8 views directly (no colour stage at all)
    out = color_triton.color_tail_fused(x, params, MEAN, STD, torch.float32, False)
    ref = color.color_tail_torch(x, params, MEAN, STD, torch.float32, False)
    assert (out - ref).abs().max().item() < 1e-5


@interp
def test_bad_inputs_raise():
    from selfsup.kernels.color_triton import color_jitter_fused

    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        color_jitter_fused(x.float(), torch.zeros(2, NPARAM), MEAN, STD)
    with pytest.raises(ValueError, match="params"):
        color_jitter_fused(x, torch.zeros(3, NPARAM), MEAN, STD)
    with pytest.raises(ValueError, match="out_dtype"):
        color_jitter_fused(x, torch.zeros(2, NPARAM), MEAN, STD, torch.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_fused_matches_torch_cuda_full_size(out_dtype, channels_last):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    require("triton")
    from selfsup.kernels.color import color_jitter_torch
    from selfsup.kernels.color_triton import color_jitter_fused

    spec = _spec(size=224)
    x, params = _batch(spec, 64, seed=1, channels_last=channels_last)
    x, params = x.cuda(), params.cuda()
    out = color_jitter_fused(x, params, MEAN, STD, out_dtype, channels_last)
    ref = color_jitter_torch(x, params, MEAN, STD, out_dtype, channels_last)
    skip = _near_solarize_threshold(x, params).cpu()
    _assert_close(out.cpu(), ref.cpu(), skip)
