"""Reading relay365.toml, applying RELAY365_* overrides (``_env.py``), and reporting what is wrong."""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ._env import Origins, apply_env
from ._model import Settings


def config_path(explicit: str | Path | None = None) -> Path:
    """``--config``, else ``RELAY365_CONFIG``, else the user's config directory."""
    if explicit:
        return Path(explicit)
    if os.environ.get("RELAY365_CONFIG"):
        return Path(os.environ["RELAY365_CONFIG"])
    return Path(platformdirs.user_config_dir("relay365", appauthor=False)) / "relay365.toml"


def _explain(exc: ValidationError, source: str, data: Mapping[str, Any], origins: Origins) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if loc[:1] == ("connections",) and len(loc) > 1 and isinstance(loc[1], int):
            conns = data.get("connections", [])
            name = conns[loc[1]].get("name", loc[1]) if loc[1] < len(conns) else loc[1]
            key = f"connections[{name}]" + "".join(f".{p}" for p in loc[2:])
        example = _example(loc)
        msg = err["msg"].removeprefix("Value error, ")
        # The value came from a variable (it, or a list of tables holding it), or the file's
        # table was changed by some: say so, naming them.
        setter = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
        changed = sorted(v for p, v in origins.items() if p[:len(loc)] == loc)
        where = f"environment variable {setter}" if setter else source
        if changed and not setter:
            msg += f" (with {', '.join(changed)} from the environment)"
        lines.append(f"{where}: {key}: {msg}" + (f" (for example: {example})" if example else ""))
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _example(loc: tuple[Any, ...]) -> str | None:
    """``key = value`` from the examples of the key at ``loc``, when it has some."""
    model: type[BaseModel] = Settings
    example = None
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index, or a place inside a value
        example = f"{part} = {json.dumps(field.examples[0])}" if field.examples else None
        inner = field.annotation
        args = [inner, *typing.get_args(inner)]
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return example


def settings_from_dict(data: Mapping[str, Any], *, source: str = "<settings>",
                       env: Mapping[str, str] | None = None) -> Settings:
    """Validate ``data`` (relay365.toml's tables) with the RELAY365_* variables of ``env``
    (default: the process's) applied; ConfigError says what is wrong and where."""
    merged, origins = apply_env(data, os.environ if env is None else env)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _explain(exc, source, merged, origins) from None


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; ConfigError says what is wrong and where."""
    p = config_path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no configuration file; run `relay365 init` to create one")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return settings_from_dict(data, source=str(p), env=env)


def write_settings(settings: Settings, path: Path) -> None:
    """Write ``settings`` as TOML (0600: it may hold a client secret)."""
    data = settings.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    for conn, model in zip(data.get("connections", []), settings.connections, strict=True):
        if model.client_secret is not None:
            conn["client_secret"] = model.client_secret.get_secret_value()
        conn.setdefault("name", model.name)
        conn.setdefault("tenant", model.tenant)
        conn.setdefault("client_id", model.client_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# relay365 configuration (see `relay365 init`)\n")
        f.write(tomli_w.dumps(data))


def update_config_file(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Settings:
    """Apply ``change`` to the file's own keys, validate, and replace the file atomically.

    Works on the TOML as written, not on the loaded settings, so that values coming from
    RELAY365_* variables or secret files never end up in the file.  A change that does not
    validate raises ConfigError and leaves the file as it was.  Returns the new settings
    (with the environment's overrides applied, as ``load_settings`` would).
    """
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    new = change(data)
    settings_from_dict(new, source=str(path), env={})  # the file alone must be valid
    settings = settings_from_dict(new, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# relay365 configuration (see `relay365 init`)\n")
        f.write(tomli_w.dumps(new))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return settings
