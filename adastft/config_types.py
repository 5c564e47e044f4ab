"""Nested mappings against dataclasses: an unknown key named with a "did you mean", each value
checked against its field's type hint. :mod:`adastft.config` builds its ``Config`` with these.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

from adastft.checks import close_match


class ConfigError(ValueError):
    """A bad configuration key or value; the message is one line naming the key."""


def build(cls: type, data: Mapping[str, Any], where: str = ""):
    """``cls`` (a dataclass, with dataclasses nested in it) built from a nested mapping, each value
    checked against its field's type hint (:func:`coerce`); a key not a field is an error."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown(f"{where}.{key}" if where else str(key), key, fields)
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value if value is not None else {}, path)
        else:
            kwargs[name] = coerce(value, hint, path)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        if item is str:  # tags: any scalar, as text
            return {str(k): str(v) for k, v in value.items()}
        return {str(k): coerce(v, item, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}")
    raise TypeError(f"config type {hint!r} at {path} is not supported")  # a bug in this module


def check_key_of(cls: type, dotted: str) -> None:
    """Raise :class:`ConfigError` unless ``dotted`` names a field of dataclass ``cls`` or of one
    nested in it (``train``, ``train.epochs``), or a key inside a mapping-valued field
    (``tracking.tags.team``): ``unknown key 'train.epoch' (did you mean 'epochs'?)``."""
    node: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            if _is_mapping(node):
                return
            raise ConfigError(f"unknown key {dotted!r}: {'.'.join(parts[:i])!r} is a value, not a config section")
        hints = typing.get_type_hints(node)
        if part not in hints:
            raise _unknown(".".join(parts[: i + 1]), part, hints)
        node = hints[part]


def _unknown(path: str, key: str, known: Mapping[str, Any]) -> ConfigError:
    close = close_match(str(key), known)
    hint = f" (did you mean {close!r}?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"unknown key {path!r}{hint}")


def _is_mapping(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_mapping(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) is dict
