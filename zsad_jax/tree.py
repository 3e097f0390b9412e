"""Parameter-tree helpers shared by the engine and the methods: '/'-joined paths, flat dicts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax


def path_str(path) -> str:
    """A jax tree path as 'a/b/c'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict of arrays -> {'a/b/c': array}."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': array} -> nested dict."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def regex_mask(params: Any, patterns: tuple[str, ...]) -> Any:
    """A pytree of bools: True where the '/'-joined path matches one of `patterns` (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params)


def unmatched_patterns(paths, patterns) -> list[str]:
    """The regexes of `patterns` that match none of the '/'-joined `paths`."""
    return [p for p in patterns if not any(re.search(p, path) for path in paths)]
