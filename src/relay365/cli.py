"""The ``relay365`` command."""

from __future__ import annotations

import typer

from . import __version__

app = typer.Typer(help="Send your applications' email through Microsoft 365 with OAuth 2.0.",
                  no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print relay365's version."""
    typer.echo(__version__)


def main() -> None:
    app()
