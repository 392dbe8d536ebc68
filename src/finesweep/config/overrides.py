"""Dotted keys into the typed config: set values, look up fields, and name the closest valid key.

A searched value is addressed by its dotted path (``optim.lr``, ``finetune.lora.r``). Setting one
goes through ``dataclasses.replace`` at every level, so each section's ``__post_init__`` rules run
again on the new value: a config built by ``with_overrides`` is as valid as one built from YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from typing import Any, Dict, List, Sequence, TypeVar

C = TypeVar("C")

SWEEP_SECTIONS = ("objective", "search", "scheduler", "space", "name", "defaults")
"""Top-level config keys that describe the sweep itself: they are not searchable config values."""


def with_overrides(config: C, values: Dict[str, Any]) -> C:
    """Return a copy of a config dataclass with dotted keys set, values cast to the field types.

    Raises:
        KeyError: a key names no field.
        ConfigError: a value breaks a rule of its section (the section's ``__post_init__``).
        ValueError: a value is not a member of the field's Enum.
    """
    for key, value in values.items():
        config = _replace_path(config, key.split("."), value)
    return config


def has_key(config: Any, key: str) -> bool:
    """Whether a dotted key names a leaf (non-dataclass) field of the config."""
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return not dataclasses.is_dataclass(node)


def value_at(config: Any, key: str) -> Any:
    """The value a dotted key names (a leaf, or a whole section)."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def field_type(config: Any, key: str) -> Any:
    """The annotated type of the leaf field a dotted key names."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    return typing.get_type_hints(type(node))[leaf]


def leaf_keys(config: Any, sweep_sections: bool = False, prefix: str = "") -> List[str]:
    """Every dotted key of a config, in schema order; the sweep's own sections only when asked."""
    keys = []
    for f in dataclasses.fields(config):
        if not prefix and f.name in SWEEP_SECTIONS and not sweep_sections:
            continue
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        keys.extend(leaf_keys(value, sweep_sections, path + ".") if dataclasses.is_dataclass(value) else [path])
    return keys


def key_hint(key: str, known: Sequence[str]) -> str:
    """How to fix an unknown dotted key: the closest known key, else the keys of its section."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return f"Did you mean {close[0]}?"
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k[len(section):] for k in known if section and k.startswith(section) and "." not in k[len(section):]]
    if siblings:
        return f"Keys under {section[:-1]}: {', '.join(siblings)}."
    return "Check the spelling; finesweep show prints every key."


def _replace_path(node: Any, parts: List[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    if not dataclasses.is_dataclass(node) or head not in {f.name for f in dataclasses.fields(node)}:
        raise KeyError(".".join(parts))
    if rest:
        new = _replace_path(getattr(node, head), rest, value)
    else:
        new = _cast(typing.get_type_hints(type(node))[head], value)
    return dataclasses.replace(node, **{head: new})  # type: ignore[type-var]


def _cast(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    target = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return target(value)
    if target is float and isinstance(value, (int, float)):
        return float(value)
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
