"""YAML recipes -> typed dataclasses, with dotted command-line overrides and validation.

A recipe file holds some of the sections below; every key it leaves out keeps the
dataclass default. Unknown keys, wrong types and impossible values are rejected with a
one-line :class:`ConfigError` naming the key, the file and what is allowed. The method
section is typed by the chosen method's own dataclass (``METHODS[name].Config``); names
(method, model, recipe) are checked against the public registries, and
``data.view_overrides`` against ``ViewSpec``'s fields, so that a bad value fails here and
not minutes later inside an engine thread. This module knows those registries and field
types only, never a method's or the pipeline's internals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError
from selfsup.fields import bounded, build_dataclass, choice

# The built-in configs ship inside the package (so `pip install selfsup` has them).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_METHOD = "simclr"  # method.name when a config names none


@dataclass
class DataConfig:
    """Where the images come from and how views are made."""

    source: str = choice("synthetic", "synthetic", "folder", "beton", "tar")
    # folder: a directory holding <train_split>/ and <val_split>/ class folders;
    # beton: a directory holding <train_split>.beton and <val_split>.beton;
    # tar: a directory holding <train_split>/*.tar and <val_split>/*.tar shards
    path: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    synthetic_seed: int = 0
    synthetic_train_per_class: int = bounded(500, 1)
    synthetic_val_per_class: int = bounded(100, 1)
    recipe: str | None = None  # None: the method's own recipe (e.g. simclr for SimCLR)
    size: int = bounded(224, 8)  # side of the largest view; smaller views scale with it
    eval_size: int = bounded(224, 8)  # side of the centre crop used by k-NN evaluation
    view_overrides: dict[str, Any] = field(default_factory=dict)  # ViewSpec fields, every view
    # multi-crop recipes (SwAV, DINO, ReLICv2): the number of small views per image; None: the
    # recipe's (SwAV 6, DINO 8, ReLICv2 2). Fewer cost less to load and to train on.
    small_crops: int | None = None
    engine: str = choice("auto", "auto", "cpu", "dali")  # auto: dali on a GPU if installed
    reduced_decode: bool = True  # cpu engine: DCT-scaled JPEG decoding when the crops allow
    threads: int = bounded(0, 0)  # decode/augment threads; 0 = this node's cores / its processes
    prefetch: int = bounded(2, 0)  # batches prepared ahead of the training step
    max_bad_fraction: float = bounded(0.01, 0.0, 1.0)


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    small_input: bool = False  # 3x3 stride-1 stem without max-pool, for 32-96 px images
    width: int = bounded(64, 1)  # base width; 64 is the standard ResNet
    zero_init_residual: bool = False


@dataclass
class OptimConfig:
    name: str = choice("lars", "lars", "larc", "sgd", "adamw")  # larc: SwAV's LARS variant
    lr: float = bounded(0.3, 0.0)  # base learning rate, scaled by lr_scaling
    lr_scaling: str = choice("linear", "linear", "sqrt", "none")  # linear: lr*bs/256
    final_lr_fraction: float = bounded(0.0, 0.0, 1.0)  # cosine ends at lr * this
    warmup_epochs: float = bounded(10.0, 0.0)
    weight_decay: float = bounded(1e-6, 0.0)
    # None: constant; else cosine from weight_decay to this over the run (DINO: 0.04 -> 0.4)
    weight_decay_end: float | None = None
    # lr of biases and norms, before lr_scaling (Barlow Twins: 0.0048); None: optim.lr
    lr_1d: float | None = None
    momentum: float = bounded(0.9, 0.0, 1.0)
    exclude_1d: bool = True  # no weight decay / LARS adaptation on biases and norm params


@dataclass
class TrainConfig:
    epochs: int = bounded(100, 1)
    # the GLOBAL batch, over every process (as in the papers); each of W processes takes
    # batch_size / W, and the learning-rate scaling and images/sec use the global batch
    batch_size: int = bounded(256, 1)
    seed: int = 0
    device: str = choice("auto", "auto", "cpu", "cuda")
    # auto: bf16 autocast on GPU, fp32 on CPU; fp64: weights and inputs in float64 (checks)
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16", "fp64")
    channels_last: bool = True  # NHWC model and batches (faster convolutions on GPU and CPU)
    threads: int = bounded(0, 0)  # torch intra-op threads; 0 = this node's cores / its processes
    # BatchNorm over the global batch across processes (SyncBatchNorm on CUDA, an all-reduce
    # of the statistics elsewhere); None = what the method's paper does (SimCLR: on)
    sync_bn: bool | None = None
    # torch.compile the backbone (in place: checkpoint keys unchanged), one graph per view size
    compile: bool = False
    log_every: int = bounded(10, 1)  # steps between synchronised log lines
    # also log the metrics as TensorBoard scalars in <run_dir>/tensorboard (needs tensorboard)
    tensorboard: bool = False
    checkpoint_every: int = bounded(100, 1)  # steps between checkpoints (also each epoch end)
    max_steps: int | None = None  # stop early (for smoke tests); None = all epochs


@dataclass
class EvalConfig:
    knn: bool = True  # k-NN top-1 on the held-out split at the end of pretraining
    knn_k: int = bounded(20, 1)
    knn_temperature: float = bounded(0.07, 1e-6)
    random_init_baseline: bool = True  # also evaluate the same architecture untrained
    batch_size: int = bounded(256, 1)
    # the k-NN feature bank (train features): its dtype, and whether it stays on the host and
    # goes to the device in chunks of knn_bank_chunk rows (ImageNet: 1.28M x 2048 features)
    knn_bank_dtype: str = choice("float32", "float32", "float16", "bfloat16")
    knn_bank_on_host: bool = False
    knn_bank_chunk: int = bounded(65536, 1)
    # monitoring during pretraining, logged to metrics.jsonl (the trained weights are the same
    # with it as without it): the k-NN top-1 every knn_every epochs (0 = off; the last epoch
    # is left to the final evaluation), and a linear classifier trained online on the
    # training batches' stop-gradient features (its held-out top-1 goes into summary.json)
    knn_every: int = bounded(0, 0)
    online_linear: bool = False
    online_linear_lr: float = bounded(0.1, 0.0)  # SGD, momentum 0.9, no weight decay


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # the method's own Config dataclass; see selfsup.trainer.methods
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = "runs"  # parent directory of run directories
    name: str | None = None  # run directory name; None = <method>-<timestamp>


# ---------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or a recipe name looked up in ``configs/`` (``default`` -> default.yaml)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    candidate = CONFIG_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if candidate.exists() and len(p.parts) == 1:
        return candidate
    known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        f"config file {str(name_or_path)!r} not found; give a path to a YAML file "
        f"or one of the built-in recipes: {known}"
    )


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {data!r}")
    return data


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its ``base:`` (a built-in config name or a path, relative
    to the file) read first and this file laid over it: sections merge key by key, other
    values replace. A ``method`` section that names another method than the base's replaces
    the base's whole section (its options belong to that method)."""
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a config name or path, got {base!r}")
    local = path.parent / base
    base_path = resolve_config_path(local if local.suffix and local.exists() else base)
    seen = (*seen, path.resolve())
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: base {base!r} leads back to itself")
    merged = read_config_file(base_path, seen)
    method = data.get("method")
    if isinstance(method, dict) and method.get("name") not in (None, _method_name(merged)):
        merged.pop("method", None)
    return _merge(merged, data)


