"""Strict loading of plain dicts (parsed JSON or YAML) into typed dataclasses.

One loader for every config of the project: model configs (:mod:`clips_tower.config`) and
pretraining run configs (:mod:`pretrain.config`) both build their dataclasses with
:func:`build_dataclass`, so both get the same checks:

- unknown and missing keys are errors;
- ``bool`` fields take only true/false, and a bool is never accepted as an int or a float;
- a fixed-length tuple (``tuple[float, float, float]``) takes exactly that many values,
  ``tuple[str, ...]`` any number;
- ``list[...]``, ``dict[str, ...]``, ``X | None`` and nested dataclasses are checked item by item.

Every error is a :class:`ConfigError` whose message starts with the source (a file name) and the
dotted key, e.g. ``clips-tiny.json.preprocess.mean: expected 3 values, got 2 ([0.5, 0.5])``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or dict does not match the declared schema (the message names the
    file and the key). ``clips_tower.ConfigError`` and ``pretrain.config.ConfigError`` are this class."""


def _type_error(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


def _coerce(value: Any, annotation: Any, where: str, float_strings: bool) -> Any:
    """Check/convert one value against a field annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, float_strings)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where, float_strings)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(where, "a list", value)
        return [_coerce(v, args[0], f"{where}.{i}", float_strings) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}", float_strings) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{where}.{i}", float_strings) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(where, "a mapping", value)
        return {str(k): _coerce(v, args[1], f"{where}.{k}", float_strings) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise _type_error(where, "true/false", value)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, "an integer", value)
        return value
    if annotation is float:
        if float_strings and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(where, "a number", value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _type_error(where, "a string", value)
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a schema bug, not a user error


def _build(cls: Any, data: Any, where: str, float_strings: bool) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {names}")
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}", float_strings) for k, v in data.items()})


def build_dataclass(cls: type[T], data: Any, source: str = "<dict>", *, float_strings: bool = False) -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), checking every key and value recursively.

    ``source`` (a file name) starts every error message. ``float_strings`` accepts a string that
    parses as a number for a float field: YAML 1.1 (PyYAML) reads ``1e-3`` as a string.
    Validation in the dataclasses' ``__post_init__`` runs as usual and may raise :class:`ConfigError`.
    """
    return _build(cls, data, source, float_strings)
