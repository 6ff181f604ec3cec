"""ResNet family: torchvision-identical state_dict names and shapes, options, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.trainer.models import MODELS, BasicBlock, Bottleneck, ResNet, build_model

# Ground truth: the state_dict keys of torchvision's resnet18 / resnet50 (num_classes=1000), in
# order, written out from the architecture (torchvision v1.5). Not generated from our model.

RESNET18_KEYS = """
conv1.weight bn1.weight bn1.bias bn1.running_mean bn1.running_var bn1.num_batches_tracked
layer1.0.conv1.weight layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.bn1.running_mean
layer1.0.bn1.running_var layer1.0.bn1.num_batches_tracked layer1.0.conv2.weight
layer1.0.bn2.weight layer1.0.bn2.bias layer1.0.bn2.running_mean layer1.0.bn2.running_var
layer1.0.bn2.num_batches_tracked layer1.1.conv1.weight layer1.1.bn1.weight layer1.1.bn1.bias
layer1.1.bn1.running_mean layer1.1.bn1.running_var layer1.1.bn1.num_batches_tracked
layer1.1.conv2.weight layer1.1.bn2.weight layer1.1.bn2.bias layer1.1.bn2.running_mean
layer1.1.bn2.running_var layer1.1.bn2.num_batches_tracked layer2.0.conv1.weight
layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.bn1.running_mean layer2.0.bn1.running_var
layer2.0.bn1.num_batches_tracked layer2.0.conv2.weight layer2.0.bn2.weight layer2.0.bn2.bias
layer2.0.bn2.running_mean layer2.0.bn2.running_var layer2.0.bn2.num_batches_tracked
layer2.0.downsample.0.weight layer2.0.downsample.1.weight layer2.0.downsample.1.bias
layer2.0.downsample.1.running_mean layer2.0.downsample.1.running_var
layer2.0.downsample.1.num_batches_tracked layer2.1.conv1.weight layer2.1.bn1.weight
layer2.1.bn1.bias layer2.1.bn1.running_mean layer2.1.bn1.running_var
layer2.1.bn1.num_batches_tracked layer2.1.conv2.weight layer2.1.bn2.weight layer2.1.bn2.bias
layer2.1.bn2.running_mean layer2.1.bn2.running_var layer2.1.bn2.num_batches_tracked
layer3.0.conv1.weight layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.bn1.running_mean
layer3.0.bn1.running_var layer3.0.bn1.num_batches_tracked layer3.0.conv2.weight
layer3.0.bn2.weight layer3.0.bn2.bias layer3.0.bn2.running_mean layer3.0.bn2.running_var
layer3.0.bn2.num_batches_tracked layer3.0.downsample.0.weight layer3.0.downsample.1.weight
layer3.0.downsample.1.bias layer3.0.downsample.1.running_mean
layer3.0.downsample.1.running_var layer3.0.downsample.1.num_batches_tracked
layer3.1.conv1.weight layer3.1.bn1.weight layer3.1.bn1.bias layer3.1.bn1.running_mean
layer3.1.bn1.running_var layer3.1.bn1.num_batches_tracked layer3.1.conv2.weight
layer3.1.bn2.weight layer3.1.bn2.bias layer3.1.bn2.running_mean layer3.1.bn2.running_var
layer3.1.bn2.num_batches_tracked layer4.0.conv1.weight layer4.0.bn1.weight layer4.0.bn1.bias
layer4.0.bn1.running_mean layer4.0.bn1.running_var layer4.0.bn1.num_batches_tracked
layer4.0.conv2.weight layer4.0.bn2.weight layer4.0.bn2.bias layer4.0.bn2.running_mean
layer4.0.bn2.running_var layer4.0.bn2.num_batches_tracked layer4.0.downsample.0.weight
layer4.0.downsample.1.weight layer4.0.downsample.1.bias layer4.0.downsample.1.running_mean
layer4.0.downsample.1.running_var layer4.0.downsample.1.num_batches_tracked
layer4.1.conv1.weight layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.bn1.running_mean
layer4.1.bn1.running_var layer4.1.bn1.num_batches_tracked layer4.1.conv2.weight
layer4.1.bn2.weight layer4.1.bn2.bias layer4.1.bn2.running_mean layer4.1.bn2.running_var
layer4.1.bn2.num_batches_tracked fc.weight fc.bias
""".split()

RESNET50_KEYS = """
conv1.weight bn1.weight bn1.bias bn1.running_mean bn1.running_var bn1.num_batches_tracked
layer1.0.conv1.weight layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.bn1.running_mean
layer1.0.bn1.running_var layer1.0.bn1.num_batches_tracked layer1.0.conv2.weight
layer1.0.bn2.weight layer1.0.bn2.bias layer1.0.bn2.running_mean layer1.0.bn2.running_var
layer1.0.bn2.num_batches_tracked layer1.0.conv3.weight layer1.0.bn3.weight layer1.0.bn3.bias
layer1.0.bn3.running_mean layer1.0.bn3.running_var layer1.0.bn3.num_batches_tracked
layer1.0.downsample.0.weight layer1.0.downsample.1.weight layer1.0.downsample.1.bias
layer1.0.downsample.1.running_mean layer1.0.downsample.1.running_var
layer1.0.downsample.1.num_batches_tracked layer1.1.conv1.weight layer1.1.bn1.weight
layer1.1.bn1.bias layer1.1.bn1.running_mean layer1.1.bn1.running_var
layer1.1.bn1.num_batches_tracked layer1.1.conv2.weight layer1.1.bn2.weight layer1.1.bn2.bias
layer1.1.bn2.running_mean layer1.1.bn2.running_var layer1.1.bn2.num_batches_tracked
layer1.1.conv3.weight layer1.1.bn3.weight layer1.1.bn3.bias layer1.1.bn3.running_mean
layer1.1.bn3.running_var layer1.1.bn3.num_batches_tracked layer1.2.conv1.weight
layer1.2.bn1.weight layer1.2.bn1.bias layer1.2.bn1.running_mean layer1.2.bn1.running_var
layer1.2.bn1.num_batches_tracked layer1.2.conv2.weight layer1.2.bn2.weight layer1.2.bn2.bias
layer1.2.bn2.running_mean layer1.2.bn2.running_var layer1.2.bn2.num_batches_tracked
layer1.2.conv3.weight layer1.2.bn3.weight layer1.2.bn3.bias layer1.2.bn3.running_mean
layer1.2.bn3.running_var layer1.2.bn3.num_batches_tracked layer2.0.conv1.weight
layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.bn1.running_mean layer2.0.bn1.running_var
layer2.0.bn1.num_batches_tracked layer2.0.conv2.weight layer2.0.bn2.weight layer2.0.bn2.bias
layer2.0.bn2.running_mean layer2.0.bn2.running_var layer2.0.bn2.num_batches_tracked
layer2.0.conv3.weight layer2.0.bn3.weight layer2.0.bn3.bias layer2.0.bn3.running_mean
layer2.0.bn3.running_var layer2.0.bn3.num_batches_tracked layer2.0.downsample.0.weight
layer2.0.downsample.1.weight layer2.0.downsample.1.bias layer2.0.downsample.1.running_mean
layer2.0.downsample.1.running_var layer2.0.downsample.1.num_batches_tracked
layer2.1.conv1.weight layer2.1.bn1.weight layer2.1.bn1.bias layer2.1.bn1.running_mean
layer2.1.bn1.running_var layer2.1.bn1.num_batches_tracked layer2.1.conv2.weight
layer2.1.bn2.weight layer2.1.bn2.bias layer2.1.bn2.running_mean layer2.1.bn2.running_var
layer2.1.bn2.num_batches_tracked layer2.1.conv3.weight layer2.1.bn3.weight layer2.1.bn3.bias
layer2.1.bn3.running_mean layer2.1.bn3.running_var layer2.1.bn3.num_batches_tracked
layer2.2.conv1.weight layer2.2.bn1.weight layer2.2.bn1.bias layer2.2.bn1.running_mean
layer2.2.bn1.running_var layer2.2.bn1.num_batches_tracked layer2.2.conv2.weight
layer2.2.bn2.weight layer2.2.bn2.bias layer2.2.bn2.running_mean layer2.2.bn2.running_var
layer2.2.bn2.num_batches_tracked layer2.2.conv3.weight layer2.2.bn3.weight layer2.2.bn3.bias
layer2.2.bn3.running_mean layer2.2.bn3.running_var layer2.2.bn3.num_batches_tracked
layer2.3.conv1.weight layer2.3.bn1.weight layer2.3.bn1.bias layer2.3.bn1.running_mean
layer2.3.bn1.running_var layer2.3.bn1.num_batches_tracked layer2.3.conv2.weight
layer2.3.bn2.weight layer2.3.bn2.bias layer2.3.bn2.running_mean layer2.3.bn2.running_var
layer2.3.bn2.num_batches_tracked layer2.3.conv3.weight layer2.3.bn3.weight layer2.3.bn3.bias
layer2.3.bn3.running_mean layer2.3.bn3.running_var layer2.3.bn3.num_batches_tracked
layer3.0.conv1.weight layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.bn1.running_mean
layer3.0.bn1.running_var layer3.0.bn1.num_batches_tracked layer3.0.conv2.weight
layer3.0.bn2.weight layer3.0.bn2.bias layer3.0.bn2.running_mean layer3.0.bn2.running_var
layer3.0.bn2.num_batches_tracked layer3.0.conv3.weight layer3.0.bn3.weight layer3.0.bn3.bias
layer3.0.bn3.running_mean layer3.0.bn3.running_var layer3.0.bn3.num_batches_tracked
layer3.0.downsample.0.weight layer3.0.downsample.1.weight layer3.0.downsample.1.bias
layer3.0.downsample.1.running_mean layer3.0.downsample.1.running_var
layer3.0.downsample.1.num_batches_tracked layer3.1.conv1.weight layer3.1.bn1.weight
layer3.1.bn1.bias layer3.1.bn1.running_mean layer3.1.bn1.running_var
layer3.1.bn1.num_batches_tracked layer3.1.conv2.weight layer3.1.bn2.weight layer3.1.bn2.bias
layer3.1.bn2.running_mean layer3.1.bn2.running_var layer3.1.bn2.num_batches_tracked
layer3.1.conv3.weight layer3.1.bn3.weight layer3.1.bn3.bias layer3.1.bn3.running_mean
layer3.1.bn3.running_var layer3.1.bn3.num_batches_tracked layer3.2.conv1.weight
layer3.2.bn1.weight layer3.2.bn1.bias layer3.2.bn1.running_mean layer3.2.bn1.running_var
layer3.2.bn1.num_batches_tracked layer3.2.conv2.weight layer3.2.bn2.weight layer3.2.bn2.bias
layer3.2.bn2.running_mean layer3.2.bn2.running_var layer3.2.bn2.num_batches_tracked
layer3.2.conv3.weight layer3.2.bn3.weight layer3.2.bn3.bias layer3.2.bn3.running_mean
layer3.2.bn3.running_var layer3.2.bn3.num_batches_tracked layer3.3.conv1.weight
layer3.3.bn1.weight layer3.3.bn1.bias layer3.3.bn1.running_mean layer3.3.bn1.running_var
layer3.3.bn1.num_batches_tracked layer3.3.conv2.weight layer3.3.bn2.weight layer3.3.bn2.bias
layer3.3.bn2.running_mean layer3.3.bn2.running_var layer3.3.bn2.num_batches_tracked
layer3.3.conv3.weight layer3.3.bn3.weight layer3.3.bn3.bias layer3.3.bn3.running_mean
layer3.3.bn3.running_var layer3.3.bn3.num_batches_tracked layer3.4.conv1.weight
layer3.4.bn1.weight layer3.4.bn1.bias layer3.4.bn1.running_mean layer3.4.bn1.running_var
layer3.4.bn1.num_batches_tracked layer3.4.conv2.weight layer3.4.bn2.weight layer3.4.bn2.bias
layer3.4.bn2.running_mean layer3.4.bn2.running_var layer3.4.bn2.num_batches_tracked
layer3.4.conv3.weight layer3.4.bn3.weight layer3.4.bn3.bias layer3.4.bn3.running_mean
layer3.4.bn3.running_var layer3.4.bn3.num_batches_tracked layer3.5.conv1.weight
layer3.5.bn1.weight layer3.5.bn1.bias layer3.5.bn1.running_mean layer3.5.bn1.running_var
layer3.5.bn1.num_batches_tracked layer3.5.conv2.weight layer3.5.bn2.weight layer3.5.bn2.bias
layer3.5.bn2.running_mean layer3.5.bn2.running_var layer3.5.bn2.num_batches_tracked
layer3.5.conv3.weight layer3.5.bn3.weight layer3.5.bn3.bias layer3.5.bn3.running_mean
layer3.5.bn3.running_var layer3.5.bn3.num_batches_tracked layer4.0.conv1.weight
layer4.0.bn1.weight layer4.0.bn1.bias layer4.0.bn1.running_mean layer4.0.bn1.running_var
layer4.0.bn1.num_batches_tracked layer4.0.conv2.weight layer4.0.bn2.weight layer4.0.bn2.bias
layer4.0.bn2.running_mean layer4.0.bn2.running_var layer4.0.bn2.num_batches_tracked
layer4.0.conv3.weight layer4.0.bn3.weight layer4.0.bn3.bias layer4.0.bn3.running_mean
layer4.0.bn3.running_var layer4.0.bn3.num_batches_tracked layer4.0.downsample.0.weight
layer4.0.downsample.1.weight layer4.0.downsample.1.bias layer4.0.downsample.1.running_mean
layer4.0.downsample.1.running_var layer4.0.downsample.1.num_batches_tracked
layer4.1.conv1.weight layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.bn1.running_mean
layer4.1.bn1.running_var layer4.1.bn1.num_batches_tracked layer4.1.conv2.weight
layer4.1.bn2.weight layer4.1.bn2.bias layer4.1.bn2.running_mean layer4.1.bn2.running_var
layer4.1.bn2.num_batches_tracked layer4.1.conv3.weight layer4.1.bn3.weight layer4.1.bn3.bias
layer4.1.bn3.running_mean layer4.1.bn3.running_var layer4.1.bn3.num_batches_tracked
layer4.2.conv1.weight layer4.2.bn1.weight layer4.2.bn1.bias layer4.2.bn1.running_mean
layer4.2.bn1.running_var layer4.2.bn1.num_batches_tracked layer4.2.conv2.weight
layer4.2.bn2.weight layer4.2.bn2.bias layer4.2.bn2.running_mean layer4.2.bn2.running_var
layer4.2.bn2.num_batches_tracked layer4.2.conv3.weight layer4.2.bn3.weight layer4.2.bn3.bias
layer4.2.bn3.running_mean layer4.2.bn3.running_var layer4.2.bn3.num_batches_tracked
fc.weight fc.bias
""".split()


# torchvision's published parameter counts (1000 classes) and state_dict sizes.
TORCHVISION = {
    # name: (parameters, state_dict entries, parameter tensors, feature dim)
    "resnet18": (11_689_512, 122, 62, 512),
    "resnet34": (21_797_672, 218, 110, 512),
    "resnet50": (25_557_032, 320, 161, 2048),
    "resnet101": (44_549_160, 626, 314, 2048),
    "resnet152": (60_192_808, 932, 467, 2048),
}
NAMES = sorted(MODELS)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny batches gain nothing from intra-op threads, and OpenMP barriers slow down badly when
    # the machine is busy (measured: 10x on a loaded 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta(name: str, **kwargs) -> ResNet:
    """A model on the meta device: names and shapes without the cost of allocating weights."""
    with torch.device("meta"):
        return build_model(name, **kwargs)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registry_lists_every_model() -> None:
    assert set(MODELS) == set(TORCHVISION)


@pytest.mark.parametrize(
    ("name", "expected"), [("resnet18", RESNET18_KEYS), ("resnet50", RESNET50_KEYS)]
)
def test_state_dict_keys_equal_torchvision(name: str, expected: list[str]) -> None:
    assert list(_meta(name, num_classes=1000).state_dict()) == expected
    # Without a classifier only the fc entries disappear.
    assert list(_meta(name).state_dict()) == expected[:-2]


def test_key_shapes_equal_torchvision() -> None:
    r50, r18 = _shapes(_meta("resnet50", num_classes=1000)), _shapes(_meta("resnet18"))
    assert r50["conv1.weight"] == (64, 3, 7, 7)
    assert r50["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert r50["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert r50["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert r50["layer4.2.bn3.running_var"] == (2048,)
    assert r50["layer4.2.bn3.num_batches_tracked"] == ()
    assert r50["fc.weight"] == (1000, 2048)
    assert r18["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert r18["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert r18["layer4.1.conv2.weight"] == (512, 512, 3, 3)


def test_stride_sits_on_the_3x3_conv_in_bottleneck() -> None:
    block = _meta("resnet50").layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample is not None and block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_counts_match_torchvision(name: str) -> None:
    n_params, n_entries, n_tensors, dim = TORCHVISION[name]
    model = _meta(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(model.state_dict()) == n_entries
    assert len(list(model.parameters())) == n_tensors
    assert model.num_features == dim


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name: str) -> None:
    dim = TORCHVISION[name][3]
    x = torch.randn(2, 3, 32, 32)
    backbone = build_model(name).eval()
    assert isinstance(backbone, ResNet) and isinstance(backbone.fc, nn.Identity)
    with torch.no_grad():
        assert backbone(x).shape == (2, dim)
        assert backbone.forward_features(x).shape == (2, dim)
        # The small stem keeps 32 px at full resolution: use a narrow model to stay fast.
        classifier = build_model(name, num_classes=10, small_input=True, width=16).eval()
        assert classifier(x).shape == (2, 10)
        assert classifier.forward_features(x).shape == (2, dim // 4)


@pytest.mark.parametrize("name", NAMES)
def test_small_input_stem_keeps_names(name: str) -> None:
    standard, small = _meta(name), _meta(name, small_input=True)
    assert list(small.state_dict()) == list(standard.state_dict())
    assert small.conv1.weight.shape == (64, 3, 3, 3)
    assert small.conv1.stride == (1, 1) and small.conv1.padding == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert isinstance(standard.maxpool, nn.MaxPool2d)
    # Only the stem's conv differs in shape.
    small_shapes, standard_shapes = _shapes(small), _shapes(standard)
    assert {k for k, v in small_shapes.items() if standard_shapes[k] != v} == {"conv1.weight"}


def test_small_input_keeps_resolution() -> None:
    seen: dict[str, tuple[int, ...]] = {}
    for small in (False, True):
        model = build_model("resnet18", small_input=small, width=16).eval()
        model.layer4.register_forward_hook(lambda m, i, o, s=small: seen.update({s: o.shape}))
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    assert seen[True][-2:] == (4, 4)
    assert seen[False][-2:] == (1, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width", [16, 32])
def test_width_scales_channels_not_names(name: str, width: int) -> None:
    model = _meta(name, width=width, num_classes=10)
    dim = TORCHVISION[name][3] * width // 64
    assert model.num_features == dim
    assert list(model.state_dict()) == list(_meta(name, num_classes=10).state_dict())
    assert model.conv1.weight.shape == (width, 3, 7, 7)
    assert model.fc.weight.shape == (10, dim)
    assert model.layer4[-1].bn1.weight.shape == (width * 8,)


@pytest.mark.parametrize("name", NAMES)
def test_zero_init_residual(name: str) -> None:
    model = build_model(name, zero_init_residual=True, width=16)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) > 0
    for block in blocks:
        assert torch.count_nonzero(block.last_bn.weight) == 0
        assert torch.all(block.bn1.weight == 1)
    default = build_model(name, width=16)
    assert all(torch.all(m.weight == 1) for m in default.modules() if isinstance(m, nn.BatchNorm2d))


def test_conv_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    w = build_model("resnet50").layer3[1].conv2.weight  # 256 x 256 x 3 x 3
    expected = (2.0 / (256 * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.02


def _channels_last_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs for contiguous input, channels_last input, and channels_last model + input."""
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.channels_last)
        return [ref, out, model(x.to(memory_format=torch.channels_last))]


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name: str) -> None:
    # float64: this compares the model's handling of the layout, not the fp32 rounding of the
    # different conv algorithms, which grows with depth (~6e-4 for resnet152 in train mode).
    # Train mode: batch statistics keep activations O(1) at any depth, so 1e-5 means something.
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, small_input=True, width=8).train().double()
    ref, out, out_cl = _channels_last_outputs(model, torch.randn(4, 3, 16, 16, dtype=torch.float64))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5)


def test_channels_last_matches_contiguous_fp32() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, small_input=True, width=16).train()
    ref, out, out_cl = _channels_last_outputs(model, torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5)


def test_backward_reaches_every_parameter() -> None:
    model = build_model("resnet18", small_input=True, width=16, num_classes=10)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_state_dict_round_trip_between_instances() -> None:
    src, dst = build_model("resnet50", num_classes=10), build_model("resnet50", num_classes=10)
    dst.load_state_dict(src.state_dict(), strict=True)
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    assert all(torch.equal(src_sd[k], dst_sd[k]) for k in src_sd)


def test_build_model_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'; choose one of \['resnet101'"):
        build_model("resnet9")


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="width"):
        build_model("resnet18", width=0)
