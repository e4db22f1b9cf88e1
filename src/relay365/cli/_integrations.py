"""Running relay365 beside other software: ``install-service`` (systemd) and ``docs generate``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import app, err, out

SERVICE_CONFIG = Path("/etc/relay365/relay365.toml")


def _relay365_executable() -> Path:
    """The relay365 program of this installation (the venv's, else the one on PATH)."""
    beside = Path(sys.executable).with_name("relay365")
    if beside.exists():
        return beside
    found = shutil.which("relay365")
    return Path(found) if found else Path("/usr/local/bin/relay365")


@app.command("install-service")
def install_service(
    output: Annotated[Path | None, typer.Option(help="where to write the unit "
                                                "[default: /etc/systemd/system/relay365.service]")] = None,
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="relay365.toml the service runs with")] = SERVICE_CONFIG,
    user: Annotated[str, typer.Option(help="the dedicated system user the service runs as")] = "relay365",
    executable: Annotated[Path | None, typer.Option(help="the relay365 program [default: this one]")] = None,
    privileged_ports: Annotated[bool, typer.Option(help="allow SMTP listeners on ports below 1024 "
                                                   "(25, 465, 587)")] = False,
    force: Annotated[bool, typer.Option(help="replace an existing unit file")] = False,
) -> None:
    """Write a hardened systemd unit for `relay365 serve` and print how to enable it."""
    from ..integrations.systemd import (
        DEFAULT_UNIT_PATH,
        ServiceOptions,
        next_steps,
        state_dir_warning,
        unit_text,
    )

    path = output or DEFAULT_UNIT_PATH
    options = ServiceOptions(executable=(executable or _relay365_executable()).absolute(),
                             config=config.absolute(), user=user, privileged_ports=privileged_ports)
    if path.exists() and not force:
        err.print(f"[red]error:[/] {path} exists (use --force to replace it)")
        raise typer.Exit(1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text(options), encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]error:[/] cannot write {path}: {exc.strerror}")
        err.print("[bold]Fix:[/] run it as root (sudo), or give --output a path you may write")
        raise typer.Exit(1) from None
    out.print(f"Wrote {path}.")
    warning = state_dir_warning(options.config)
    if warning:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print("\n[bold]Then, as root:[/]")
    for number, step in enumerate(next_steps(options, path), 1):
        out.print(f"{number}. {step}", markup=False, highlight=False, soft_wrap=True)


docs_app = typer.Typer(help="relay365's documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("generate")
def docs_generate(
    directory: Annotated[Path | None, typer.Argument(
        help="the docs folder [default: the repository's docs/]")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="only list out-of-date files; exit 1 if any")] = False,
) -> None:
    """Write the configuration, command-line and troubleshooting references from the code."""
    from ..integrations import docs

    where = directory or docs.DOCS_DIR
    if check:
        old = docs.stale(app, where)
        for path in old:
            err.print(f"out of date: {path}")
        if old:
            raise typer.Exit(1)
        out.print("the generated docs are up to date")
        return
    changed = docs.write(app, where)
    for path in changed:
        out.print(f"wrote {path}")
    if not changed:
        out.print("the generated docs were already up to date")
