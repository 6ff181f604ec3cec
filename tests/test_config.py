import pytest

from selfsup.config import CONFIG_DIR, apply_overrides, config_to_dict, dump_config, load_config
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
    cfg = load_config("default", ["method.temperature=0.3", "data.view_overrides.flip_p=0"])
    assert cfg.method.temperature == 0.3
    # merged into the file's own overrides, and typed as the ViewSpec field is
    assert cfg.data.view_overrides["flip_p"] == 0.0
    assert isinstance(cfg.data.view_overrides["flip_p"], float)
    assert cfg.data.view_overrides["blur_p"] == 0.0


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
        ("optim: {name: adam}\n", r"optim\.name must be one of 'lars', 'larc', 'sgd', 'adamw'"),
        ("train: {batch_size: 0}\n", r"train\.batch_size must be >= 1"),
        ("model: {small_input: 3}\n", r"model\.small_input must be true or false"),
        (
            "method: {name: nosuch}\n",
            r"unknown method 'nosuch' in method\.name; choose one of .*simclr",
        ),
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


# --- the method chooses its views ----------------------------------------------------------


@pytest.fixture
def byol_method(monkeypatch):
    """A method registered with another recipe than SimCLR's."""
    from selfsup.trainer.methods import METHODS
    from selfsup.trainer.methods.simclr import SimCLR

    class ByolViews(SimCLR):
        recipe = "byol"

        class Config(SimCLR.Config):
            pass

    ByolViews.Config.name = "byolviews"
    monkeypatch.setitem(METHODS, "byolviews", ByolViews)
    return ByolViews


def test_data_recipe_defaults_to_the_methods_recipe(tmp_path, byol_method):
    cfg = load_config(write(tmp_path, "method: {name: byolviews}\n"))
    assert cfg.data.recipe == "byol"
    assert load_config(write(tmp_path, "method: {name: simclr}\n")).data.recipe == "simclr"
    # the built-in demo follows its method too (it names no recipe)
    assert load_config("default", ["method.name=byolviews"]).data.recipe == "byol"
    # an explicit recipe still wins, and the resolved one is what config.yaml records
    cfg = load_config(write(tmp_path, "method: {name: byolviews}\ndata: {recipe: swav}\n"))
    assert cfg.data.recipe == "swav"
    assert config_to_dict(cfg)["data"]["recipe"] == "swav"


def test_pretrain_builds_its_loader_with_the_methods_recipe(
    tiny_overrides, byol_method, monkeypatch
):
    import selfsup.trainer.build as build
    import selfsup.trainer.loop as loop

    seen = {}

    class Stop(Exception):
        pass

    def fake_loader(source, recipe, *a, **k):
        seen["recipe"] = recipe
        raise Stop

    monkeypatch.setattr(build, "Loader", fake_loader)
    cfg = load_config("default", [*tiny_overrides, "method.name=byolviews"])
    with pytest.raises(Stop):
        loop.pretrain(cfg, progress=False)
    assert seen["recipe"] == "byol"


# --- view overrides reach the engines well-formed -------------------------------------------

# Every ViewSpec field, as YAML writes it, and the value the views must hold.
VIEW_FIELDS = {
    "size": ("24", 24),
    "count": ("3", 3),
    "crop": ("center", "center"),
    "scale": ("[0.2, 0.9]", (0.2, 0.9)),
    "ratio": ("[1, 2]", (1.0, 2.0)),
    "center_fraction": ("1", 1.0),
    "interpolation": ("bilinear", "bilinear"),
    "flip_p": ("1", 1.0),
    "jitter_p": ("1", 1.0),
    "brightness": ("0.3", 0.3),
    "contrast": ("0.3", 0.3),
    "saturation": ("0.3", 0.3),
    "hue": ("0.1", 0.1),
    "grayscale_p": ("1", 1.0),
    "blur_p": ("1", 1.0),
    "blur_sigma": ("[1, 2]", (1.0, 2.0)),
    "blur_kernel": ("sigma", "sigma"),
    "solarize_p": ("1", 1.0),
    "mask_p": ("1", 1.0),
    "mask_fill": ("random", "random"),
    "mean": ("[0.5, 0.5, 0.5]", (0.5, 0.5, 0.5)),
    "std": ("[0.25, 0.25, 0.25]", (0.25, 0.25, 0.25)),
    "antialias": ("true", True),
}


def test_the_table_covers_every_viewspec_field():
    from selfsup.pipeline.views import view_fields

    assert set(VIEW_FIELDS) == set(view_fields())


