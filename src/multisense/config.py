"""Typed configs: nested dataclasses filled from dicts, YAML presets and dotted overrides.

One dataclass per model (`FlamingoConfig`) and one per training run (`train.trainer.TrainConfig`)
are the source of truth; YAML only holds presets. Every key is checked: an unknown key is an
error that names its full dotted path and suggests the nearest valid one, and a value of the
wrong type is an error naming the key and the expected type. Overrides use the command-line
form `optim.lr=3e-4 model.flamingo.mode=all_previous`, values parsed as YAML scalars.
`check_choice` and `check_number` check a value beyond its type (one of a set, within bounds),
with the same kind of error: the dotted key, what was expected, what was given.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def check_keys(cls: type, values: dict, where: str = "") -> None:
    """Raise ValueError for a key that `cls` has no field for, suggesting the nearest one."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {where + near[0]!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise ValueError(f"{cls.__name__}: unknown key {where + str(key)!r}{hint}")


def check_choice(value: Any, choices: tuple, where: str) -> None:
    """Raise ValueError naming `where` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def check_number(value: float, where: str, *, at_least: float | None = None, above: float | None = None,
                 at_most: float | None = None, below: float | None = None) -> None:
    """Raise ValueError naming `where` unless `value` is finite and within every bound given
    (NaN passes no comparison, inf is never a meant setting)."""
    given = {">=": at_least, ">": above, "<=": at_most, "<": below}
    bounds = {op: bound for op, bound in given.items() if bound is not None}
    if not (math.isfinite(value) and all(_COMPARE[op](value, bound) for op, bound in bounds.items())):
        expected = " and ".join(f"{op} {bound}" for op, bound in bounds.items())
        raise ValueError(f"{where}: expected a number {expected}, got {value!r}")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) one value against its annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, where=where + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {annotation}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        items = [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool) and not (
            isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], values: dict, where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, checking every key and value type."""
    check_keys(cls, values, where)
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], where + k) for k, v in values.items()})


class FamilyConfig:
    """`from_dict` and `replace` for a model family's config dataclass; unknown keys name the nearest field."""

    @classmethod
    def from_dict(cls, values: dict):
        return from_dict(cls, values)

    def replace(self, **values):
        check_keys(type(self), values)
        return dataclasses.replace(self, **values)

    def validate(self, where: str = "") -> None:
        """Check the values, errors naming `where` and the field (`model.flamingo.num_latents: ...`),
        as transformers' configs check theirs: the trainer calls it before anything loads. Each
        family's config adds its own rules."""

    def check_positive(self, where: str, *names: str) -> None:
        for name in names:
            check_number(getattr(self, name), f"{where}{name}", at_least=1)

    def to_dict(self) -> dict:
        """Every field as plain values (what config.json holds, less the family's name)."""
        return dataclasses.asdict(self)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict (values parsed as YAML scalars)."""
    values = _deep_copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected the form key.sub=value")
        *parents, leaf = key.split(".")
        node = values
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def _deep_copy(values: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """`cls` from an optional YAML preset plus dotted overrides."""
    values = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return from_dict(cls, apply_overrides(values, list(overrides)))
