"""Typed dataclass fields and building dataclasses from plain mappings, with validation.

The config layer reads YAML into dataclasses with this; the pipeline uses it for ``ViewSpec``
overrides, and a method declares its YAML section as a dataclass whose fields use
:func:`choice` and :func:`bounded`. A leaf module: it imports nothing else of selfsup but
``selfsup.errors``.

Every error is one line naming the key, where it came from and what is allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import types
import typing
from dataclasses import field
from typing import Any

from selfsup.errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def choice(default: Any, *choices: Any) -> Any:
    """A field that must take one of ``choices``."""
    return field(default=default, metadata={"choices": choices})


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A numeric field that must lie in [lo, hi] (either bound optional)."""
    return field(default=default, metadata={"min": lo, "max": hi})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: {key} must have {len(args)} items, got {value!r}")
        item_tp = args[0] if args else Any
        return origin(coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: {key} has unsupported type {_type_name(tp)}")


def build_dataclass(cls: type, data: Any, prefix: str, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = prefix.rstrip(".") or "the file"
        raise ConfigError(f"{where}: {what} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; allowed keys here: {allowed}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{key}.", where)
            continue
        value = coerce(value, tp, key, where)
        meta = fields[name].metadata
        if "choices" in meta and value not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{where}: {key} must be one of {allowed}, got {value!r}")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value is not None and value < lo:
            raise ConfigError(f"{where}: {key} must be >= {lo}, got {value!r}")
        if hi is not None and value is not None and value > hi:
            raise ConfigError(f"{where}: {key} must be <= {hi}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: {e}") from None
