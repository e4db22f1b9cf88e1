"""What every command of the ``relay365`` command line shares: the Typer app, the consoles,
the ``--config`` option, and how a relay365 error is printed (its cause and fix, exit 1).

Every command module of this package imports this one, and none imports another command module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from .._version import __version__
from ..config import Settings, load_settings
from ..errors import Relay365Error

T = TypeVar("T")
app = typer.Typer(help="Send your applications' email through Microsoft 365 with OAuth 2.0.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="relay365.toml to use "
                                                   "(default: RELAY365_CONFIG or the user config dir)")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the async core; turn relay365 errors into their explanation and exit 1."""
    try:
        return asyncio.run(coro)
    except Relay365Error as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def fail(exc: Relay365Error) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc.message}" + (f" [{exc.code}]" if exc.code else ""))
    err.print(f"[bold]{exc.entry.id}[/]: {exc.entry.title}")
    err.print(f"[bold]Cause:[/] {exc.entry.cause}")
    err.print(f"[bold]Fix:[/] {exc.entry.fix}")
    raise typer.Exit(1)


def settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Relay365Error as exc:
        fail(exc)


def set_admin_password(path: Path, password: str) -> None:
    """Store the admin page's password (argon2id) in the configuration file."""
    from ..config import update_config_file
    from ..ingress import hash_password

    password_hash = hash_password(password)

    def change(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "admin": {**data.get("admin", {}), "password_hash": password_hash}}

    update_config_file(path, change)


@app.command()
def version() -> None:
    """Print relay365's version."""
    out.print(__version__)