@pytest.mark.parametrize("device_chain", [False, True], ids=["fused-cpu", "batched"])
@pytest.mark.parametrize("name", sorted(VIEW_FIELDS))
def test_every_view_field_through_yaml_reaches_the_engine(tmp_path, name, device_chain):
    import numpy as np
    import torch

    from selfsup.pipeline import ArraySource, Loader

    text, want = VIEW_FIELDS[name]
    cfg = load_config(write(tmp_path, f"data:\n  size: 16\n  view_overrides: {{{name}: {text}}}\n"))
    got = cfg.data.view_overrides[name]
    assert got == want and type(got) is type(want)
    images = np.random.default_rng(0).integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
    loader = Loader(
        ArraySource(images, np.zeros(8, dtype=np.int64)), cfg.data.recipe, 4, "cpu", 0,
        size=cfg.data.size, view_overrides=cfg.data.view_overrides, threads=2, prefetch=0,
        augment_on_device=device_chain,
    )  # fmt: skip
    try:
        batch = next(iter(loader))
    finally:
        loader.close()
    size = 24 if name == "size" else 16
    views = 3 if name == "count" else 2
    assert [tuple(v.shape) for v in batch.views] == [(views, 4, 3, size, size)]
    assert all(torch.isfinite(v).all() for v in batch.views)
    # and the run directory's config.yaml holds the coerced value
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml").data.view_overrides[name] == want


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("{mean: [0.5, 0.5]}", r"data\.view_overrides: view spec: mean must have 3 items"),
        ("{mean: grey}", r"data\.view_overrides: view spec: mean must be a list"),
        ("{std: [1, 0, 1]}", r"std must be positive"),
        ("{size: 2.5}", r"view spec: size must be an integer, got 2\.5"),
        ("{crop: diagonal}", r"crop must be one of"),
        ("{mask_p: 2}", r"mask_p must be a probability in \[0, 1\], got 2"),
        ("{blur_sigma: [2, 1]}", r"blur_sigma must satisfy 0 < min <= max"),
        ("{colour_p: 0.5}", r"unknown view field 'colour_p'; allowed: size, count"),
        ("{antialias: maybe}", r"antialias must be true or false"),
        ("[blur_p, 0]", r"data\.view_overrides must be a mapping"),
    ],
)
def test_bad_view_overrides_are_one_line_config_errors(tmp_path, text, pattern):
    path = write(tmp_path, f"data:\n  view_overrides: {text}\n")
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_bad_view_override_on_the_command_line_is_one_line(capsys):
    from selfsup.cli import main

    assert main(["pretrain", "data.view_overrides.mean=[1, 2]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "view spec: mean must have 3 items" in err[0]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_builtin_config_loads(name):
    cfg = load_config(name)
    assert cfg.train.sync_bn is not None  # resolved from the method when the file is silent


def test_sync_bn_defaults_to_the_methods_choice():
    assert load_config("default").train.sync_bn is True  # SimCLR: global BN
    assert load_config("default", ["train.sync_bn=false"]).train.sync_bn is False


def test_the_global_batch_must_split_over_the_processes():
    from selfsup.trainer.build import per_process_batch

    assert per_process_batch(256, 8) == 32
    with pytest.raises(ConfigError, match=r"train.batch_size=256 .* 3 processes cannot split"):
        per_process_batch(256, 3)
    with pytest.raises(ConfigError, match="saved with 2 processes"):
        per_process_batch(10, 3, saved_world=2)


def test_base_config_is_read_first_and_overlaid(tmp_path):
    """``base:`` reads another config first: sections merge key by key (view_overrides too),
    other values replace; a method section naming another method replaces the base's."""
    (tmp_path / "mid.yaml").write_text(
        "base: default\ntrain: {epochs: 3}\ndata: {view_overrides: {flip_p: 0.0}}\n"
    )
    (tmp_path / "top.yaml").write_text(
        "base: mid.yaml\nmethod: {name: barlow_twins, proj_dim: 64}\noptim: {lr: 0.5}\n"
    )
    cfg = load_config(tmp_path / "top.yaml")
    default = load_config("default")
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.5  # overlaid
    assert cfg.train.batch_size == default.train.batch_size  # inherited through two levels
    assert cfg.model == default.model and cfg.optim.name == default.optim.name
    assert cfg.data.view_overrides == {**default.data.view_overrides, "flip_p": 0.0}
    assert cfg.method.name == "barlow_twins" and cfg.method.proj_dim == 64  # no simclr keys
    same = tmp_path / "same.yaml"
    same.write_text("base: default\nmethod: {temperature: 0.5}\n")
    cfg = load_config(same)
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.5
    assert cfg.method.proj_hidden_dim == default.method.proj_hidden_dim  # merged


@pytest.mark.parametrize(
    "files, pattern",
    [
        ({"a.yaml": "base: a.yaml\n"}, "leads back to itself"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "leads back to itself"),
        ({"a.yaml": "base: [default]\n"}, "base must be a config name or path"),
        ({"a.yaml": "base: nowhere\n"}, "not found"),
    ],
)
def test_bad_bases_are_one_line_errors(tmp_path, files, pattern):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(tmp_path / "a.yaml")


def test_small_crops_is_checked_against_the_recipe_and_the_method():
    cfg = load_config("default", ["data.recipe=swav", "data.small_crops=2"])
    assert cfg.data.small_crops == 2
    with pytest.raises(ConfigError, match="data.small_crops is set but the recipe has no small"):
        load_config("default", ["data.small_crops=2"])  # simclr's recipe
    with pytest.raises(ConfigError, match="needs at least 3"):
        load_config("dino_demo", ["data.small_crops=0"])


def test_small_crops_reach_the_training_loader():
    import torch

    from selfsup.trainer.build import build_loader, describe_launch

    cfg = load_config("tests/tiny.yaml", ["method.name=swav", "data.small_crops=2"])
    device = torch.device("cpu")
    loader = build_loader(cfg, device, describe_launch(cfg, device), progress=False, prefetch=0)
    try:
        views = next(iter(loader)).views
    finally:
        loader.close()
    assert [tuple(v.shape[:2]) for v in views] == [(2, 16), (2, 16)]
