"""Where the configuration's values come from, and how its errors are worded.

- ``read_toml``: the TOML file.
- ``apply_env``: ``FUSION_SECTION__KEY`` overrides, one ``__`` per level, an array index
  as a number (``FUSION_MODELS__0__WEIGHT=0.5``; the next free index adds an entry).
  A value is taken as written for a string key and parsed as a TOML value otherwise
  (``250``, ``true``, ``["a", "b"]``). A key the configuration does not have is an error
  naming the variable.
- ``conversion_error``: msgspec's ValidationError as a ConfigError naming the key, the
  bad value and what was expected. ConfigError itself hides secret-looking values.

The key format is the one operators read in the file: ``join.timeout_ms``,
``models[0].weight``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from worker.errors import ConfigError

ENV_PREFIX = "FUSION_"
_MISSING = object()
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`(?:, got `(?P<got>[^`]+)`)?(?P<rest>.*)$")
_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
}


def read_toml(path: Path) -> dict[str, Any]:
    """The document in ``path``; ConfigError on ``--config`` when missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"not valid TOML: {exc}") from None


@functools.cache
def _schema(root: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(root)
    assert isinstance(info, mi.StructType)
    return info


def _type_at(root: type[msgspec.Struct], path: Sequence[str | int]) -> mi.Type | None:
    """The declared type of the key at ``path``, or None when there is no such key."""
    node: mi.Type = _schema(root)
    for step in path:
        node = _optional(node)
        if isinstance(node, mi.StructType) and isinstance(step, str):
            found = [f.type for f in node.fields if f.encode_name == step]
            if not found:
                return None
            node = found[0]
        elif isinstance(node, mi.VarTupleType | mi.ListType) and isinstance(step, int):
            node = node.item_type
        else:
            return None
    return _optional(node)


def _optional(kind: mi.Type) -> mi.Type:
    """``T`` for an optional key of type ``T | None`` (the union of both otherwise)."""
    if isinstance(kind, mi.UnionType):
        kinds = [k for k in kind.types if not isinstance(k, mi.NoneType)]
        if len(kinds) == 1:
            return kinds[0]
    return kind


def _describe(kind: mi.Type) -> str:
    if isinstance(kind, mi.LiteralType):
        return "one of " + ", ".join(str(v) if v != "" else '""' for v in kind.values)
    described = {
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.StrType: "str",
        mi.BoolType: "bool",
        mi.VarTupleType: "array",
        mi.ListType: "array",
        mi.StructType: "object",
        mi.DictType: "object",
    }.get(type(kind), "")
    return _NAMES.get(described, type(kind).__name__)


def _key(path: Sequence[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


# -- environment overrides --------------------------------------------------------


def _env_path(name: str) -> list[str | int]:
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    return [int(p) if p.isdigit() else p for p in parts]


def _order(name: str) -> list[tuple[int, int | str]]:
    # Index 2 after index 10 would not exist yet: numbers sort as numbers.
    return [(0, p) if isinstance(p, int) else (1, p) for p in _env_path(name)]


def apply_env(
    raw: dict[str, Any],
    env: Mapping[str, str] | None,
    root: type[msgspec.Struct],
    sections: Sequence[str],
) -> None:
    """Write the ``FUSION_SECTION__KEY`` variables of ``env`` (default ``os.environ``)
    into the parsed document ``raw``."""
    env = os.environ if env is None else env
    names = [n for n in env if n.startswith(ENV_PREFIX) and "__" in n]
    for name in sorted(names, key=_order):
        value = env[name]
        path = _env_path(name)
        if path[0] not in sections:
            raise ConfigError(
                name, value, f"unknown section {path[0]!r}; expected one of {', '.join(sections)}"
            )
        kind = _type_at(root, path)
        if kind is None:
            raise ConfigError(name, value, f"unknown key {_key(path)!r}")
        _put(raw, path, name, _env_value(name, value, kind))


def _env_value(name: str, value: str, kind: mi.Type) -> Any:
    if isinstance(kind, mi.StrType) or (
        isinstance(kind, mi.LiteralType) and all(isinstance(v, str) for v in kind.values)
    ):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(name, value, f"not a TOML value; expected {_describe(kind)}") from None


def _put(raw: dict[str, Any], path: Sequence[str | int], name: str, value: Any) -> None:
    """Set ``value`` at ``path`` in ``raw``, creating the tables and entries on the way."""
    node: Any = raw
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        fresh: Any = value if last else ([] if isinstance(path[depth + 1], int) else {})
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(_key(path[:depth]), node, "must be an array")
            if step > len(node):
                raise ConfigError(
                    name, value, f"index {step} skips entries: {_key(path[:depth])} has {len(node)}"
                )
            if step == len(node):
                node.append(fresh)
            elif last:
                node[step] = value
        else:
            if not isinstance(node, dict):
                raise ConfigError(_key(path[:depth]), node, "must be a table")
            if last or step not in node:
                node[step] = fresh
        node = node[step]


# -- msgspec's errors as ConfigError ----------------------------------------------


def _parse_path(text: str) -> list[str | int]:
    # A table's value is at `[...]` in msgspec's path (it does not name the key).
    return [
        int(index) if index else (field or "...")
        for field, index, _ in re.findall(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])", text)
    ]


_PY_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "array", dict: "object"}


def _table_key(raw: Any, path: list[str | int], root: type[msgspec.Struct]) -> list[str | int]:
    """``path`` with msgspec's unnamed table entry (``...``) replaced by the first key of
    that table whose value is not of the declared type."""
    if "..." not in path:
        return path
    at = path.index("...")
    table, kind = _lookup(raw, path[:at]), _type_at(root, path[:at])
    if isinstance(table, dict) and isinstance(kind, mi.DictType):
        wanted = _describe(kind.value_type)
        for key, value in table.items():
            if _NAMES.get(_PY_NAMES.get(type(value), ""), "") != wanted:
                return [*path[:at], str(key), *path[at + 1 :]]
    return path[:at]


def _lookup(raw: Any, path: Sequence[str | int]) -> Any:
    node = raw
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def conversion_error(
    exc: msgspec.ValidationError,
    raw: Mapping[str, Any],
    root: type[msgspec.Struct],
    sections: Sequence[str],
) -> ConfigError:
    """``exc`` (from ``msgspec.convert(raw, root)``) as a ConfigError on the bad key;
    ``sections`` are the top-level keys a file may have."""
    message = str(exc)
    at = _PATH.search(message)
    path = _table_key(raw, _parse_path(at["path"]), root) if at else []
    message = message[: at.start()] if at else message
    if (unknown := re.fullmatch(r"Object contains unknown field `(.+)`", message)) is not None:
        table = _type_at(root, path)
        known = [f.encode_name for f in table.fields] if isinstance(table, mi.StructType) else []
        if not path:
            known = list(sections)
        close = difflib.get_close_matches(unknown[1], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problem = (
            f"unknown {'key' if path else 'section'}; {hint}expected one of {', '.join(known)}"
        )
        path = [*path, unknown[1]]
    elif (missing := re.fullmatch(r"Object missing required field `(.+)`", message)) is not None:
        path = [*path, missing[1]]
        kind = _type_at(root, path)
        problem = "required" + (" (at least one entry)" if _is_array(kind) else "")
    elif message.startswith("Invalid enum value"):
        kind = _type_at(root, path)
        problem = f"must be {_describe(kind)}" if kind is not None else message
    elif (short := re.fullmatch(r"Expected `array` of length >= (\d+)", message)) is not None:
        problem = f"needs at least {short[1]} {'entry' if short[1] == '1' else 'entries'}"
    elif (expected := _EXPECTED.match(message)) is not None:
        wanted = _NAMES.get(expected["type"], expected["type"])
        problem = f"must be {wanted}{expected['rest']}"
        if expected["got"]:
            problem += f", not {_NAMES.get(expected['got'], expected['got'])}"
    else:
        problem = message
    return ConfigError(_key(path) or "<config>", _lookup(raw, path), problem)


def _is_array(kind: mi.Type | None) -> bool:
    return isinstance(kind, mi.VarTupleType | mi.ListType)
