"""Stripe's form encoding: ``a[b]=1``, ``expand[]=x``, ``lines[0][amount]=5``.

Stripe's v1 API takes ``application/x-www-form-urlencoded`` bodies (and query strings
for GET) whose keys use bracket syntax for nesting.  The official SDKs encode lists
with explicit indices (``expand[0]=customer``); curl users often write ``expand[]=``.
Both are accepted here.  Every leaf value stays a string, as on the wire; endpoint
code coerces types (see ``params.py``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from .errors import ApiError

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")

# Hashes whose keys are user-chosen; never turn ``metadata[0]=x`` into a list.
_MAP_KEYS = frozenset({"metadata"})


def _split_key(key: str) -> list[str]:
    match = _KEY_RE.match(key)
    if match is None:
        raise ApiError.invalid(f"Invalid parameter name: {key!r}", param=key, saved=False)
    return [match.group(1), *_SEGMENT_RE.findall(match.group(2))]


def _conflict(key: str) -> ApiError:
    return ApiError.invalid(
        f"Invalid hash/array/scalar mix in parameter: {key!r}", param=key, saved=False
    )


def _insert(root: dict[str, Any], path: list[str], value: str, key: str) -> None:
    node: dict[str, Any] = root
    for depth, segment in enumerate(path):
        last = depth == len(path) - 1
        if segment == "":
            # ``name[]`` appends: number it after the existing entries.
            segment = str(len(node))
        if last:
            if isinstance(node.get(segment), dict):
                raise _conflict(key)
            node[segment] = value
            return
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            raise _conflict(key)
        node = child


def _finish(node: Any, name: str) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _finish(v, k) for k, v in node.items()}
    if name not in _MAP_KEYS and items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def parse_params(encoded: str) -> dict[str, Any]:
    """Parse a form-encoded string into nested dicts and lists of strings."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True):
        _insert(root, _split_key(key), value, key)
    return {k: _finish(v, k) for k, v in root.items()}
