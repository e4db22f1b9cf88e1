"""RELAY365_* environment variables over relay365.toml: the grammar, in one place.

Every key of the settings model has a variable; a variable wins over the file, and the file
over the defaults.  A key's variable is ``RELAY365_`` and its path in the file, upper case,
with ``__`` between the levels (key names have single underscores of their own)::

    RELAY365_STORE                          store                 (a top-level key)
    RELAY365_DELIVERY__WORKERS              [delivery] workers    (a key of a table)
    RELAY365_ALERTS__URLS                   [alerts] urls         (a list: see below)
    RELAY365_RELAY__SMTP                    every [[relay.smtp]]  (a JSON array of tables)
    RELAY365_RELAY__SMTP__0__HOST           the first [[relay.smtp]]'s host (0 is the first)
    RELAY365_CONNECTIONS                    every [[connections]] (a JSON array of tables)
    RELAY365_CONNECTION_CONTOSO_CLIENT_SECRET   the key client_secret of the connection
                                            named contoso (non-alphanumerics of the name as _)

Values are read as relay365.toml's would be: numbers, ``true``/``false`` (also 1/0, yes/no,
on/off), dates as ``2028-06-01``; an empty value makes a key that may be none none.  A list
of values is a JSON array (``["a", "b"]``) or, when the value does not start with ``[``,
its items separated by commas (spaces around them dropped; an empty value is an empty list);
a URL holding a comma needs the JSON form.  A list of tables is only ever a JSON array, and
replaces the whole list before its ``__<N>__`` variables change one table of it (which must
exist, in the file, the array, or the defaults).

A variable named with ``__`` that names no key, or a value that is not what its key takes,
is a ConfigError naming the variable.  Other RELAY365_* variables that name no key
(``RELAY365_CONFIG``, ``RELAY365_SECRET_KEY``...) are someone else's and left alone.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError
from ._model import ConnectionSettings, Settings

PREFIX = "RELAY365_"
LEVELS = "__"
_CONNECTION = PREFIX + "CONNECTION_"

# Where a value came from: its path in the settings (as pydantic's error locations name it)
# and the variable that set it.
KeyPath = tuple[str | int, ...]
Origins = dict[KeyPath, str]


def env_variable(path: typing.Sequence[str | int]) -> str:
    """The variable of the key at ``path`` (``("relay", "smtp", 0, "host")``)."""
    return PREFIX + LEVELS.join(str(p).upper() for p in path)


def connection_env_variable(name: str | None, key: str) -> str:
    """The variable of ``key`` of the connection named ``name`` (None: ``<NAME>``, as the
    reference writes it)."""
    return f"{_CONNECTION}{'<NAME>' if name is None else _env_name(name)}_{key.upper()}"


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def apply_env(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], Origins]:
    """``data`` (relay365.toml's tables) with every RELAY365_* variable applied, and which key
    each variable set; ConfigError naming the variable when one names no key or is unreadable."""
    out = _copy(data)
    origins: Origins = {}
    found = []
    for name, value in env.items():
        if not name.startswith(PREFIX) or name.startswith(_CONNECTION):
            continue
        parts = name.removeprefix(PREFIX).split(LEVELS)
        target = _resolve(name, parts)
        if target is not None:
            found.append((len(target[0]), name, target, value))
    # Shallow first: a whole list of tables before the variables that change one of its tables.
    for _, name, (path, annotation), value in sorted(found, key=lambda f: (f[0], f[1])):
        _set(out, path, _value(name, annotation, value), name)
        origins[path] = name
    _apply_connections(out, env, origins)
    return out, origins


def _resolve(name: str, parts: list[str]) -> tuple[KeyPath, Any] | None:
    """The path and type of the key ``parts`` name, None when the variable is not one of ours."""
    model: type[BaseModel] = Settings
    path: list[str | int] = []
    i = 0
    while True:
        where = ".".join(str(p) for p in path) or "the top level"
        key = next((k for k in model.model_fields if k.upper() == parts[i]), None)
        if key is None:
            if len(parts) == 1:
                return None  # RELAY365_CONFIG, RELAY365_SECRET_KEY...: not a settings key
            keys = ", ".join(model.model_fields)
            raise ConfigError(f"{name}: {where} has no key {parts[i].lower()!r} (its keys: {keys})")
        path.append(key)
        annotation = model.model_fields[key].annotation
        rest = parts[i + 1:]
        element = _table_of_list(annotation)
        if _is_model(annotation):
            if not rest:
                raise ConfigError(f"{name}: [{'.'.join(map(str, path))}] is a table: set its keys, "
                                  f"as {name}{LEVELS}<KEY>")
            model, i = annotation, i + 1
        elif element is not None and rest:
            if not (rest[0].isascii() and rest[0].isdigit()) or len(rest) == 1:
                raise ConfigError(f"{name}: {'.'.join(map(str, path))} is a list of tables: set it "
                                  f"whole as a JSON array, or a key of its N-th table as "
                                  f"{env_variable(path)}{LEVELS}<N>{LEVELS}<KEY> (0 is the first)")
            path.append(int(rest[0]))
            model, i = element, i + 2
        elif rest:
            raise ConfigError(f"{name}: {'.'.join(map(str, path))} is not a table (set it as "
                              f"{env_variable(path)})")
        else:
            return tuple(path), annotation


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _table_of_list(annotation: Any) -> type[BaseModel] | None:
    """The model of a list of tables (``list[SmtpListener]``), else None."""
    if typing.get_origin(annotation) is list:
        (element,) = typing.get_args(annotation)
        if _is_model(element):
            return element
    return None


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _may_be_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _value(name: str, annotation: Any, text: str) -> Any:
    """The text of variable ``name`` as the value of a key of type ``annotation``: a list or
    list of tables parsed here, any other value left for the model to read (and refuse)."""
    if _table_of_list(annotation) is not None:
        tables = _json(name, text)
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{name}: expected a JSON array of tables, like "
                              '[{"key": "value"}]')
        return tables
    if _is_list(annotation):
        if text.lstrip().startswith("["):
            items = _json(name, text)
            if not isinstance(items, list):
                raise ConfigError(f"{name}: expected a JSON array or comma-separated values")
            return items
        return [item.strip() for item in text.split(",") if item.strip()]
    if text == "" and _may_be_none(annotation):
        return None
    return text


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg} at character {exc.pos})") from None


def _set(data: dict[str, Any], path: KeyPath, value: Any, name: str) -> None:
    """Set ``path`` in ``data`` to ``value``, making the tables on the way (a list of tables
    the file does not have is taken from the model's default)."""
    node: Any = data
    model: type[BaseModel] = Settings
    for step, key in enumerate(path[:-1]):
        nxt = path[step + 1]
        if isinstance(key, int):
            node = node[key]
            continue
        annotation = model.model_fields[key].annotation
        if isinstance(nxt, int):
            element = _table_of_list(annotation)
            assert element is not None  # _resolve put an index only after a list of tables
            if key not in node:
                node[key] = _default_tables(model, key)
            tables = node[key]
            where = ".".join(str(p) for p in path[:step + 1])
            if not isinstance(tables, list):
                raise ConfigError(f"{name}: {where} is not a list of tables in the file")
            if nxt >= len(tables):
                have = ("it has none" if not tables else "it has only table 0" if len(tables) == 1
                        else f"its tables are 0 to {len(tables) - 1}")
                raise ConfigError(f"{name}: {where} has no table {nxt} ({have}); to add one, set "
                                  f"{env_variable(path[:step + 1])} to a JSON array of them all")
            if not isinstance(tables[nxt], dict):
                raise ConfigError(f"{name}: {where}[{nxt}] is not a table in the file")
            model = element
        else:
            assert _is_model(annotation)
            if not isinstance(node.get(key, {}), dict):
                raise ConfigError(f"{name}: {key} is not a table in the file")
            node.setdefault(key, {})
            model = annotation
        node = node[key]
    node[path[-1]] = value


def _default_tables(model: type[BaseModel], key: str) -> list[dict[str, Any]]:
    """The default of a list of tables, as the file would write it."""
    field = model.model_fields[key]
    default = field.default_factory() if field.default_factory is not None else []  # type: ignore[call-arg]
    return [t.model_dump(exclude_defaults=True) for t in default]


def _apply_connections(data: dict[str, Any], env: Mapping[str, str], origins: Origins) -> None:
    """``RELAY365_CONNECTION_<NAME>_<KEY>``, for the connections the file (or
    ``RELAY365_CONNECTIONS``) has; the names of others are not known, so they are left alone."""
    connections = data.get("connections")
    if not isinstance(connections, list):
        return
    for index, conn in enumerate(connections):
        if not isinstance(conn, dict):
            continue
        for key, field in ConnectionSettings.model_fields.items():
            name = connection_env_variable(str(conn.get("name", "")), key)
            if name in env:
                conn[key] = _value(name, field.annotation, env[name])
                origins[("connections", index, key)] = name


def _copy(data: Any) -> Any:
    """A copy of TOML data deep enough that setting values in it leaves ``data`` as it was."""
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data