def _method_name(data: dict) -> str:
    method = data.get("method")
    return method.get("name", DEFAULT_METHOD) if isinstance(method, dict) else DEFAULT_METHOD


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values parse as YAML (``1e-3``, ``true``, ``[1,2]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path = "default", overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe, apply overrides, and validate into a :class:`Config`."""
    from selfsup.trainer.methods import METHODS

    cfg_path = resolve_config_path(path)
    data = apply_overrides(read_config_file(cfg_path), list(overrides or []))
    where = str(cfg_path) + (" (with command-line overrides)" if overrides else "")
    method_data = data.pop("method", None) or {}
    if not isinstance(method_data, dict):
        raise ConfigError(f"{where}: method must be a mapping, got {method_data!r}")
    method_data = dict(method_data)
    name = method_data.pop("name", DEFAULT_METHOD)
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(
            f"{where}: unknown method {name!r} in method.name; "
            f"choose one of {', '.join(sorted(METHODS))}"
        )
    method = METHODS[name]
    cfg = build_dataclass(Config, data, "", where)
    cfg.method = build_dataclass(method.Config, method_data, "method.", where)
    if cfg.data.recipe is None:
        cfg.data.recipe = method.recipe  # the method chooses its views
    if cfg.train.tensorboard:
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ConfigError(
                f"{where}: train.tensorboard needs the tensorboard package; pip install "
                "'selfsup[tensorboard]' (or tensorboard), or set train.tensorboard=false"
            ) from None
    if cfg.train.sync_bn is None:
        cfg.train.sync_bn = bool(getattr(method, "sync_bn", False))  # and its BatchNorm
    if hasattr(method, "check_config"):  # a method's own constraints on the whole config
        method.check_config(cfg, where)
    _check_names(cfg, where)
    _check_views(cfg, method, where)
    if cfg.eval.online_linear and not getattr(method, "online_features", True):
        raise ConfigError(
            f"{where}: eval.online_linear trains on the backbone's features of whole images, "
            f"which method {name!r} never computes; set eval.online_linear=false"
        )
    return cfg


def _check_names(cfg: Config, where: str) -> None:
    """Names resolved through registries, checked now rather than minutes into a run."""
    from selfsup.pipeline.recipes import RECIPES
    from selfsup.trainer.models import MODELS

    if cfg.model.arch not in MODELS:
        raise ConfigError(
            f"{where}: unknown model {cfg.model.arch!r} in model.arch; "
            f"choose one of {', '.join(sorted(MODELS))}"
        )
    if cfg.data.recipe not in RECIPES:
        raise ConfigError(
            f"{where}: unknown recipe {cfg.data.recipe!r} in data.recipe; "
            f"choose one of {', '.join(sorted(RECIPES))}"
        )


def _check_views(cfg: Config, method: type, where: str) -> None:
    """Build the views the run will use: ``data.view_overrides`` is checked field by field
    against ``ViewSpec`` (and coerced: a YAML list becomes a tuple), then every view against
    its rules; the method must get as many views per image as it needs."""
    from selfsup.pipeline.recipes import recipe
    from selfsup.pipeline.views import override_views

    d = cfg.data
    try:
        views = recipe(d.recipe, d.size, small_crops=d.small_crops)
        views = override_views(views, d.view_overrides, "data.view_overrides")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    # Keep the coerced values, so the run directory's config.yaml holds well-formed ones.
    d.view_overrides = {k: getattr(views[0], k) for k in d.view_overrides}
    count = sum(v.count for v in views)
    need = getattr(method, "min_views", 1)
    if count < need:
        raise ConfigError(
            f"{where}: data.recipe {d.recipe!r} makes {count} view(s) per image but "
            f"method {cfg.method.name!r} needs at least {need}; choose another recipe"
        )


def config_to_dict(cfg: Config) -> dict:
    """Plain, YAML- and checkpoint-safe dict of a resolved config (method name included)."""
    out = dataclasses.asdict(cfg)
    out["method"] = {"name": cfg.method.name, **dataclasses.asdict(cfg.method)}
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
