"""`relay365 config`: the configuration in effect."""

from __future__ import annotations

import json
import sys
import urllib.parse
from typing import Annotated, Any

import tomli_w
import typer

from ..config import Settings
from ._common import ConfigOption, app, settings

config_app = typer.Typer(help="relay365's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

MASK = "**********"


@config_app.command("show")
def show(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of TOML")] = False,
) -> None:
    """Print the configuration in effect: the file, its defaults and the RELAY365_* variables.

    Secrets, password hashes, a database password and alert URLs (which hold tokens) are masked.
    """
    data = shown(settings(config))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n" if as_json else tomli_w.dumps(data)
    sys.stdout.write(text)


def shown(effective: Settings) -> dict[str, Any]:
    """``effective`` as relay365.toml would say it, every key given, nothing secret in it."""
    data = effective.model_dump(mode="json", exclude_none=True)  # a SecretStr dumps as its mask
    if "store" in data:
        data["store"] = _without_password(data["store"])
    for table in (*data["relay"]["users"], *data["relay"]["api_keys"], data["admin"]):
        for key in ("password_hash", "key_hash"):
            if key in table:
                table[key] = MASK
    data["alerts"]["urls"] = [f"{url.partition('://')[0]}://{MASK}" for url in data["alerts"]["urls"]]
    return data


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
