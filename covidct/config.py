"""One frozen configuration tree, loaded from YAML plus ``--set a.b=value`` overrides.

Unknown keys are errors (a typo must not silently fall back to a default).  The resolved tree is
what every run saves, so a result can always be traced to its exact settings.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covidct.train_config import TrainConfig
from data_prep.errors import ConfigError
from data_prep.settings import PrepConfig
from data_prep.synthetic.cohort import SynthConfig


@dataclass(frozen=True)
class Config:
    """Everything covidct can be told. Sections mirror the subcommands."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    prepare: PrepConfig = field(default_factory=PrepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return from_dict(tp, value, f"{where}.")
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, members[0], where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, found {len(value)}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args, strict=True))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    if tp in (int, float, str):
        if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is str and isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}")
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[Any], data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(sorted(f'{where}{k}' for k in unknown))}; "
            f"valid here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a dataclass's own check of a value (e.g. slices.crop)
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A plain (YAML/JSON-ready) version of a config tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults) and apply ``key.path=value`` overrides.

    Args:
        path: YAML file; sections not given keep their defaults.
        overrides: ``a.b=value`` strings; values are parsed as YAML (``3``, ``true``, ``[1, 2]``).

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of sections")
        tree = loaded or {}
    defaults = to_dict(Config())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, found {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}") from exc
        _set_path(tree, key.strip(), value)
    merged = _merge(defaults, tree)
    return from_dict(Config, merged)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
