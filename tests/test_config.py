import pytest

from selfsup.config import apply_overrides, config_to_dict, dump_config, load_config
from selfsup.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_loads_typed():
    cfg = load_config("default")
    assert cfg.method.name == "simclr"
    assert isinstance(cfg.optim.lr, float)
    assert cfg.data.source == "synthetic"


def test_overrides_are_typed_and_nested():
    cfg = load_config("default", ["optim.lr=0.5", "train.epochs=3", "model.small_input=false"])
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 3 and cfg.model.small_input is False
    cfg = load_config("default", ["method.temperature=0.3", "data.view_overrides.blur_p=0"])
    assert cfg.method.temperature == 0.3
    assert cfg.data.view_overrides == {"blur_p": 0}


def test_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; a float field still accepts it, in files and overrides.
    assert load_config("default", ["optim.weight_decay=1e-4"]).optim.weight_decay == 1e-4
    assert load_config(write(tmp_path, "optim: {lr: 5e-1}\n")).optim.lr == 0.5
    with pytest.raises(ConfigError, match="must be a number"):
        load_config("default", ["optim.lr=1e-4x"])


def test_int_widens_to_float_but_not_the_reverse(tmp_path):
    assert load_config(write(tmp_path, "optim: {lr: 1}\n")).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer"):
        load_config(write(tmp_path, "train: {epochs: 2.5}\n"))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("train: {epoch: 3}\n", r"unknown key 'train\.epoch'.*allowed keys here: .*epochs"),
        ("bogus: 1\n", r"unknown key 'bogus'"),
        ("optim: {lr: fast}\n", r"optim\.lr must be a number, got 'fast'"),
        ("optim: {lr: -1}\n", r"optim\.lr must be >= 0"),
        ("optim: {name: adam}\n", r"optim\.name must be one of 'lars', 'sgd', 'adamw'"),
        ("train: {batch_size: 0}\n", r"train\.batch_size must be >= 1"),
        ("model: {small_input: 3}\n", r"model\.small_input must be true or false"),
        ("method: {name: nosuch}\n", r"unknown method 'nosuch'; choose one of .*simclr"),
        ("method: {temperature: 0}\n", r"method\.temperature must be >= 0.0001"),
        ("method: {tau: 0.1}\n", r"unknown key 'method\.tau'"),
        ("train: [1, 2]\n", r"train must be a mapping"),
        ("- a\n- b\n", r"must be a mapping of sections"),
        ("train: {epochs: [\n", r"not valid YAML at line"),
    ],
)
def test_bad_configs_name_key_and_file(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_config_file_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match=r"not found.*default"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="override .* is not a section"):
        apply_overrides({"optim": 3}, ["optim.lr=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("default", ["optim.lr=0.25", "method.proj_dim=64"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_a_recipe_with_too_few_views_for_the_method_is_rejected():
    with pytest.raises(ConfigError, match="needs at least 2"):
        load_config("default", ["data.recipe=supervised"])


def test_simclr_trains_on_a_multi_crop_recipe():
    """dino's 2x224 + 8x96 views (here 2x32 + 8x14): one backbone pass per size."""
    import torch

    from selfsup.trainer.methods import build_method
    from selfsup.trainer.models import build_model

    cfg = load_config("default", ["data.recipe=dino", "method.proj_hidden_dim=16"])
    backbone = build_model("resnet18", small_input=True, width=8)
    method = build_method(cfg.method, backbone, backbone.num_features)
    views = [torch.randn(2, 4, 3, 32, 32), torch.randn(8, 4, 3, 14, 14)]
    loss = method(views)
    loss.backward()
    assert torch.isfinite(loss) and backbone.conv1.weight.grad is not None
