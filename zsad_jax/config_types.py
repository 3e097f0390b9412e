"""Typed config sections: a frozen dataclass per `ml_collections.ConfigDict` section, checked once.

A section class lists its keys as annotated fields with defaults and a comment each (the flax
examples' typed configs). `Section.from_config(section, "optim")` checks the ConfigDict section
against it before anything slow runs:

* every key is a field, and every field is present (a typo names the closest keys);
* every value has the field's type: `bool`, `int`, `float` (ints accepted), `str`,
  `Literal[...]` (the allowed choices), `tuple[T, ...]`, `dict[str, T]`;
* then `check()` (overridden per section) tests value constraints (`> 0`, ranges, ...).

Every failure is a `ConfigError` naming the key (`optim.lr`), the value and what is expected.
`Section.defaults()` gives the section as a ConfigDict, so config files start from the typed
defaults and only change what a variant changes. `config_to_dict` / `config_from_dict` /
`config_sha256`: a config as JSON, back, and its digest.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import ml_collections


class ConfigError(ValueError):
    """A config file, variant, key or value that cannot be used; the message names it."""


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"a tuple of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_type_name(get_args(tp)[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def check_value(value: Any, tp, where: str) -> Any:
    """`value` converted to the field type `tp` (ints to float, lists to tuples, ConfigDicts to
    dicts), or a ConfigError naming `where`, the value and the expected type."""
    origin = get_origin(tp)
    bad = ConfigError(f"config.{where}={value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool) != isinstance(get_args(tp)[0], bool):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return check_value(value, option, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, tuple | list):
            raise bad
        item = get_args(tp)[0]
        return tuple(check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping | ml_collections.ConfigDict):
            raise bad
        item = get_args(tp)[1]
        return {str(k): check_value(v, item, f"{where}.{k}") for k, v in dict(value).items()}
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"config.{where}: unsupported field type {tp!r}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of the typed sections (see the module docstring).

    Constructing one checks it too (types, then `check`): `GPROptions(w2="x")` raises; messages
    name `config.<where>.<key>`, `where` being `default_where` unless built by `from_config`.
    """

    default_where: typing.ClassVar[str] = "section"

    def __post_init__(self):
        where = self.__dict__.get("_where", self.default_where)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = check_value(getattr(self, f.name), hints[f.name], f"{where}.{f.name}")
            object.__setattr__(self, f.name, value)
        self.check(where)

    def check(self, where: str) -> None:
        """Value constraints beyond the types; raise via `self.fail`."""

    def fail(self, where: str, key: str, expected: str) -> typing.NoReturn:
        raise ConfigError(f"config.{where}.{key}={getattr(self, key)!r}: {expected}")

    def require(self, where: str, key: str, ok: bool, expected: str) -> None:
        if not ok:
            self.fail(where, key, expected)

    @classmethod
    def from_config(cls, section: Mapping | ml_collections.ConfigDict | None, where: str):
        """The checked section object of the ConfigDict (or dict) `section` at `config.<where>`."""
        values = dict(section or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in fields]
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"config.{where}.{unknown[0]} is not a key of config.{where}.{hint} "
                              f"Keys: {', '.join(fields)}")
        for f in dataclasses.fields(cls):
            if f.name not in values and f.default is dataclasses.MISSING \
                    and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config.{where}.{f.name} is missing")
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_where", where)     # for the messages of __post_init__
        obj.__init__(**values)
        return obj

    @classmethod
    def defaults(cls, **changes) -> ml_collections.ConfigDict:
        """The section's defaults (with `changes`) as a ConfigDict (tuples stay tuples)."""
        return cls(**changes).to_config()

    def to_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict({f.name: _to_config_value(getattr(self, f.name))
                                          for f in dataclasses.fields(self)})


def _to_config_value(value):
    if isinstance(value, Mapping):
        return ml_collections.ConfigDict({k: _to_config_value(v) for k, v in value.items()})
    return value


# ---- config <-> JSON ---------------------------------------------------------------------------
def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples -> lists)."""
    return json.loads(json.dumps(config.to_dict(), default=_json_default))


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def config_from_dict(data: dict) -> ml_collections.ConfigDict:
    """Inverse of `config_to_dict` (sequences come back as tuples, like in the config files)."""
    return ml_collections.ConfigDict(_lists_to_tuples(data))


def config_sha256(config: ml_collections.ConfigDict) -> str:
    """Digest of the resolved config (results files record it)."""
    return hashlib.sha256(json.dumps(config_to_dict(config), sort_keys=True).encode()).hexdigest()
