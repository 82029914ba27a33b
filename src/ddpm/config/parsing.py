"""Plain values (YAML) -> typed dataclasses, with one-line errors that name the key and the fix.

The machinery behind ddpm.config: `build` checks names and types field by field (unknown keys
get a "did you mean"), `check` is each section's range check, `plain` turns a config back into
YAML-able values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ddpm.errors import ConfigError

# Limits on the values every key shares: torch and numpy take integers as int64, and a string reaches MLflow (as
# a parameter of at most 500 characters in its oldest servers) and one-line errors and logs, which a control
# character (a newline, an escape sequence) would split or forge.
INT_LIMIT = 2**63
MAX_STRING = 500
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class DuplicateKey(yaml.YAMLError):
    """A mapping that names a key twice: YAML keeps the last silently, so half of what was written is ignored."""

    def __init__(self, key: str, first_line: int, second_line: int):
        super().__init__(f"{key} twice")
        self.key, self.lines = key, (first_line, second_line)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's parser where PyYAML has it: every stage reads params.yaml, and the pure-Python
    parser takes tens of milliseconds of the `register` check that runs on each `dvc repro`), refusing duplicate
    keys."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


def _check_unique_keys(node: yaml.Node, path: str, visited: set[int]) -> None:
    """DuplicateKey for the first key that a mapping of the node tree names twice (path: its dotted parents)."""
    if id(node) in visited:  # an alias of a node already checked
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(path + key, seen[key], line)
            seen[key] = line
            _check_unique_keys(value_node, f"{path}{key}.", visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item, path, visited)


def load_yaml(text: str) -> Any:
    """yaml.safe_load that refuses a key written twice (DuplicateKey)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """params.yaml's contents: a non-empty mapping of parameter groups."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass the params file")
    try:
        raw = load_yaml(path.read_text())
    except DuplicateKey as exc:
        raise ConfigError(f"{path} sets {exc.key} twice (lines {exc.lines[0]} and {exc.lines[1]}): YAML keeps "
                          "only the last; merge them into one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc.__class__.__name__}): fix its syntax") from None
    if not raw:  # an empty file would run every stage on the defaults, which need not be what was meant
        raise ConfigError(f"{path} is empty: write the parameters (python -m pipeline.profile default writes the "
                          "default profile)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of parameter groups")
    return raw


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """A range check: `key = value is out of range: expected ...` unless ok."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is out of range: expected {expected}")


def check_seed(key: str, seed: int) -> None:
    """Seeds: numpy's generators refuse negative ones, and torch's take at most 2^64 - 1 (stages add offsets)."""
    check(0 <= seed < INT_LIMIT, key, seed, "an integer in [0, 2^63)")


def check_weight_decay(group: str, lr: float, weight_decay: float) -> None:
    """AdamW multiplies each weight by 1 - lr x weight_decay a step: at lr x weight_decay >= 1 it zeroes or flips
    them."""
    check(weight_decay >= 0.0 and lr * weight_decay < 1.0, f"{group}.weight_decay", weight_decay,
          f">= 0 and below 1 / {group}.lr = {1.0 / lr:g} (AdamW scales each weight by 1 - lr x weight_decay a step)")


def build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(sorted(names))}"
        raise ConfigError(f"unknown parameter {prefix}{key} in params.yaml: {hint}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not allowed: choose one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, key)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(args[0], v, key) for v in items)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be an integer")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{key} = {value} is too large: expected an integer below 2^63 (what torch and numpy "
                              "hold)")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond every float
            value = math.inf
        if not math.isfinite(value):  # YAML's .inf and .nan: no parameter means "unbounded" or "none" by them
            raise ConfigError(f"{key} = {value} must be a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string")
        if CONTROL_CHARACTERS.search(value):
            raise ConfigError(f"{key} = {value!r} holds a control character: remove it (it would forge log and error "
                              "lines)")
        if len(value) > MAX_STRING:
            raise ConfigError(f"{key} = {value[:20]!r}... is {len(value)} characters long: use at most {MAX_STRING} "
                              "(MLflow's limit on a parameter)")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in ddpm.config, not in params.yaml


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
