"""Strict conversion of YAML data into typed dataclasses, and `a.b.c=value` overrides: the generic half of
the config loader (`config.py` holds the sections and their domain checks). An unknown key, a value of
the wrong type or a non-finite number is a `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any

import yaml

from torchrec_aes.errors import ConfigError, ConfigFileNotFoundError, yaml_error
from torchrec_aes.io import is_local, read_text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Converts a YAML value to the annotated type, or raises a ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one value where a list is allowed (e.g. search.budget=10)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {_convert(k, key_tp, path): _convert(v, item_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """`cls(**data)` with every value converted to its annotated type. A dataclass that holds registered
    sub-sections (`search.adass`, ...) in a `sections` field declares them with a static
    `registered_sections() -> {name: dataclass}`; they are read as keys of its own."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    registered = getattr(cls, "registered_sections", None)
    sections = registered() if registered else {}
    if sections:
        names = [n for n in names if n != "sections"] + sorted(sections)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; allowed here: {', '.join(names)}")
        if key in sections:
            kwargs.setdefault("sections", {})[key] = _convert(value, sections[key], dotted)
        else:
            kwargs[key] = _convert(value, hints[key], dotted)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """A config dataclass as plain nested dicts/lists (YAML-ready); registered sub-sections (a `sections`
    field, see `from_dict`) are keys of their parent, as they are read."""
    data = dataclasses.asdict(cfg)

    def flatten(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("sections"), dict):
                node.update(node.pop("sections"))
            for value in node.values():
                flatten(value)

    flatten(data)
    return data


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like a.b.c=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `a.b.c=value` overrides to a nested dict (values parsed as YAML scalars/lists)."""
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice (first on line {seen[key].line + 1}); give it once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: str) -> dict:
    """A YAML file (local or iopath URI) whose top level is a mapping; every failure is one `ConfigError`
    naming the file (and the line of a syntax error)."""
    if is_local(path) and os.path.isdir(path.removeprefix("file://")):
        raise ConfigError(f"{path}: is a directory (expected a YAML config file)")
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise ConfigFileNotFoundError(f"{path}: no such config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(str(yaml_error(path, e))) from None
    if data is None:
        raise ConfigError(
            f"{path}: empty (no settings); a config needs at least its data and search sections"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {data!r}")
    return data
