"""Build frozen config dataclasses from plain dicts (YAML + dotted overrides).

Imports neither torch nor ray: `tunefleet validate` must answer in well under a second and
a bad config must fail before any worker starts. Every error names the dotted path of the
field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; `str()` is the message shown to the user."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


def dotted(path: str, name: str) -> str:
    """The dotted path of field `name` inside section `path` ("" at the top level)."""
    return f"{path}.{name}" if path else name


def check(cond: bool, path: str, value: Any, allowed: str) -> None:
    """Raise ConfigError for `path` unless `cond`; used by `__post_init__` validators."""
    if not cond:
        raise ConfigError(path, f"bad value {value!r}; allowed: {allowed}")


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `options`, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            raise ConfigError(path, f"bad value {value!r}; allowed: {_type_name(tp)}{hint}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"bad value {value!r}; expected {_type_name(tp)}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"bad value {value!r}; expected {_type_name(tp)}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; accept the obvious meaning.
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(path, f"bad value {value!r}; expected {_type_name(tp)}")
    return value


def build(cls: type, data: Any, path: str = "") -> Any:
    """Construct dataclass `cls` from mapping `data`, checking keys, types and ranges.

    A class with a `TAGGED_UNION` attribute (dict of tag -> class) is a tagged union: the
    mapping's `type` key picks the variant.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"bad value {data!r}; expected a mapping")
    variants = getattr(cls, "TAGGED_UNION", None)
    if variants is not None:
        tag = data.get("type")
        if tag not in variants:
            hint = did_you_mean(str(tag), variants)
            where = f"{path}.type" if path else "type"
            raise ConfigError(where, f"bad value {tag!r}; allowed: {', '.join(sorted(variants))}{hint}")
        cls = variants[tag]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key{did_you_mean(str(key), fields)}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(where, "missing required field")
    obj = cls(**kwargs)
    _validate(obj, path)
    return obj


def _validate(obj: Any, path: str) -> None:
    """Run the dataclass's `validate(path)` hook, so errors carry the full dotted path."""
    hook = getattr(obj, "validate", None)
    if hook is not None:
        hook(path)


def parse_yaml(text: str, source: str = "<config>") -> dict:
    """Parse YAML text into a mapping; malformed YAML is a ConfigError with line and column."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError("", f"{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{source}: top level must be a mapping, got {type(data).__name__}")
    return data


# An override that names one data source replaces the base's other one: `data.path=x.jsonl`
# on the command line swaps a config file's built-in `data.task` for that file, and
# `data.task=arith` a file's `data.path`. Both given together (or both in the file) still fail.
RIVAL_KEYS = {"data.path": "data.task", "data.task": "data.path"}


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict copy; a non-null
    override of a RIVAL_KEYS key first drops its rival from `data` (unless also overridden)."""
    data = _deepcopy(data)
    pairs = [_parse_override(item) for item in overrides]
    keys = {key for key, _ in pairs}
    for key, value in pairs:
        rival = RIVAL_KEYS.get(key)
        if value is not None and rival is not None and rival not in keys:
            _drop(data, rival)
    for key, value in pairs:
        _set(data, key, value)
    return data


def _drop(data: dict, key: str) -> None:
    """Remove dotted `key` from nested `data`, if it is there."""
    *parents, last = key.split(".")
    for part in parents:
        data = data.get(part) if isinstance(data, dict) else None
    if isinstance(data, dict):
        data.pop(last, None)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError("", f"bad override {item!r}; expected dotted.key=value")
    try:
        return key, (yaml.safe_load(raw) if raw != "" else "")
    except yaml.YAMLError:
        return key, raw


def _set(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"cannot set {key!r}: {child!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml_file(path: str | Path) -> dict:
    """Read and parse a YAML config file; a missing file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"config file not found: {p}")
    return parse_yaml(p.read_text(), str(p))


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (tuples become lists), for YAML and MLflow."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
